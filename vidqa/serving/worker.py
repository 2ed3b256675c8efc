"""The VLM service with its model in a child process, and the clients that reach it.

A GPU forward pass is thousands of small Python calls. In one process with many streams, every
one of them waits for the interpreter lock that the streams' trackers and sinks hold most of the
time, and a batch that takes milliseconds alone takes seconds. :class:`ProcessVlmService` loads
the model in a spawned process that runs an ordinary :class:`~vidqa.vlm.service.VlmService`.
Crops go there through one bounded multiprocessing queue; each client (this process, and the
stream processes of ``run.processes``) has its own queue for answers, read by a thread that
resolves its callers' futures. A :class:`ServiceClient` has the interface the streams use of
:class:`~vidqa.vlm.service.VlmService`: ``submit`` returns a future, ``waiting``, ``close``.
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing
import os
import pickle
import queue
import signal
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from loguru import logger

from vidqa.assets.types import ModelInfo
from vidqa.config import TrackerConfig, VlmConfig
from vidqa.errors import ModelError
from vidqa.messages import Answer, Roi
from vidqa.tracking import DetectionWorker
from vidqa.vlm.service import ServiceClosed

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
    frames: Any = None  # the worker's detection requests (None: it detects nothing)
    detectors: tuple = ()  # per detector the worker runs: (its TrackerConfig, stride, info)

    def connect(self) -> ServiceClient:
        return ServiceClient(self, lambda: _pid_alive(self.worker_pid)).start()


class ServiceClient:
    """Submits crops to the worker process and resolves the futures as answers come back."""

    def __init__(self, end: ClientEnd, alive: Callable[[], bool]) -> None:
        self.end = end
        self.info = end.info
        self._alive = alive
        self._futures: dict[int, Future[list[Answer]]] = {}
        self._ids = itertools.count()
        self._reader = threading.Thread(target=self._read, name="vlm-results", daemon=True)
        self._closed = threading.Event()
        self.refused = 0
        self.worker_summaries: tuple | None = None  # the worker's service and stage

    def start(self) -> ServiceClient:
        self._reader.start()
        return self

    def submit(self, roi: Roi, questions: Sequence[str], block: bool = True,
               timeout: float | None = None) -> Future[list[Answer]] | None:
        """As :meth:`VlmService.submit`: a future, or None when full and not blocking."""
        if self._closed.is_set():
            raise ServiceClosed("the VLM service is closed: no more crops can be answered")
        request_id, future = next(self._ids), Future()
        self._futures[request_id] = future
        try:
            self.end.requests.put((self.end.client, request_id, roi, tuple(questions)),
                                  block=block, timeout=timeout)
        except queue.Full:
            del self._futures[request_id]
            self.refused += 1
            return None
        return future

    def detect(self, index: int, buffer: str, shape: tuple) -> Future:
        """Ask the worker's detector ``index`` for the boxes of the frame in shared memory
        ``buffer`` (see :class:`~vidqa.tracking.RemoteDetector`)."""
        if self._closed.is_set():
            raise ServiceClosed("the model worker is closed: no more frames can be detected")
        request_id, future = next(self._ids), Future()
        self._futures[request_id] = future
        self.end.frames.put((self.end.client, request_id, index, buffer, shape))
        return future

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
            self.end.results.put(("stop",))
        self._reader.join(timeout=START_TIMEOUT_S)

    def summary(self) -> dict[str, Any]:
        return {"worker": "process", "refused_when_full": self.refused}

    def _read(self) -> None:
        while True:
            try:
                kind, *payload = self.end.results.get(timeout=1.0)
            except queue.Empty:
                if not self._alive():
                    self._fail_all(ModelError("the VLM worker process died"))
                    return
                continue
            if kind == "stop":
                return
            if kind == "closed":
                self.worker_summaries = tuple(payload)
                return
            request_id, answers = payload
            future = self._futures.pop(request_id)
            if isinstance(answers, Exception):
                future.set_exception(answers)
            else:
                future.set_result(answers)

    def _fail_all(self, error: Exception) -> None:
        for future in self._futures.values():
            if not future.done():
                future.set_exception(error)
        self._futures.clear()


class ProcessVlmService:
    """Answers crops with a model that lives in a child process (see the module doc).

    It is itself client 0; ``clients`` more answer queues are made for stream processes
    (:meth:`client_end`)."""

    def __init__(self, cfg: VlmConfig, info: ModelInfo, log_path: Path | None = None,
                 clients: int = 0, detectors: Sequence[TrackerConfig] = (),
                 detection_workers: int = 1) -> None:
        context = multiprocessing.get_context("spawn")  # CUDA cannot be forked
        self._requests = context.Queue(maxsize=cfg.queue_size)
        self._results = [context.Queue() for _ in range(1 + clients)]
        self._process = context.Process(target=_serve_in_child, name="vlm-worker", daemon=True,
                                        args=(cfg, info, self._requests, self._results,
                                              log_path))
        # The stream processes' detection, in processes of its own (see DetectionWorker); a
        # stream process always asks the same one.
        self.detection = [DetectionWorker(detectors, context.Queue(), self._results, log_path)
                          for _ in range(detection_workers if detectors else 0)]
        self.client: ServiceClient | None = None
        self.info: ModelInfo | None = None

    def start(self) -> ProcessVlmService:
        """Start the child (and the detection worker) and wait until the models are loaded; a
        failure raises here."""
        for worker in self.detection:
            worker.start()
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
        self.client = ServiceClient(self.client_end(0), self._process.is_alive).start()
        return self

    def client_end(self, client: int) -> ClientEnd:
        """Client ``client``'s end (1 .. clients), for a stream process."""
        detection = self.detection[client % len(self.detection)] if self.detection else None
        return ClientEnd(self._requests, self._results[client], client, self._process.pid,
                         self.info, detection.frames if detection else None,
                         detection.served if detection else ())

    def submit(self, roi: Roi, questions: Sequence[str], block: bool = True,
               timeout: float | None = None) -> Future[list[Answer]] | None:
        return self.client.submit(roi, questions, block, timeout)

    @property
    def waiting(self) -> int:
        return self.client.waiting

    def close(self) -> None:
        """Answer what is queued, collect the child's summaries, stop it (idempotent)."""
        if self.client is None or self._process.exitcode is not None:
            return
        for worker in self.detection:
            worker.close()
        self._requests.put(None)  # the child drains what is before it, then says "closed"
        self.client.close()
        self._process.join(timeout=30)
        if self._process.is_alive():
            self._process.kill()

    def summary(self) -> dict[str, Any]:
        service = self.client.worker_summaries[0] if self.client.worker_summaries else {}
        return {**service, **self.client.summary()}

    def stage_summary(self) -> dict[str, Any]:
        """The VLM stage's summary (per question: phase, plan, accounting) from the child."""
        return self.client.worker_summaries[1] if self.client.worker_summaries else {}

    def detection_summary(self) -> list[dict[str, Any]]:
        """How the detection workers batched the stream processes' frames."""
        return [{"worker": index, **detector} for index, worker in enumerate(self.detection)
                for detector in worker.summary]

    def __enter__(self) -> ProcessVlmService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _serve_in_child(cfg: VlmConfig, info: ModelInfo, requests: Any, results: list[Any],
                    log_path: Path | None) -> None:
    """The child: load the model, run a threaded VlmService, relay requests and answers."""
    from vidqa.assets import load_vlm
    from vidqa.vlm.model import resolve_device
    from vidqa.vlm.service import VlmService
    from vidqa.vlm.stage import VlmStage

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
        stage = VlmStage(vlm, cfg)
    except Exception as err:  # reported to the parent, which raises it
        results[0].put(("failed", _picklable(err)))
        return
    results[0].put(("ready", vlm.info))
    service = VlmService(stage.answer, cfg.batch_size, cfg.max_wait_ms, cfg.queue_size).start()
    if on_cpu:  # and the threads that loading started from the others
        _yield_cores(cfg.cpu_priority == "idle")
    while (item := requests.get()) is not None:
        client, request_id, roi, questions = item
        future = service.submit(roi, questions, block=True)
        future.add_done_callback(lambda done, c=client, rid=request_id: results[c].put(
            ("answer", rid, _outcome(done))))
    service.close()
    results[0].put(("closed", service.summary(), stage.summary()))


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
    return _picklable(error) if error is not None else future.result()


def _pid_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _picklable(error: BaseException) -> Exception:
    try:
        pickle.dumps(error)
        return error  # type: ignore[return-value]
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")
