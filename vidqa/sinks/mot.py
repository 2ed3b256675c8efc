"""mot.txt: every tracked box of every frame in the MOTChallenge format, for `vidqa eval tracks`."""

from __future__ import annotations

from pathlib import Path

from vidqa.messages import Detections, FrameResult


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


def mot_rows(frame_index: int, detections: Detections) -> list[str]:
    """MOTChallenge lines for one frame; ``frame_index`` is 0-based, the file's frame 1-based.

    Detections without a track id (``track_id < 0``) are not tracks and are left out.
    """
    rows = []
    for (x1, y1, x2, y2), conf, track in zip(detections.xyxy.tolist(),
                                             detections.confidence.tolist(),
                                             detections.track_id.tolist(), strict=True):
        if track < 0:
            continue
        rows.append(f"{frame_index + 1},{track},{x1:.2f},{y1:.2f},{x2 - x1:.2f},{y2 - y1:.2f},"
                    f"{conf:.4f},-1,-1,-1")
    return rows
