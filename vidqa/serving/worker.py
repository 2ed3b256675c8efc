"""The service with its model in a worker process, and the clients that reach it.

A GPU forward pass is thousands of small Python calls. In one process with many streams, every
one of them waits for the interpreter lock that the streams' trackers and sinks hold most of the
time, and a batch that takes milliseconds alone takes seconds. :class:`WorkerService` loads
the model in a spawned process that runs an ordinary
:class:`~vidqa.serving.batching.BatchingService`. Crops go there through one bounded
multiprocessing queue; each client (this process, and the stream processes of
``run.processes``) has its own queue for answers, read by a thread that resolves its callers'
futures. Both have the :class:`~vidqa.serving.base.AnswerService` interface.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
import signal
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loguru import logger

from vidqa.assets.types import ModelInfo
from vidqa.config import VlmConfig
from vidqa.errors import ModelError
from vidqa.messages import Answer, Crop
from vidqa.serving.base import ServiceClosed
from vidqa.workers import Replies, picklable, pid_alive

START_TIMEOUT_S = 900.0  # loading (and first downloading) a model
CPU_NICENESS = 19  # a CPU worker yields the cores to the streams' trackers


@dataclass(frozen=True)
class ClientEnd:
    """What a stream process needs to reach the worker (passed when the process is created:
    multiprocessing queues travel only that way)."""

    requests: Any  # the worker's bounded request queue, shared by every client
    results: Any  # this client's answer queue
    client: int  # this client's index
    worker_pid: int
    info: ModelInfo  # the model the worker runs

    def connect(self) -> WorkerClient:
        return WorkerClient(self, lambda: pid_alive(self.worker_pid)).start()


class WorkerClient:
    """Submits crops to the worker process and resolves the futures as answers come back."""

    def __init__(self, end: ClientEnd, alive: Callable[[], bool]) -> None:
        self.end = end
        self.info = end.info
        self._replies = Replies(end.results, alive, "the VLM worker process died",
                                "vlm-results", self._closed_by_worker)
        self._closed = threading.Event()
        self.refused = 0
        self.worker_summaries: tuple | None = None  # the worker's service and answerer

    def start(self) -> WorkerClient:
        self._replies.start()
        return self

    def submit(self, crop: Crop, questions: Sequence[str], block: bool = True,
               timeout: float | None = None) -> Future[list[Answer]] | None:
        """See :meth:`vidqa.serving.base.AnswerService.submit`."""
        if self._closed.is_set():
            raise ServiceClosed("the VLM service is closed: no more crops can be answered")
        request_id, future = self._replies.expect()
        try:
            self.end.requests.put(("ask", self.end.client, request_id, crop, tuple(questions)),
                                  block=block, timeout=timeout)
        except queue.Full:
            self._replies.forget(request_id)
            self.refused += 1
            return None
        return future

    def expect(self, seconds: float) -> None:
        """See :meth:`vidqa.serving.base.AnswerService.expect`."""
        self.end.requests.put(("expect", seconds))

    @property
    def waiting(self) -> int:
        try:
            return self.end.requests.qsize()
        except NotImplementedError:  # macOS has no sem_getvalue
            return 0

    def close(self) -> None:
        """Stop reading answers (idempotent). The worker itself is closed by its owner."""
        if self._closed.is_set():
            return
        self._closed.set()
        if self.end.client:  # the owner's reader ends on the worker's "closed" message
            self._replies.stop(timeout=START_TIMEOUT_S)
        else:
            self._replies.join(timeout=START_TIMEOUT_S)

    def summary(self) -> dict[str, Any]:
        return {"worker": "process", "refused_when_full": self.refused}

    def _closed_by_worker(self, kind: str, payload: list) -> bool:
        if kind == "closed":  # the worker's last word: its service's and answerer's summaries
            self.worker_summaries = tuple(payload)
            return True
        return False


class WorkerService:
    """Answers crops with a model that lives in a worker process (see the module doc).

    It is itself client 0; ``clients`` more answer queues are made for stream processes
    (:meth:`client_end`)."""

    def __init__(self, cfg: VlmConfig, info: ModelInfo, log_path: Path | None = None,
                 clients: int = 0) -> None:
        context = multiprocessing.get_context("spawn")  # CUDA cannot be forked
        self._requests = context.Queue(maxsize=cfg.queue_size)
        self._results = [context.Queue() for _ in range(1 + clients)]
        self._process = context.Process(target=_serve_in_child, name="vlm-worker", daemon=True,
                                        args=(cfg, info, self._requests, self._results,
                                              log_path))
        self.client: WorkerClient | None = None
        self.info: ModelInfo | None = None

    def start(self) -> WorkerService:
        """Start the worker and wait until its model is loaded; a failure raises here."""
        self._process.start()
        try:
            kind, payload = self._results[0].get(timeout=START_TIMEOUT_S)
        except queue.Empty:
            self._process.kill()
            raise ModelError(f"the VLM worker did not load its model within "
                             f"{START_TIMEOUT_S:g} s") from None
        if kind != "ready":
            self._process.join(timeout=10)
            raise payload if isinstance(payload, Exception) else ModelError(str(payload))
        self.info = payload
        self.client = WorkerClient(self.client_end(0), self._process.is_alive).start()
        return self

    def client_end(self, client: int) -> ClientEnd:
        """Client ``client``'s end (1 .. clients), for a stream process."""
        return ClientEnd(self._requests, self._results[client], client, self._process.pid,
                         self.info)

    def submit(self, crop: Crop, questions: Sequence[str], block: bool = True,
               timeout: float | None = None) -> Future[list[Answer]] | None:
        return self.client.submit(crop, questions, block, timeout)

    @property
    def waiting(self) -> int:
        return self.client.waiting

    def expect(self, seconds: float) -> None:
        self.client.expect(seconds)

    def close(self) -> None:
        """Answer what is queued, collect the worker's summaries, stop it (idempotent)."""
        if self.client is None or self._process.exitcode is not None:
            return
        self._requests.put(None)  # the worker drains what is before it, then says "closed"
        self.client.close()
        self._process.join(timeout=30)
        if self._process.is_alive():
            self._process.kill()

    def summary(self) -> dict[str, Any]:
        service = self.client.worker_summaries[0] if self.client.worker_summaries else {}
        return {**service, **self.client.summary()}

    def answerer_summary(self) -> dict[str, Any]:
        """The batch answerer's summary (per question: phase, plan, accounting) from the
        worker."""
        return self.client.worker_summaries[1] if self.client.worker_summaries else {}

    def __enter__(self) -> WorkerService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _serve_in_child(cfg: VlmConfig, info: ModelInfo, requests: Any, results: list[Any],
                    log_path: Path | None) -> None:
    """The worker: load the model, run a :class:`BatchingService`, relay requests and
    answers."""
    from vidqa.serving.batching import BatchingService
    from vidqa.vlm.batch import BatchAnswerer
    from vidqa.vlm.loading import load_vlm
    from vidqa.vlm.model import resolve_device

    # Ctrl-C reaches the whole process group: the owner stops the streams, which wait for the
    # answers in flight, and then closes this worker. Dying on SIGINT would lose those answers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if log_path is not None:
        logger.add(log_path, level="INFO", enqueue=False)
    try:
        on_cpu = resolve_device(cfg.device).type == "cpu"
        if on_cpu:  # before loading, so that the threads it starts inherit it
            _yield_cores(cfg.cpu_priority == "idle")
        vlm = load_vlm(cfg, info)
        answerer = BatchAnswerer(vlm, cfg)
    except Exception as err:  # reported to the parent, which raises it
        results[0].put(("failed", picklable(err)))
        return
    results[0].put(("ready", vlm.info))
    service = BatchingService(answerer.answer, cfg.batch_size, cfg.max_wait_ms,
                              cfg.queue_size,
                              expect=lambda seconds: answerer.expect(seconds=seconds)).start()
    if on_cpu:  # and the threads that loading started from the others
        _yield_cores(cfg.cpu_priority == "idle")
    _relay(requests, results, service)
    service.close()
    results[0].put(("closed", service.summary(), answerer.summary()))


def _relay(requests: Any, results: list[Any], service: Any) -> None:
    """Requests to the service, answers to each client's queue, until the None."""
    while (item := requests.get()) is not None:
        kind, *payload = item
        if kind == "expect":
            service.expect(*payload)
            continue
        client, request_id, crop, questions = payload
        future = service.submit(crop, questions, block=True)
        future.add_done_callback(lambda done, c=client, rid=request_id: results[c].put(
            ("reply", rid, _outcome(done))))


def _yield_cores(idle: bool) -> None:
    """Lower every thread of this process to :data:`CPU_NICENESS`, and with ``idle`` put it
    under ``SCHED_IDLE`` (``vlm.cpu_priority``): a model on the CPU must not take the cores
    from the trackers. A nice-19 thread still runs out its time slice before a woken tracker
    thread gets the core back; an idle-policy thread yields at once, and runs only when a core
    is idle, so on a machine that never idles it never runs. On Linux both belong to a thread,
    not the process: ``os.nice`` would lower only the calling thread and those it starts
    later, and torch's import already started others."""
    tasks = Path("/proc/self/task")
    if tasks.is_dir():
        for thread in tasks.iterdir():
            with contextlib.suppress(OSError):  # a thread that ended meanwhile
                os.setpriority(os.PRIO_PROCESS, int(thread.name), CPU_NICENESS)
                if idle:
                    os.sched_setscheduler(int(thread.name), os.SCHED_IDLE, os.sched_param(0))
    elif hasattr(os, "nice"):
        os.nice(CPU_NICENESS - os.nice(0))


def _outcome(future: Future) -> list[Answer] | Exception:
    error = future.exception()
    return picklable(error) if error is not None else future.result()
