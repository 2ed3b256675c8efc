"""LiveViewSink: the pipeline sink that publishes annotated frames and answers to a LiveView."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from vidqa.messages import FrameResult
from vidqa.sinks import AnswerBoard, annotate
from vidqa.web.server import LiveView

if TYPE_CHECKING:
    from vidqa.web.relay import RelayView


class LiveViewSink:
    """Publishes each frame (annotated while someone watches) and every answer of one stream.

    It keeps its own :class:`AnswerBoard`. When no browser shows this stream, the raw frame is
    published instead of drawing one nobody sees: a viewer who connects gets boxes from its
    next frame on. The sink does not own the view: ``close`` leaves the server running. In a
    stream process or Ray actor the view is a :class:`~vidqa.web.relay.RelayView`, which
    wants a frame drawn only when it will send it.
    """

    def __init__(self, view: LiveView | RelayView, stream_id: str = "0",
                 board: AnswerBoard | None = None,
                 counters: Callable[[], dict[str, Any]] | None = None) -> None:
        self.view = view
        self.stream_id = stream_id
        self.board = board or AnswerBoard()  # the pipeline's own board: shares "asking..."
        self.own_board = board is None
        self.counters = counters or dict  # the run's counters: drops, VLM queue, phase
        self.frames = 0
        self._rate_start = time.monotonic()
        self._rate_frames = 0

    def write(self, result: FrameResult) -> None:
        if self.own_board:
            self.board.update(result)
        watched = self.view.is_watched(self.stream_id)
        image = annotate(result, self.board) if watched else result.frame.image
        self.view.publish_frame(self.stream_id, image)
        for answer in result.answers:
            self.view.publish_event({**answer.to_event(), "stream_id": self.stream_id})
        for alert in result.alerts:
            self.view.publish_event(alert.to_event())
        self.view.end_tracks(self.stream_id, tuple(result.ended_tracks))
        self.frames += 1
        self._publish_rate(result)

    def _publish_rate(self, result: FrameResult) -> None:
        """Frames and measured fps once a second; the pipeline adds its own counters."""
        self._rate_frames += 1
        elapsed = time.monotonic() - self._rate_start
        counters = {"frames": self.frames, "frame_index": result.frame.frame_index,
                    "running": True}
        if self.frames == 1:
            self.view.publish_status(self.stream_id, {**counters, **self.counters()})
            self._rate_start, self._rate_frames = time.monotonic(), 0
        elif elapsed >= 1.0:
            fps = round(self._rate_frames / elapsed, 1)
            self.view.publish_status(self.stream_id, {**counters, **self.counters(), "fps": fps})
            self._rate_start, self._rate_frames = time.monotonic(), 0

    def close(self) -> None:
        self.view.publish_status(self.stream_id, {"frames": self.frames, "running": False})
