"""Detection for stream processes, in a detection worker process: frames in shared memory.

With stream processes on CUDA (``run.processes``) one :class:`DetectionWorker` process detects
for all of them: one CUDA context for every frame, and an interpreter of its own. Each stream's
:class:`RemoteDetector` letterboxes its frame, exactly as ultralytics' predictor does, and hands
it over in shared memory through the process's :class:`DetectionClient`; the worker's
:class:`DetectionServer` batches the frames of every process into one forward pass and sends
the boxes back on the client's own reply queue.

A detection worker that dies is started again on the same queues (:class:`~vidqa.workers.
Supervisor`): each client sends again the frames it has no boxes for, which are still in their
shared memory (a stream has at most ``tracker.in_flight`` frames out, each in its own buffer,
and reuses a buffer only once its boxes are back).
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger

from vidqa.config import TrackerConfig
from vidqa.detection.detector import Detector, boxes_of, letterbox_params
from vidqa.errors import ModelError
from vidqa.workers import Replies, Supervisor, await_ready, picklable, pid_alive, run_for_owner

START_TIMEOUT_S = 600.0  # loading the detectors (and warming them up)


class RemoteDetector:
    """A stream's detector in another process (the model worker, which owns the GPU): the frame
    is letterboxed here, exactly as ultralytics' predictor does it, and handed over in shared
    memory; the worker batches the frames of every stream process into one forward pass and
    sends back the boxes, which are mapped back to the frame here.

    ``submit(index, buffer_name, shape)`` sends one request to detector ``index`` of the worker
    and returns a future of its boxes (in letterboxed pixels). Up to ``tracker.in_flight`` frames
    may be out at once (:meth:`send`), each in a shared buffer of its own.
    """

    def __init__(self, submit: Callable[[int, str, tuple], Future], index: int,
                 cfg: TrackerConfig, stride: int, info: Any) -> None:
        from ultralytics.data.augment import LetterBox

        self.submit = submit
        self.index = index
        self.info = info
        self.cfg, self.stride = cfg, stride
        self.letterbox = LetterBox(new_shape=(cfg.imgsz, cfg.imgsz), auto=True, stride=stride)
        # One buffer per frame in flight, the size of the largest letterboxed frame
        # (tracker.letterbox: worker sends whole frames: a buffer the size of the frame).
        self.buffers = [SharedMemory(create=True, size=3 * (cfg.imgsz + stride) ** 2)
                        for _ in range(cfg.in_flight)]
        self._out: list[PendingBoxes | None] = [None] * cfg.in_flight  # per buffer, its frame
        self._next = 0  # the buffer the next frame goes to (round robin)
        self.letterbox_s = 0.0  # seconds letterboxing this stream's frames

    def __call__(self, image: np.ndarray) -> Any:
        return self.send(image).result()

    def send(self, image: np.ndarray) -> PendingBoxes:
        """Hand ``image`` to the worker; its boxes, once they are back. The frame's buffer is
        reused ``tracker.in_flight`` frames later: its boxes must be back by then."""
        started = time.perf_counter()
        if self.cfg.letterbox == "worker":  # the worker letterboxes: only the shape is needed
            framed = letterbox_params(image.shape, self.cfg.imgsz, self.stride)["framed"]
            sent = image
        else:
            sent = self.letterbox(image=image)
            framed = sent.shape[:2]
        self.letterbox_s += time.perf_counter() - started
        slot = self._next
        self._next = (slot + 1) % len(self.buffers)
        assert self._out[slot] is None or self._out[slot].future.done(), \
            "more frames out than tracker.in_flight buffers"
        if sent.nbytes > self.buffers[slot].size:
            _free(self.buffers[slot])
            self.buffers[slot] = SharedMemory(create=True, size=sent.nbytes)
        buffer = self.buffers[slot]
        np.ndarray(sent.shape, np.uint8, buffer.buf)[:] = sent
        pending = PendingBoxes(self.submit(self.index, buffer.name, sent.shape), framed,
                               image.shape)
        self._out[slot] = pending
        return pending

    def close(self) -> None:
        """Free the shared buffers once the worker has read them (the frames still out are
        waited for)."""
        for pending in self._out:
            if pending is not None:
                pending.settle()
        for buffer in self.buffers:
            _free(buffer)


class PendingBoxes:
    """One frame's boxes from a detection worker, mapped back to the frame's pixels when taken."""

    def __init__(self, future: Future, framed: tuple, shape: tuple) -> None:
        self.future, self.framed, self.shape = future, framed, shape

    def result(self) -> Any:
        data = self.future.result()
        if len(data):
            from ultralytics.utils.ops import scale_boxes

            data[:, :4] = scale_boxes(self.framed, data[:, :4], self.shape[:2])
        return boxes_of(data, self.shape)

    def settle(self, timeout_s: float = 30.0) -> None:
        """Wait (at most ``timeout_s``) until the worker is done with the frame, boxes unused."""
        try:
            self.future.result(timeout=timeout_s)
        except Exception:  # noqa: BLE001, S110 - the boxes are not wanted, only the buffer
            pass


def _free(buffer: SharedMemory) -> None:
    buffer.close()
    buffer.unlink()


class DetectionServer:
    """The worker's side of :class:`RemoteDetector`: one thread takes every request waiting (up
    to ``tracker.batch``), groups them by detector and frame size, runs one forward pass per
    group and answers each stream process on its own queue (``reply(client, request_id,
    boxes_or_error)``)."""

    def __init__(self, configs: Sequence[TrackerConfig], requests: Any,
                 reply: Callable[[int, int, Any], None]) -> None:
        self.detectors = [Detector(cfg) for cfg in configs]
        for detector in self.detectors:
            detector._predictor()  # warm up before the first stream's frame
        self.requests = requests
        self.reply = reply
        self.max_batch = max(d.max_batch for d in self.detectors)
        self._buffers: dict[str, SharedMemory] = {}
        self._thread = threading.Thread(target=self.serve, name="detection", daemon=True)

    def start(self) -> DetectionServer:
        """Serve on a thread of this process (:meth:`serve` serves on the caller's)."""
        self._thread.start()
        return self

    def join(self) -> None:
        self._thread.join()

    def summary(self) -> list[dict[str, Any]]:
        return [d.summary() for d in self.detectors]

    def serve(self) -> None:
        """Answer requests until a None arrives."""
        while (first := self.requests.get()) is not None:
            batch, stop = [first], False
            while len(batch) < self.max_batch:
                try:
                    item = self.requests.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            groups: dict[tuple, list] = {}
            for request in batch:  # (client, request_id, detector index, buffer name, shape)
                groups.setdefault((request[2], tuple(request[4])), []).append(request)
            for (index, shape), requests in groups.items():
                self._detect(self.detectors[index], shape, requests)
            if stop:
                break
        for buffer in self._buffers.values():
            buffer.close()

    def _detect(self, detector: Detector, shape: tuple, requests: list) -> None:
        try:
            frames = [np.ndarray(shape, np.uint8, self._buffer(r[3]).buf) for r in requests]
            letterbox = letterbox_params(shape, detector.cfg.imgsz, detector.stride) \
                if detector.cfg.letterbox == "worker" else None
            results: list[Any] = detector.predict_framed(frames, letterbox)
        except Exception as err:  # these frames fail, the next batch may not
            results = [err] * len(requests)
        for request, result in zip(requests, results, strict=True):
            self.reply(request[0], request[1], result)

    def _buffer(self, name: str) -> SharedMemory:
        if name not in self._buffers:
            self._buffers[name] = _attach(name)
        return self._buffers[name]


@dataclass(frozen=True)
class DetectionEnd:
    """What a stream process needs to reach a detection worker (passed when the process is
    created: multiprocessing queues travel only that way)."""

    frames: Any  # the worker's request queue, shared by every client
    replies: Any  # this client's reply queue
    client: int  # this client's index
    worker_pid: int  # when the end was made: a worker that died is replaced by another
    detectors: tuple  # per detector the worker runs: (its TrackerConfig, stride, info)
    owner_pid: int  # the process of the DetectionWorker, which restarts the worker

    def connect(self) -> DetectionClient:
        return DetectionClient(self).start()


class DetectionClient:
    """A stream process's side of a detection worker: sends frame requests, resolves the
    futures as the boxes come back (see :class:`RemoteDetector`)."""

    def __init__(self, end: DetectionEnd) -> None:
        self.end = end
        self._replies = Replies(end.replies, lambda: pid_alive(end.owner_pid),
                                "the detection worker process died", "detection-replies",
                                resend=self._send)

    def start(self) -> DetectionClient:
        self._replies.start()
        return self

    def detect(self, index: int, buffer: str, shape: tuple) -> Future:
        """Ask the worker's detector ``index`` for the boxes of the frame in shared memory
        ``buffer``; a future of its boxes (in letterboxed pixels)."""
        request = (index, buffer, shape)
        request_id, future = self._replies.expect(request)
        if not future.done():  # done: the worker was given up
            self._send(request_id, request)
        return future

    def close(self) -> None:
        """Stop reading replies (idempotent). The worker itself is closed by the run."""
        self._replies.stop(timeout=30)

    def _send(self, request_id: int, request: tuple) -> None:
        self.end.frames.put((self.end.client, request_id, *request))


class DetectionWorker:
    """The run's detectors in their own process, serving ``clients`` stream processes (see the
    module doc); :meth:`end` is what each of them connects with. A process that dies is
    started again (:attr:`restarts`)."""

    def __init__(self, configs: Sequence[TrackerConfig], clients: int,
                 log_path: Path | None = None) -> None:
        import multiprocessing

        self._context = multiprocessing.get_context("spawn")  # CUDA cannot be forked
        self._configs, self._log_path = tuple(configs), log_path
        self.frames = self._context.Queue()
        self._replies = [self._context.Queue() for _ in range(clients)]
        self._control = self._context.Queue()
        self._supervisor: Supervisor | None = None
        self._closed = False
        self.served: tuple = ()  # per detector: (its config, stride, info)
        self.summary: list[dict[str, Any]] = []  # per detector, once closed (with restarts)

    def start(self, timeout_s: float = START_TIMEOUT_S) -> DetectionWorker:
        """Start the process and wait until its detectors are loaded; a failure raises."""
        process, self.served = self._spawn(timeout_s, None)
        self._supervisor = Supervisor(
            "detection worker", process, lambda stop: self._spawn(START_TIMEOUT_S, stop)[0],
            ([self.frames], [*self._replies, self._control]), self._tell_restarted,
            self._give_up).start()
        return self

    @property
    def restarts(self) -> int:
        """How many times a worker that died was started again."""
        return self._supervisor.restarts if self._supervisor is not None else 0

    @property
    def pid(self) -> int:
        """The worker process's id now (a restart changes it)."""
        return self._supervisor.process.pid

    def end(self, client: int) -> DetectionEnd:
        """Client ``client``'s end (0 .. clients - 1), for a stream process."""
        return DetectionEnd(self.frames, self._replies[client], client, self.pid,
                            self.served, os.getpid())

    def close(self) -> None:
        """Detect what is queued, then stop (idempotent)."""
        if self._supervisor is None or self._closed:
            return
        self._closed = True
        self._supervisor.stop()
        process = self._supervisor.process
        if not process.is_alive():
            return
        self.frames.put(None)
        try:
            _, summary = self._control.get(timeout=60)
            self.summary = [{**d, "restarts": self.restarts} for d in summary]
        except queue.Empty:
            logger.warning("the detection worker did not report how it batched")
        process.join(timeout=30)
        if process.is_alive():
            process.kill()

    def _spawn(self, timeout_s: float, stop: threading.Event | None) -> tuple[Any, Any]:
        """A worker process on this worker's queues and what it serves, once loaded (None:
        stopped while it loaded, and killed)."""
        process = self._context.Process(target=_detect_in_child, name="detection",
                                        daemon=True, args=(self._configs, self.frames,
                                                           self._replies, self._control,
                                                           self._log_path))
        process.start()
        served = await_ready(self._control, process, timeout_s, "detection worker", stop)
        return (process if served is not None else None), served

    def _tell_restarted(self, restarts: int) -> None:
        for replies in self._replies:
            replies.put(("restarted", restarts))

    def _give_up(self, reason: str) -> None:
        for replies in self._replies:
            replies.put(("fail", ModelError(reason)))


def _detect_in_child(configs: tuple[TrackerConfig, ...], frames: Any, replies: list[Any],
                     control: Any, log_path: Path | None) -> None:
    run_for_owner()  # the run stops its streams, then us
    if log_path is not None:
        logger.add(log_path, level="INFO", enqueue=False)

    def reply(client: int, request_id: int, outcome: Any) -> None:
        if isinstance(outcome, BaseException):
            outcome = picklable(outcome)
        replies[client].put(("reply", request_id, outcome))

    try:
        server = DetectionServer(configs, frames, reply)
    except Exception as err:
        control.put(("failed", ModelError(f"{type(err).__name__}: {err}")))
        return
    control.put(("ready", tuple((d.cfg, d.stride, d.info) for d in server.detectors)))
    server.serve()
    control.put(("closed", server.summary()))


def _attach(name: str) -> SharedMemory:
    """A stream's buffer, for reading. Every process of a run shares the run's resource
    tracker (spawned children inherit it), which already holds the buffer from its owner: the
    owner's ``unlink`` removes it once, and a second registration here changes nothing (taking
    one back would make the owner's removal a KeyError in the tracker)."""
    try:
        return SharedMemory(name=name, track=False)  # Python >= 3.13
    except TypeError:
        return SharedMemory(name=name)
