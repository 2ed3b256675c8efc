"""The JSONL export of the store: each stream's ``events.jsonl`` (and ``alerts.jsonl`` when it
has rules) and, for several streams, the run's merged ``events.jsonl``.

Lines are written after their rows are committed, so every exported line is in the store. A
segmented stream's files rotate with its video: when a segment closes, the stream's current
files move beside it (``segments/<name>.events.jsonl``) and become part of it, so retention
deletes them with it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO, Any

from vidqa.messages import Segment
from vidqa.store.records import StreamRecord


class Exports:
    """The open JSONL files of a run's streams; only the store's writer thread uses them."""

    def __init__(self, merged: Path | None) -> None:
        self.merged = _open(merged, "w") if merged is not None else None
        self.streams: dict[str, StreamRecord] = {}
        self.files: dict[tuple[str, str], IO[str]] = {}  # (stream, kind) -> its open file

    def add(self, stream: StreamRecord) -> None:
        self.streams[stream.stream_id] = stream
        mode = "a" if stream.segmented else "w"  # a restarted run continues the current piece
        if stream.events:
            self.files[stream.stream_id, "events"] = _open(stream.folder / "events.jsonl", mode)
        if stream.alerts:
            self.files[stream.stream_id, "alerts"] = _open(stream.folder / "alerts.jsonl", mode)

    def write(self, lines: list[tuple[str, str, dict[str, Any]]]) -> None:
        """(stream, kind, event) lines, in commit order."""
        for stream_id, kind, event in lines:
            text = json.dumps(event) + "\n"
            file = self.files.get((stream_id, kind))
            if file is not None:
                file.write(text)
            if kind == "events" and self.merged is not None:
                self.merged.write(text)
        for file in self._all():
            file.flush()

    def rotate(self, segment: Segment) -> list[str]:
        """Move the stream's current JSONL beside the segment that closed; the paths moved."""
        moved = []
        first = Path(segment.files[0])  # <name>.mp4, or <name>.mot.txt when there is no video
        stem = str(first.parent / first.name.split(".")[0])
        for kind in ("events", "alerts"):
            file = self.files.get((segment.stream_id, kind))
            if file is None:
                continue
            file.close()
            current = Path(file.name)
            if current.stat().st_size:
                target = Path(f"{stem}.{kind}.jsonl")
                os.replace(current, target)
                moved.append(str(target))
            self.files[segment.stream_id, kind] = _open(current, "w")
        return moved

    def close(self) -> None:
        for file in self._all():
            file.flush()
            os.fsync(file.fileno())
            file.close()
        self.files.clear()
        self.merged = None

    def _all(self) -> list[IO[str]]:
        return [*self.files.values(), *([self.merged] if self.merged is not None else [])]


def _open(path: Path, mode: str) -> IO[str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open(mode, encoding="utf-8")
