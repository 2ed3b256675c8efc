"""mot.txt: every tracked box of every frame in the MOTChallenge format, for `vidqa eval tracks`."""

from __future__ import annotations

from pathlib import Path

from vidqa.evaluation.mot import mot_rows
from vidqa.messages import FrameResult


class MotSink:
    """One line per tracked box (1-based frame, id, left, top, width, height, conf, -1, -1, -1),
    flushed per frame so a crash keeps every frame written."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file = path.open("w", encoding="utf-8")

    def write(self, result: FrameResult) -> None:
        rows = mot_rows(result.frame.frame_index, result.detections)
        if rows:
            self.file.write("\n".join(rows) + "\n")
            self.file.flush()

    def close(self) -> None:
        if not self.file.closed:
            self.file.close()
