"""events.jsonl: one JSON line per answer, flushed as written, so a crash loses nothing."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from vidqa.messages import Answer, FrameResult


class EventsSink:
    """One JSON line per answer, flushed as written, so a crash loses nothing produced.

    Thread-safe: the merged ``events.jsonl`` of a multi-stream run takes every stream's lines.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file = path.open("w", encoding="utf-8")
        self.count = 0
        self._lock = threading.Lock()

    def write(self, result: FrameResult) -> None:
        self.write_answers(result.answers)

    def write_answers(self, answers: Sequence[Answer]) -> None:
        """Answers without a frame to draw on (they arrived after the stream's last frame)."""
        if not answers:
            return
        lines = "".join(json.dumps(answer.to_event()) + "\n" for answer in answers)
        with self._lock:
            self.file.write(lines)
            self.file.flush()
            self.count += len(answers)

    def close(self) -> None:
        with self._lock:
            if not self.file.closed:
                self.file.flush()
                os.fsync(self.file.fileno())
                self.file.close()


class SharedSink:
    """A sink several streams write to and none closes: its owner (the run) closes it."""

    def __init__(self, sink: EventsSink) -> None:
        self.sink = sink

    def write(self, result: FrameResult) -> None:
        self.sink.write(result)

    def write_answers(self, answers: Sequence[Answer]) -> None:
        self.sink.write_answers(answers)

    def close(self) -> None:
        """The owner closes the shared sink."""


class ForwardSink:
    """A stream's share of a merged ``events.jsonl`` written elsewhere: its answers go to
    ``send`` (another process's queue, a Ray actor); ``close``, if given, waits until they are
    written."""

    def __init__(self, send: Callable[[list[Answer]], object],
                 close: Callable[[], object] | None = None) -> None:
        self.send = send
        self._close = close

    def write(self, result: FrameResult) -> None:
        self.write_answers(result.answers)

    def write_answers(self, answers: Sequence[Answer]) -> None:
        if answers:
            self.send(list(answers))

    def close(self) -> None:
        if self._close is not None:
            self._close()
