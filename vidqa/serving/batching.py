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

A stop that cannot wait (``close(abandon=True)``) fails the queued crops at once with
:class:`~vidqa.serving.base.Abandoned` and waits at most :data:`ABANDON_WAIT_S` for the batch the
model is answering; that batch's crops are abandoned too.
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

from loguru import logger

from vidqa.clock import Window
from vidqa.messages import Answer, Crop
from vidqa.serving.base import Abandoned, ServiceClosed
from vidqa.serving.batch import AnswerFn, Failures, answer_grouped

ABANDON_WAIT_S = 0.5  # how long an abandoning close waits for the batch being answered
IDLE_S = 5.0  # a thread without crops for this long calls ``flush``


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
                 queue_size: int = 256, expect: Callable[[float], None] | None = None,
                 flush: Callable[[], None] | None = None) -> None:
        self.answer = answer  # answers one batch, on the batching thread
        self._expect = expect  # tells the answerers how much of the files is still to come
        self._flush = flush  # on the batching thread, when idle and at its end: write what it keeps
        self.batch_size = batch_size
        self.max_wait_s = max_wait_ms / 1000
        self._queue: queue.Queue[Request | None] = queue.Queue(maxsize=queue_size)
        self._thread = threading.Thread(target=self._serve, name="vlm-batching", daemon=True)
        self._closed = threading.Event()
        self._abandoned = threading.Event()
        self._lock = threading.Lock()  # futures are resolved once, by the thread or by close
        self._current: list[Request] = []  # the batch being answered
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
        if self._abandoned.is_set():  # it got in after close took the queued ones
            self._settle(request, Abandoned("the run is stopping: the crop is not answered"))
        return request.future

    @property
    def waiting(self) -> int:
        """Crops queued and not yet taken into a batch."""
        return self._queue.qsize()

    def expect(self, seconds: float) -> None:
        """See :meth:`vidqa.serving.base.AnswerService.expect`."""
        if self._expect is not None:
            self._expect(seconds)

    def close(self, abandon: bool = False) -> None:
        """Answer every crop already queued, then stop the batching thread (idempotent).

        With ``abandon`` the queued crops fail at once with :class:`Abandoned`, and so do those
        of the batch being answered if it takes more than :data:`ABANDON_WAIT_S` (the thread
        is a daemon: it finishes that batch alone and resolves nothing more). An abandoning
        close also ends a draining one that is still waiting."""
        with self._lock:
            first = not self._closed.is_set()
            self._closed.set()
            abandon = abandon and not self._abandoned.is_set()
            if abandon:
                self._abandoned.set()
        if abandon:
            self._abandon_queued()
        elif first:
            self._queue.put(None)  # the sentinel: the thread drains what is before it, then ends
        while self._thread.is_alive() and not self._abandoned.is_set():
            self._thread.join(timeout=0.1)  # an abandoning close from another thread ends this
        if self._abandoned.is_set() and (abandon or first):
            if self._thread.is_alive():
                self._thread.join(timeout=ABANDON_WAIT_S)
            for request in list(self._current):
                self._settle(request, Abandoned("the run is stopping: the model was still "
                                                "answering this crop's batch"))

    def __enter__(self) -> BatchingService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def summary(self) -> dict[str, Any]:
        with self._lock:  # the thread may still be adding a batch
            return {**self._stats.summary(self.batch_size, self.max_wait_s), "worker": "thread"}

    def _abandon_queued(self) -> None:
        """Fail every queued crop, and leave the thread its sentinel (a submitter blocked on a
        full queue may take the room first: then drain again)."""
        error = Abandoned("the run is stopping: the crop was still queued")
        while True:
            while True:
                try:
                    request = self._queue.get_nowait()
                except queue.Empty:
                    break
                if request is not None:
                    self._settle(request, error)
            try:
                self._queue.put_nowait(None)
                return
            except queue.Full:
                continue

    def _settle(self, request: Request, outcome: list[Answer] | BaseException) -> None:
        """Resolve ``request``'s future once: an answer is dropped after an abandon."""
        with self._lock:
            if request.future.done():
                return
            if self._abandoned.is_set() and not isinstance(outcome, BaseException):
                outcome = Abandoned("the run is stopping: the answer came too late")
            if isinstance(outcome, Abandoned):
                self._stats.abandoned += 1
            if isinstance(outcome, BaseException):
                request.future.set_exception(outcome)
            else:
                request.future.set_result(outcome)

    # ------------------------------------------------------------------------- batching thread

    def _serve(self) -> None:
        stop = False
        try:
            while not stop:
                try:
                    first = self._queue.get(timeout=IDLE_S)
                except queue.Empty:
                    self._flushed()
                    continue
                if first is None:
                    return
                batch, stop = self._collect(first)
                self._run(batch)
        finally:
            if not self._abandoned.is_set():
                self._flushed()

    def _flushed(self) -> None:
        if self._flush is None:
            return
        try:
            self._flush()
        except Exception as err:  # what the answerer keeps is never worth a stream
            logger.opt(exception=True).error("the VLM service's flush failed: {}", err)

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
        if self._abandoned.is_set():  # collected before the close: not worth the model's time
            for request in batch:
                self._settle(request, Abandoned("the run is stopping: the crop was queued"))
            return
        self._current = batch
        started = time.perf_counter()
        results = answer_grouped(self.answer, [r.crop for r in batch],
                                 [r.questions for r in batch], self._stats.failures)
        for request, result in zip(batch, results, strict=True):
            queue_ms = 1000 * (started - request.submitted)
            self._settle(request, result if isinstance(result, Exception)
                         else [replace(a, queue_ms=queue_ms) for a in result])
        self._current = []
        with self._lock:
            self._stats.add(batch, started, time.perf_counter())


class ServiceStats:
    """Batch sizes, busy time and queue waits of the service."""

    def __init__(self) -> None:
        self.batches: Counter[int] = Counter()
        self.crops = 0
        self.answers = 0  # crops x their questions: what one model pass each would answer
        self.busy_s = 0.0
        self.refused = 0
        self.abandoned = 0  # crops failed with Abandoned by a stop that could not wait
        self.failures = Failures()  # crops asked again alone, and those that failed, and why
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
            "refused_when_full": self.refused, "abandoned": self.abandoned,
            **self.failures.summary(),
        }

