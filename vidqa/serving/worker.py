"""The service with its model in a worker process, and the clients that reach it.

A GPU forward pass is thousands of small Python calls. In one process with many streams, every
one of them waits for the interpreter lock that the streams' trackers and sinks hold most of the
time, and a batch that takes milliseconds alone takes seconds. :class:`WorkerService` loads
the model in a spawned process that runs an ordinary
:class:`~vidqa.serving.batching.BatchingService`. Crops go there through one bounded
multiprocessing queue; each client (this process, and the stream processes of
``run.processes``) has its own queue for answers, read by a thread that resolves its callers'
futures. Both have the :class:`~vidqa.serving.base.AnswerService` interface.

The worker does not read the shared request queue itself: the service's :class:`_Feed` thread
relays it to a pipe of the worker's own. A worker killed in the middle of reading a crop
leaves the rest of that message in the pipe it read, and the next reader of that pipe would
take crop bytes for a message's length and wait for ever; the dead worker's pipe goes with it,
and the shared queue, read only by its owner, stays whole.

A worker that dies while the service is open is started again on a new pipe
(:class:`~vidqa.workers.Supervisor`): every client asks again what it had no answer for, and no
caller sees the death. A stop that cannot wait (``close(abandon=True)``) tells the worker out of
band (an event, not the request queue, which the worker may not be reading), takes its last
summaries if they come within :data:`ABANDON_WAIT_S`, and kills it.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
import threading
import time
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
from vidqa.serving.base import Abandoned, ServiceClosed
from vidqa.vlm.features import FeatureTarget
from vidqa.workers import (
    Replies,
    Supervisor,
    await_ready,
    picklable,
    pid_alive,
    release_locks,
    run_for_owner,
)

START_TIMEOUT_S = 900.0  # loading (and first downloading) a model
CLOSE_WAIT_S = 120.0  # a closing service waits this long for room in a full request queue
ABANDON_WAIT_S = 1.5  # an abandoning close waits this long for the worker's last word
ABANDON_POLL_S = 0.05  # how often the worker looks at the abandon flag
FEED_POLL_S = 0.25  # how often the feed looks whether the service closed
_CLOSED = object()
CPU_NICENESS = 19  # a CPU worker yields the cores to the streams' trackers


@dataclass(frozen=True)
class ClientEnd:
    """What a stream process needs to reach the worker (passed when the process is created:
    multiprocessing queues travel only that way)."""

    requests: Any  # the worker's bounded request queue, shared by every client
    results: Any  # this client's answer queue
    client: int  # this client's index
    worker_pid: int  # when the end was made: a worker that died is replaced by another
    info: ModelInfo  # the model the worker runs
    owner_pid: int  # the process of the WorkerService, which restarts the worker

    def connect(self) -> WorkerClient:
        return WorkerClient(self, lambda: pid_alive(self.owner_pid)).start()


class WorkerClient:
    """Submits crops to the worker process and resolves the futures as answers come back.

    It keeps each open request's crop and questions, to ask them again of a restarted worker;
    ``alive()`` is whether the worker runs or is being restarted."""

    def __init__(self, end: ClientEnd, alive: Callable[[], bool]) -> None:
        self.end = end
        self.info = end.info
        self._replies = Replies(end.results, alive, "the VLM worker process died",
                                "vlm-results", self._closed_by_worker, self._ask_again)
        self._closed = threading.Event()
        self.refused = 0
        self.abandoned = 0
        self.worker_summaries: tuple | None = None  # the worker's service and answerer

    def start(self) -> WorkerClient:
        self._replies.start()
        return self

    def submit(self, crop: Crop, questions: Sequence[str], block: bool = True,
               timeout: float | None = None) -> Future[list[Answer]] | None:
        """See :meth:`vidqa.serving.base.AnswerService.submit`."""
        if self._closed.is_set():
            raise ServiceClosed("the VLM service is closed: no more crops can be answered")
        request = (crop, tuple(questions))
        request_id, future = self._replies.expect(request)
        if future.done():  # the worker was given up
            return future
        try:
            self.end.requests.put(("ask", self.end.client, request_id, *request), block=block,
                                  timeout=timeout)
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

    def close(self, abandon: bool = False) -> None:
        """Stop reading answers (idempotent); with ``abandon`` the open futures fail at once
        with :class:`Abandoned`. The worker itself is closed by its owner."""
        if self._closed.is_set():
            return
        self._closed.set()
        if abandon:
            self.abandoned += self._replies.fail_all(
                Abandoned("the run is stopping: the crop's answer is not waited for"))
        wait = ABANDON_WAIT_S if abandon else START_TIMEOUT_S
        if self.end.client:  # the owner's reader ends on the worker's "closed" message
            self._replies.stop(timeout=wait)
        else:
            self._replies.join(timeout=wait)

    def summary(self) -> dict[str, Any]:
        return {"worker": "process", "refused_when_full": self.refused,
                "abandoned": self.abandoned}

    def _ask_again(self, request_id: int, request: tuple) -> None:
        """A restarted worker: the request once more (its reply may now come twice)."""
        self.end.requests.put(("ask", self.end.client, request_id, *request))

    def _closed_by_worker(self, kind: str, payload: list) -> bool:
        if kind == "closed":  # the worker's last word: its service's and answerer's summaries
            self.worker_summaries = tuple(payload)
            return True
        return False


class WorkerService:
    """Answers crops with a model that lives in a worker process (see the module doc).

    It is itself client 0; ``clients`` more answer queues are made for stream processes
    (:meth:`client_end`). A worker that dies is started again (:attr:`restarts`)."""

    def __init__(self, cfg: VlmConfig, info: ModelInfo, log_path: Path | None = None,
                 clients: int = 0, features: FeatureTarget | None = None) -> None:
        self._context = multiprocessing.get_context("spawn")  # CUDA cannot be forked
        self._cfg, self._requested, self._log_path = cfg, info, log_path
        self._features = features  # store.features: where the worker keeps them
        self._requests = self._context.Queue(maxsize=cfg.queue_size)
        self._feed = _Feed(self._requests)
        self._results = [self._context.Queue() for _ in range(1 + clients)]
        self._ready = self._context.Queue()  # each worker's "ready" (or why it failed)
        # Out of band (the request queue may be stuck), and a flag, not an Event: setting an
        # Event waits for its sleepers to wake, which a killed worker never does.
        self._abandon = self._context.RawValue("b", 0)
        self._supervisor: Supervisor | None = None
        self._closed = False
        self.client: WorkerClient | None = None
        self.info: ModelInfo | None = None

    def start(self) -> WorkerService:
        """Start the worker and wait until its model is loaded; a failure raises here."""
        self._feed.start()
        process, self.info = self._spawn(None)
        self._supervisor = Supervisor(
            "VLM worker", process, self._launch, ([], [*self._results, self._ready]),
            self._tell_restarted, self._give_up)
        self.client = WorkerClient(self.client_end(0), self._alive).start()
        self._supervisor.start()
        return self

    def client_end(self, client: int) -> ClientEnd:
        """Client ``client``'s end (1 .. clients), for a stream process."""
        return ClientEnd(self._requests, self._results[client], client, self.worker_pid,
                         self.info, os.getpid())

    @property
    def worker_pid(self) -> int:
        """The worker process's id now (a restart changes it)."""
        return self._supervisor.process.pid

    @property
    def restarts(self) -> int:
        """How many times a worker that died was started again."""
        return self._supervisor.restarts if self._supervisor is not None else 0

    def submit(self, crop: Crop, questions: Sequence[str], block: bool = True,
               timeout: float | None = None) -> Future[list[Answer]] | None:
        return self.client.submit(crop, questions, block, timeout)

    @property
    def waiting(self) -> int:
        return self.client.waiting

    def expect(self, seconds: float) -> None:
        self.client.expect(seconds)

    def close(self, abandon: bool = False) -> None:
        """Answer what is queued, collect the worker's summaries, stop it (idempotent).

        With ``abandon`` every client's open futures fail with :class:`Abandoned` and it
        returns within seconds, even while the model is in the middle of a batch."""
        if self.client is None or self._closed:
            return
        self._closed = True
        self._supervisor.stop()  # no restart from here on
        process = self._supervisor.process
        if abandon:
            self._abandon.value = 1
            self.client.close(abandon=True)  # and waits a moment for the worker's summaries
            error = Abandoned("the run is stopping: the crop's answer is not waited for")
            for results in self._results[1:]:
                results.put(("fail", error))
                results.cancel_join_thread()  # a client gone for good must not hold our exit
        else:
            # the worker drains, then says "closed"; one that takes nothing is killed
            if process.is_alive() and not self._put_while_alive(process, None):
                process.kill()
            self.client.close()
        process.join(timeout=ABANDON_WAIT_S if abandon else 30)
        self._feed.close()
        if process.is_alive():
            process.kill()
            process.join(timeout=10)
        release_locks([], self._results)  # killed, or gone by os._exit: a feeder's lock

    def summary(self) -> dict[str, Any]:
        service = self.client.worker_summaries[0] if self.client.worker_summaries else {}
        return {**service, **self.client.summary(), "restarts": self.restarts}

    def answerer_summary(self) -> dict[str, Any]:
        """The batch answerer's summary (per question: phase, plan, accounting) from the
        worker."""
        return self.client.worker_summaries[1] if self.client.worker_summaries else {}

    def __enter__(self) -> WorkerService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _spawn(self, stop: threading.Event | None) -> tuple[Any, ModelInfo | None]:
        """A worker process on the service's queues, and its model once loaded (None: stopped
        while it loaded, and killed)."""
        reader, writer = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=_serve_in_child, name="vlm-worker", daemon=True,
            args=(self._cfg, self._requested, reader, self._results, self._ready,
                  self._abandon, self._log_path, self._features))
        process.start()
        reader.close()  # the worker's alone: when it dies, writing to the pipe fails
        try:
            info = await_ready(self._ready, process, START_TIMEOUT_S, "VLM worker", stop)
        except BaseException:
            writer.close()
            raise
        if info is None:
            writer.close()
        else:
            self._feed.attach(writer)
        return process, info

    def _launch(self, stop: threading.Event) -> Any:
        process, info = self._spawn(stop)
        return process if info is not None else None

    def _alive(self) -> bool:
        return self._supervisor.watching or self._supervisor.process.is_alive()

    def _tell_restarted(self, restarts: int) -> None:
        for results in self._results:
            results.put(("restarted", restarts))

    def _give_up(self, reason: str) -> None:
        for results in self._results:
            results.put(("fail", ModelError(reason)))

    def _put_while_alive(self, process: Any, item: Any) -> bool:
        """Put ``item`` while the worker lives and takes requests, for at most
        :data:`CLOSE_WAIT_S`; whether it went."""
        deadline = time.monotonic() + CLOSE_WAIT_S
        while process.is_alive() and time.monotonic() < deadline:
            try:
                self._requests.put(item, timeout=0.5)
                return True
            except queue.Full:
                continue
        if process.is_alive():
            logger.warning("the VLM worker took no request for {:.0f} s at the stop: it is "
                           "killed", CLOSE_WAIT_S)
        return False


class _Feed:
    """The owner's relay from the shared request queue to the live worker's own pipe.

    A request it cannot hand over (the worker died; its pipe is closed) is dropped: every open
    request is asked again once the new worker is ready. Without a worker it waits. A new
    worker gets the newest ``expect`` first (the clips' length, for its planner)."""

    def __init__(self, requests: Any) -> None:
        self._requests = requests
        self._pipe: Any = None  # the writing end of the live worker's pipe
        self._used: Any = None  # the pipe written last (the feed thread's alone)
        self._changed = threading.Condition()
        self._closed = False
        self._expect: tuple | None = None  # the newest ("expect", seconds), for a new worker
        self._thread = threading.Thread(target=self._run, name="vlm-feed", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def attach(self, pipe: Any) -> None:
        """A new worker's pipe (the feed closes the old one: it may be writing to it)."""
        with self._changed:
            self._pipe = pipe
            self._changed.notify_all()

    def close(self) -> None:
        """Stop relaying (returns at once: a send under way ends when the worker is killed;
        the thread closes the pipes it holds as it ends)."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def _run(self) -> None:
        try:
            self._relay()
        finally:
            with self._changed:
                for pipe in {self._used, self._pipe} - {None}:
                    pipe.close()
                self._pipe = None

    def _relay(self) -> None:
        while (item := self._next()) is not _CLOSED:
            if isinstance(item, tuple) and item[0] == "expect":
                self._expect = item
            pipe = self._live_pipe()
            if pipe is None:
                return
            if pipe is not self._used:  # a new worker: it learns how long the clips are first
                if self._used is not None:
                    self._used.close()  # a dead worker's
                self._used = pipe
                if (self._expect is not None and item is not self._expect
                        and not self._send(pipe, self._expect)):
                    continue
            if self._send(pipe, item) and item is None:
                return  # the service's last request: the worker drains and stops

    def _send(self, pipe: Any, item: Any) -> bool:
        """Whether ``item`` went; a worker that died takes its pipe out of service."""
        try:
            pipe.send(item)
            return True
        except OSError:
            with self._changed:
                if self._pipe is pipe:
                    self._pipe = None
            return False

    def _next(self) -> Any:
        while not self._closed:
            try:
                return self._requests.get(timeout=FEED_POLL_S)
            except queue.Empty:
                continue
        return _CLOSED

    def _live_pipe(self) -> Any:
        with self._changed:
            self._changed.wait_for(lambda: self._pipe is not None or self._closed)
            return None if self._closed else self._pipe


def _serve_in_child(cfg: VlmConfig, info: ModelInfo, requests: Any, results: list[Any],
                    ready: Any, abandon: Any, log_path: Path | None,
                    features: FeatureTarget | None) -> None:
    """The worker: load the model, run a :class:`BatchingService`, relay requests (from its
    own pipe) and answers."""
    from vidqa.serving.batching import BatchingService
    from vidqa.vlm.batch import BatchAnswerer
    from vidqa.vlm.loading import load_vlm
    from vidqa.vlm.model import resolve_device

    run_for_owner()  # the owner stops the streams, which wait for the answers in flight
    if log_path is not None:
        logger.add(log_path, level="INFO", enqueue=False)
    try:
        on_cpu = resolve_device(cfg.device).type == "cpu"
        if on_cpu:  # before loading, so that the threads it starts inherit it
            _yield_cores(cfg.cpu_priority == "idle")
        vlm = load_vlm(cfg, info)
        answerer = BatchAnswerer(vlm, cfg, features=features)
    except Exception as err:  # reported to the parent, which raises it
        ready.put(("failed", picklable(err)))
        return
    ready.put(("ready", vlm.info))
    service = BatchingService(answerer.answer, cfg.batch_size, cfg.max_wait_ms,
                              cfg.queue_size,
                              expect=lambda seconds: answerer.expect(seconds=seconds),
                              flush=answerer.flush).start()
    threading.Thread(target=_abandon_when_told, args=(abandon, service, answerer, results),
                     name="vlm-abandon", daemon=True).start()
    if on_cpu:  # and the threads that loading started from the others
        _yield_cores(cfg.cpu_priority == "idle")
    _relay(requests, results, service)
    service.close()
    results[0].put(("closed", service.summary(), answerer.summary()))


def _relay(requests: Any, results: list[Any], service: Any) -> None:
    """Requests to the service, answers to each client's queue, until the None (or the
    owner's end of the pipe closes)."""
    while (item := _receive(requests)) is not None:
        kind, *payload = item
        if kind == "expect":
            service.expect(*payload)
            continue
        client, request_id, crop, questions = payload
        try:
            future = service.submit(crop, questions, block=True)
        except ServiceClosed:  # abandoned: the worker is about to exit
            return
        future.add_done_callback(lambda done, c=client, rid=request_id: results[c].put(
            ("reply", rid, _outcome(done))))


def _receive(pipe: Any) -> Any:
    try:
        return pipe.recv()
    except EOFError:
        return None


def _abandon_when_told(abandon: Any, service: Any, answerer: Any, results: list[Any]) -> None:
    """Out of band, when the owner abandons: drop the batches, send the last word, exit now
    (the relay thread may be stuck handing a crop to the full service)."""
    while not abandon.value:
        time.sleep(ABANDON_POLL_S)
    service.close(abandon=True)
    try:
        answers = answerer.summary()
    except Exception as err:  # the model thread is still inside it
        logger.warning("no answerer summary at the abandoning stop: {}", err)
        answers = {}
    results[0].put(("closed", service.summary(), answers))
    for other in results[1:]:
        other.cancel_join_thread()  # their clients stopped waiting
    results[0].close()
    results[0].join_thread()  # the summaries really leave before the process does
    os._exit(0)


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
