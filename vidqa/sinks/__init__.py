"""Sinks: the annotated video (one file, or segments), mot.txt, alert clips, an optional live
window.

Sinks are context managers so that a crash or Ctrl-C still closes them: the video is
finalised into a playable file. The answers and alerts go to the event store
(:mod:`vidqa.store`), which exports ``events.jsonl`` and ``alerts.jsonl``. :class:`SinkSet`
isolates the sinks: one failing sink is logged and dropped, the others keep going.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from loguru import logger

from vidqa.messages import Answer, FrameResult
from vidqa.sinks.annotation import AnswerBoard, annotate
from vidqa.sinks.clips import ClipSink
from vidqa.sinks.mot import MotSink
from vidqa.sinks.segments import SegmentSink
from vidqa.sinks.video import VideoSink
from vidqa.sinks.window import StopRequested, WindowSink

__all__ = ["AnswerBoard", "ClipSink", "MotSink", "SegmentSink", "Sink", "SinkSet",
           "StopRequested", "VideoSink", "WindowSink", "annotate"]


class Sink(Protocol):
    def write(self, result: FrameResult) -> None: ...

    def close(self) -> None: ...


class SinkSet:
    """Feeds every sink; a sink that raises is logged, closed and dropped (the run goes on)."""

    def __init__(self, sinks: Sequence[Sink], board: AnswerBoard) -> None:
        self.sinks = list(sinks)
        self.board = board
        self.failed: dict[str, str] = {}

    def write(self, result: FrameResult) -> None:
        self.board.update(result)
        for sink in list(self.sinks):
            try:
                sink.write(result)
            except StopRequested:
                raise
            except Exception as err:  # one broken sink must not stop the others
                name = type(sink).__name__
                logger.error("{} failed at frame {} and is disabled: {}", name,
                             result.frame.frame_index, err)
                self.failed[name] = str(err)
                self._close(sink)
                self.sinks.remove(sink)

    def write_answers(self, answers: Sequence[Answer]) -> None:
        """Answers that arrived after the last frame: only sinks of events take them."""
        for sink in list(self.sinks):
            if hasattr(sink, "write_answers"):
                try:
                    sink.write_answers(answers)
                except Exception as err:
                    logger.error("{} failed writing late answers: {}", type(sink).__name__, err)

    def close(self) -> None:
        for sink in reversed(self.sinks):
            self._close(sink)

    def __enter__(self) -> SinkSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _close(sink: Sink) -> None:
        try:
            sink.close()
        except Exception as err:
            logger.error("closing {} failed: {}", type(sink).__name__, err)
