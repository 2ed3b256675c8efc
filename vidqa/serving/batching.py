"""The model as a service for many streams, on a thread of this process: callers submit one
crop and get one future.

One batching thread owns the model. It collects crops across frames, tracks and streams until
``batch_size`` crops are waiting or the oldest has waited ``max_wait_ms``, groups them by the
questions they ask, answers them in one batch and resolves every caller's future. Callers never
wait for the model: a stream's front half submits and moves on to its next frame; the answers
attach to their track when they arrive.

The queue between them is bounded (``queue_size`` crops). A file's front half waits for room
(:meth:`BatchingService.submit` with ``block=True``: a file has no camera to keep up with and must
lose nothing); a live stream's front half does not wait (``block=False`` returns None) and keeps
the crop for a later frame — see :class:`~vidqa.serving.stage.AnswerStage`.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any

from vidqa.clock import Window
from vidqa.messages import Answer, Crop
from vidqa.serving.base import ServiceClosed
from vidqa.serving.batch import AnswerFn, answer_grouped


@dataclass
class Request:
    """One crop waiting for the VLM, and the future its caller holds."""

    crop: Crop
    questions: tuple[str, ...]  # question texts to ask about this crop
    submitted: float = field(default_factory=time.perf_counter)
    future: Future[list[Answer]] = field(default_factory=Future)


class BatchingService:
    """Batches crops from every stream onto the one model-owning thread."""

    def __init__(self, answer: AnswerFn, batch_size: int = 32, max_wait_ms: float = 20.0,
                 queue_size: int = 256, expect: Callable[[float], None] | None = None) -> None:
        self.answer = answer  # answers one batch, on the batching thread
        self._expect = expect  # tells the answerers how much of the files is still to come
        self.batch_size = batch_size
        self.max_wait_s = max_wait_ms / 1000
        self._queue: queue.Queue[Request | None] = queue.Queue(maxsize=queue_size)
        self._thread = threading.Thread(target=self._serve, name="vlm-batching", daemon=True)
        self._closed = threading.Event()
        self._stats = ServiceStats()

    # ------------------------------------------------------------------------------- callers

    def start(self) -> BatchingService:
        self._thread.start()
        return self

    def submit(self, crop: Crop, questions: Sequence[str], block: bool = True,
               timeout: float | None = None) -> Future[list[Answer]] | None:
        """Queue one crop; its future resolves to one answer per question.

        ``block=False`` returns None at once when the queue is full (live streams);
        ``block=True`` waits for room, at most ``timeout`` seconds (None: as long as it takes).
        """
        if self._closed.is_set():
            raise ServiceClosed("the VLM service is closed: no more crops can be answered")
        request = Request(crop, tuple(questions))
        try:
            self._queue.put(request, block=block, timeout=timeout)
        except queue.Full:
            self._stats.refused += 1
            return None
        return request.future

    @property
    def waiting(self) -> int:
        """Crops queued and not yet taken into a batch."""
        return self._queue.qsize()

    def expect(self, seconds: float) -> None:
        """See :meth:`vidqa.serving.base.AnswerService.expect`."""
        if self._expect is not None:
            self._expect(seconds)

    def close(self) -> None:
        """Answer every crop already queued, then stop the batching thread (idempotent)."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._queue.put(None)  # the sentinel: the thread drains what is before it, then ends
        self._thread.join()

    def __enter__(self) -> BatchingService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def summary(self) -> dict[str, Any]:
        return {**self._stats.summary(self.batch_size, self.max_wait_s), "worker": "thread"}

    # ------------------------------------------------------------------------- batching thread

    def _serve(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                return
            batch, stop = self._collect(first)
            self._run(batch)

    def _collect(self, first: Request) -> tuple[list[Request], bool]:
        """More requests until the batch is full or the first has waited ``max_wait_ms``."""
        batch, deadline = [first], first.submitted + self.max_wait_s
        while len(batch) < self.batch_size:
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.perf_counter()))
            except queue.Empty:
                break
            if item is None:
                return batch, True
            batch.append(item)
        return batch, False

    def _run(self, batch: list[Request]) -> None:
        started = time.perf_counter()
        results = answer_grouped(self.answer, [r.crop for r in batch],
                                 [r.questions for r in batch])
        for request, result in zip(batch, results, strict=True):
            if isinstance(result, Exception):
                request.future.set_exception(result)
                continue
            queue_ms = 1000 * (started - request.submitted)
            request.future.set_result([replace(a, queue_ms=queue_ms) for a in result])
        self._stats.add(batch, started, time.perf_counter())


class ServiceStats:
    """Batch sizes, busy time and queue waits of the service."""

    def __init__(self) -> None:
        self.batches: Counter[int] = Counter()
        self.crops = 0
        self.answers = 0  # crops x their questions: what one model pass each would answer
        self.busy_s = 0.0
        self.refused = 0
        self.queue_ms = Window()  # the recent crops' waits for a batch
        self.first: float | None = None
        self.last: float | None = None

    def add(self, batch: list[Request], started: float, ended: float) -> None:
        self.batches[len(batch)] += 1
        self.crops += len(batch)
        self.answers += sum(len(r.questions) for r in batch)
        self.busy_s += ended - started
        for request in batch:
            self.queue_ms.add(1000 * (started - request.submitted))
        self.first = self.first if self.first is not None else started
        self.last = ended

    def summary(self, batch_size: int, max_wait_s: float) -> dict[str, Any]:
        span = (self.last - self.first) if self.first is not None else 0.0
        return {
            "batch_size": batch_size, "max_wait_ms": round(1000 * max_wait_s, 1),
            "batches": sum(self.batches.values()), "crops": self.crops,
            "batch_histogram": {str(k): v for k, v in sorted(self.batches.items())},
            "mean_batch": round(self.crops / max(sum(self.batches.values()), 1), 2),
            "answers": self.answers,
            "answers_per_s": round(self.answers / span, 2) if span else None,
            "busy_s": round(self.busy_s, 3), "span_s": round(span, 3),
            "crops_per_busy_s": round(self.crops / self.busy_s, 2) if self.busy_s else None,
            "utilisation": round(self.busy_s / span, 3) if span else None,
            "queue_ms_p50": self.queue_ms.percentile(50),
            "queue_ms_p95": self.queue_ms.percentile(95),
            "refused_when_full": self.refused,
        }

