"""events.jsonl: one JSON line per answer, flushed as written, so a crash loses nothing."""

from __future__ import annotations

import json
import os
from pathlib import Path

from vidqa.messages import FrameResult


class EventsSink:
    """One JSON line per answer, flushed as written, so a crash loses nothing produced."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file = path.open("w", encoding="utf-8")
        self.count = 0

    def write(self, result: FrameResult) -> None:
        for answer in result.answers:
            self.file.write(json.dumps(answer.to_event()) + "\n")
            self.count += 1
        if result.answers:
            self.file.flush()

    def close(self) -> None:
        if not self.file.closed:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
