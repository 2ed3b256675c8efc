"""The VLM service with its model in a child process.

A GPU forward pass is thousands of small Python calls. In one process with many streams, every
one of them waits for the interpreter lock that the streams' trackers and sinks hold most of the
time, and a batch that takes milliseconds alone takes seconds. :class:`ProcessVlmService` keeps
the interface of :class:`~vidqa.vlm.service.VlmService` (``submit`` returns a future, bounded
queue, ``waiting``, ``close``, ``summary``) but loads the model in a spawned process that runs an
ordinary :class:`VlmService`: crops go there through a bounded multiprocessing queue, answers
come back through another and a reader thread resolves the callers' futures.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import pickle
import queue
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from loguru import logger

from vidqa.assets.types import ModelInfo
from vidqa.config import VlmConfig
from vidqa.errors import ModelError
from vidqa.messages import Answer, Roi
from vidqa.vlm.service import ServiceClosed

START_TIMEOUT_S = 900.0  # loading (and first downloading) a model
CPU_NICENESS = 19  # a CPU worker yields the cores to the streams' trackers


class ProcessVlmService:
    """Answers crops with a model that lives in a child process (see the module doc)."""

    def __init__(self, cfg: VlmConfig, info: ModelInfo, log_path: Path | None = None) -> None:
        context = multiprocessing.get_context("spawn")  # CUDA cannot be forked
        self._requests = context.Queue(maxsize=cfg.queue_size)
        self._results = context.Queue()
        self._process = context.Process(target=_serve_in_child, name="vlm-worker", daemon=True,
                                        args=(cfg, info, self._requests, self._results,
                                              log_path))
        self._futures: dict[int, Future[list[Answer]]] = {}
        self._ids = itertools.count()
        self._reader = threading.Thread(target=self._read, name="vlm-results", daemon=True)
        self._closed = threading.Event()
        self._refused = 0
        self.info: ModelInfo | None = None
        self._summaries: dict[str, Any] = {"service": {}, "stage": {}}

    def start(self) -> ProcessVlmService:
        """Start the child and wait until its model is loaded; a failure raises here."""
        self._process.start()
        try:
            kind, payload = self._results.get(timeout=START_TIMEOUT_S)
        except queue.Empty:
            self._process.kill()
            raise ModelError(f"the VLM worker did not load its model within "
                             f"{START_TIMEOUT_S:g} s") from None
        if kind != "ready":
            self._process.join(timeout=10)
            raise payload if isinstance(payload, Exception) else ModelError(str(payload))
        self.info = payload
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
            self._requests.put((request_id, roi, tuple(questions)), block=block,
                               timeout=timeout)
        except queue.Full:
            del self._futures[request_id]
            self._refused += 1
            return None
        return future

    @property
    def waiting(self) -> int:
        try:
            return self._requests.qsize()
        except NotImplementedError:  # macOS has no sem_getvalue
            return 0

    def close(self) -> None:
        """Answer what is queued, collect the child's summaries, stop it (idempotent)."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._requests.put(None)
        self._reader.join(timeout=START_TIMEOUT_S)
        self._process.join(timeout=30)
        if self._process.is_alive():
            self._process.kill()

    def summary(self) -> dict[str, Any]:
        return {**self._summaries["service"], "worker": "process",
                "refused_when_full": self._refused}

    def stage_summary(self) -> dict[str, Any]:
        """The VLM stage's summary (per question: phase, plan, accounting) from the child."""
        return self._summaries["stage"]

    def __enter__(self) -> ProcessVlmService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read(self) -> None:
        while True:
            try:
                kind, *payload = self._results.get(timeout=1.0)
            except queue.Empty:
                if not self._process.is_alive():
                    self._fail_all(ModelError("the VLM worker process died"))
                    return
                continue
            if kind == "closed":
                self._summaries = {"service": payload[0], "stage": payload[1]}
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


def _serve_in_child(cfg: VlmConfig, info: ModelInfo, requests: Any, results: Any,
                    log_path: Path | None) -> None:
    """The child: load the model, run a threaded VlmService, relay requests and answers."""
    from vidqa.assets import load_vlm
    from vidqa.vlm.service import VlmService
    from vidqa.vlm.stage import VlmStage

    if log_path is not None:
        logger.add(log_path, level="INFO", enqueue=False)
    try:
        vlm = load_vlm(cfg, info)
        stage = VlmStage(vlm, cfg)
    except Exception as err:  # reported to the parent, which raises it
        results.put(("failed", _picklable(err)))
        return
    if vlm.device.type == "cpu" and hasattr(os, "nice"):
        # A model on the CPU must not take the cores from the trackers: live cameras keep
        # their frame rate and answers take what is left.
        os.nice(CPU_NICENESS)
    results.put(("ready", vlm.info))
    service = VlmService(stage.answer, cfg.batch_size, cfg.max_wait_ms, cfg.queue_size).start()
    while (item := requests.get()) is not None:
        request_id, roi, questions = item
        future = service.submit(roi, questions, block=True)
        future.add_done_callback(lambda done, rid=request_id: results.put(
            ("answers", rid, _outcome(done))))
    service.close()
    results.put(("closed", service.summary(), stage.summary()))


def _outcome(future: Future) -> list[Answer] | Exception:
    error = future.exception()
    return _picklable(error) if error is not None else future.result()


def _picklable(error: BaseException) -> Exception:
    try:
        pickle.dumps(error)
        return error  # type: ignore[return-value]
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")
