"""The pipeline stage that asks the model: a stream's crops go to an
:class:`~vidqa.serving.base.AnswerService` and the frame moves on; answers attach to the frame
they arrive at."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import CancelledError, Future, wait
from typing import Any

from vidqa.clock import Window
from vidqa.messages import Answer, Crop, FrameResult, VideoFrame
from vidqa.serving.base import AnswerService
from vidqa.serving.batch import Failures


class AnswerStage:
    """One stream's crops submitted to the run's service; answers attach to the frame they
    arrive at.

    A file's front half waits when the service's queue is full (nothing is lost). A live
    stream's does not: the crop waits here, one per track, the newest replacing an older one,
    and is submitted on a later frame; a track that ends while waiting is counted as deferred.

    A crop whose answer failed (its batch failed, and again on its own) is counted with the
    reason, and the stream goes on: a fault costs one crop, not a camera. When the stream
    stops, :meth:`abandon` counts what is still in flight and nothing is attached after it.
    """

    def __init__(self, service: AnswerService, questions: Sequence[str], live: bool,
                 stop: threading.Event | None = None) -> None:
        self.service = service
        self.questions = tuple(questions)
        self.live = live
        self.stop = stop or threading.Event()
        self.waiting: dict[int, Crop] = {}  # live, queue full: track -> its newest crop
        self.pending: set[int] = set()  # tracks asked and not answered yet (for the overlay)
        # not yet attached -> when it was submitted, and its track
        self._submitted: dict[Future, tuple[float, int]] = {}
        self._stats: Counter[str] = Counter()
        self._latency_ms = Window()  # the recent crops' submit -> answer times
        self._last_frame: VideoFrame | None = None
        self.failures = Failures()  # crops whose answer failed, and why
        self._abandoned = False

    def __call__(self, results: Iterable[FrameResult]) -> Iterator[FrameResult]:
        for result in results:
            yield self.update(result)

    def update(self, result: FrameResult) -> FrameResult:
        for track_id in result.ended_tracks:
            if self.waiting.pop(track_id, None) is not None:
                self._stats["deferred_tracks"] += 1  # ended before the queue had room
            self.pending.discard(track_id)
        if self.live:
            self._retry_waiting()
        for crop in result.crops:
            self._ask(crop)
        return dataclasses.replace(result, answers=result.answers + self._take(result.frame))

    def flush(self, timeout_s: float | None) -> list[Answer]:
        """Wait (at most ``timeout_s``) for the answers still in flight and return them."""
        wait(list(self._submitted), timeout=timeout_s)
        return list(self._take(self._last_frame)) if self._last_frame is not None else []

    def abandon(self) -> int:
        """The stream has stopped: what is still in flight or waiting is counted as abandoned
        and never attached; returns how many crops."""
        count = len(self._submitted) + len(self.waiting)
        self._stats["abandoned"] += count
        for future in self._submitted:
            future.cancel()  # a crop still queued in this process is not answered at all
        self._submitted.clear()
        self.waiting.clear()
        self.pending.clear()
        self._abandoned = True
        return count

    @property
    def failed(self) -> int:
        """Crops whose answer failed."""
        return self.failures.failed

    @property
    def in_flight(self) -> int:
        """Crops with the service whose answers have not reached a frame yet."""
        return len(self._submitted)

    def summary(self) -> dict[str, Any]:
        return {"submitted": self._stats["submitted"], "answered": self._stats["answered"],
                "failed": self.failures.failed,
                "failure_reasons": dict(self.failures.reasons.most_common()),
                "abandoned": self._stats["abandoned"], "in_flight": len(self._submitted),
                "queue_full_waits": self._stats["queue_full_waits"],
                "deferred_tracks": self._stats["deferred_tracks"],
                "waiting_at_end": len(self.waiting),
                "latency_ms_p50": self._latency_ms.percentile(50),
                "latency_ms_p95": self._latency_ms.percentile(95)}

    def _ask(self, crop: Crop) -> None:
        if self._abandoned:
            return
        if self.live:
            future = self.service.submit(crop, self.questions, block=False)
            if future is None:
                self._stats["queue_full_waits"] += 1
                self.waiting[crop.track_id] = crop  # the newest crop of the track wins
                return
        else:
            future = None
            while future is None and not self.stop.is_set():  # stay responsive to a stop
                future = self.service.submit(crop, self.questions, block=True, timeout=0.5)
            if future is None:
                return
        self._track(future, crop)

    def _retry_waiting(self) -> None:
        for track_id in list(self.waiting):
            crop = self.waiting.pop(track_id)
            future = self.service.submit(crop, self.questions, block=False)
            if future is None:
                self.waiting[track_id] = crop
                return  # still full: the rest wait for a later frame
            self._track(future, crop)

    def _track(self, future: Future, crop: Crop) -> None:
        self._submitted[future] = (time.perf_counter(), crop.track_id)
        self._stats["submitted"] += 1
        self.pending.add(crop.track_id)

    def _take(self, frame: VideoFrame) -> tuple[Answer, ...]:
        """The answers that arrived since the last frame, stamped with this frame."""
        self._last_frame = frame
        now, taken = time.perf_counter(), []
        for future in [f for f in self._submitted if f.done()]:  # in order of submission
            submitted, track_id = self._submitted.pop(future)
            error = CancelledError() if future.cancelled() else future.exception()
            if error is not None:  # a fault costs this crop, not the stream
                self.failures.add(error)
                self.pending.discard(track_id)  # not "asking" any more; a re-ask may follow
                continue
            latency_ms = 1000 * (now - submitted)
            self._latency_ms.add(latency_ms)
            self._stats["answered"] += 1
            for answer in future.result():
                self.pending.discard(answer.track_id)
                taken.append(dataclasses.replace(
                    answer, latency_ms=latency_ms, answered_frame_index=frame.frame_index,
                    answered_time_s=frame.timestamp))
        return tuple(taken)
