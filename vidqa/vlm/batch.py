"""The VLM stage: one answerer per question, run inline (:class:`VlmStage`) or through the
multi-stream service (:class:`ServiceStage`, what a run uses).

The answerer is the seam for the research idea: :class:`~vidqa.vlm.answerers.FullAnswerer` runs
the whole model, :class:`~vidqa.vlm.adaptive.AdaptiveAnswerer` profiles the first tracks of its
question, then compresses and audits. Both have ``answer(rois) -> list[Answer]`` and ``summary()``.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, wait
from typing import Any, Protocol

from loguru import logger

from vidqa.config import QuestionConfig, VlmConfig
from vidqa.messages import Answer, FrameResult, Roi, VideoFrame
from vidqa.vlm.answerers import FullAnswerer, SharedVision
from vidqa.vlm.model import VisionLanguageModel
from vidqa.vlm.service import VlmService, percentile


class Answerer(Protocol):
    question: QuestionConfig

    def answer(self, rois: list[Roi], shared: SharedVision | None = None) -> list[Answer]: ...

    def summary(self) -> dict[str, Any]: ...


class VlmStage:
    """Answers every question about every ROI, ``batch_size`` crops per forward pass.

    When several yes/no questions are asked about the same crops, the crops are prepared once
    and the vision encoder + connector run once per vision plan (:class:`SharedVision`); the
    answers equal those of independent passes.
    """

    def __init__(self, vlm: VisionLanguageModel, cfg: VlmConfig,
                 answerers: list[Answerer] | None = None, share_vision: bool = True) -> None:
        self.vlm = vlm
        self.cfg = cfg
        self.share_vision = share_vision
        self.answerers = answerers if answerers is not None else make_answerers(vlm, cfg)
        self._shared: Counter[str] = Counter()

    def answer(self, rois: Sequence[Roi], questions: Sequence[str] | None = None
               ) -> list[list[Answer]]:
        """Per ROI, its answer to every question (or to those whose text is in
        ``questions``, in the stage's order), ``batch_size`` crops per forward pass."""
        rois = list(rois)
        asked = [a for a in self.answerers
                 if questions is None or a.question.question in questions]
        share = self.share_vision and sum(a.question.answer == "yesno" for a in asked) > 1
        per_roi: list[list[Answer]] = [[] for _ in rois]
        for start in range(0, len(rois), self.cfg.batch_size):
            chunk = rois[start:start + self.cfg.batch_size]
            shared = SharedVision(self.vlm, chunk) if share else None
            for answerer in asked:
                answers = answerer.answer(chunk) if shared is None else \
                    answerer.answer(chunk, shared)
                for offset, answer in enumerate(answers):
                    per_roi[start + offset].append(answer)  # answerers keep the ROIs' order
            if shared is not None:
                self._shared.update(shared.stats)
        return per_roi

    def expect(self, rois: int | None = None, seconds: float | None = None) -> None:
        """What is still to come — ``rois`` ROIs or ``seconds`` of stream (e.g. a file's
        ``frame_count / fps`` at start): adaptive questions plan only what can pay back."""
        for answerer in self.answerers:
            if hasattr(answerer, "expect"):
                answerer.expect(rois, seconds)

    def update(self, result: FrameResult) -> FrameResult:
        if not result.rois:
            return result
        answers = [a for per_roi in self.answer(result.rois) for a in per_roi]
        return dataclasses.replace(result, answers=result.answers + tuple(answers))

    def __call__(self, results: Iterable[FrameResult]) -> Iterator[FrameResult]:
        for result in results:
            yield self.update(result)

    def summary(self) -> dict[str, Any]:
        """Per question its summary (and, for adaptive ones, the accounting verdict logged)."""
        for answerer in self.answerers:
            if hasattr(answerer, "verdict"):
                logger.info(answerer.verdict())
        return {"model": self.vlm.info.name, "standin": self.vlm.info.standin,
                "encode_s": round(self.vlm.encode_seconds, 3),
                "weight_bytes": self.vlm.weight_bytes(),
                "cuda_graphs": self.vlm.graphs.summary() if self.vlm.graphs else None,
                "vision_reuse": {"features_computed": self._shared["computed"],
                                 "features_reused": self._shared["reused"]},
                "questions": [answerer.summary() for answerer in self.answerers]}


def make_answerers(vlm: VisionLanguageModel, cfg: VlmConfig) -> list[Answerer]:
    """One answerer per question; adaptive ones share the plan file and compiled plans."""
    adaptive = cfg.adaptive
    on = adaptive.enabled and adaptive.mode != "off"
    if not on and not adaptive.compile:
        body = cuda_graphs(vlm, cfg)
        return [FullAnswerer(vlm, q, cfg.max_new_tokens, body) for q in cfg.questions]
    from vidqa.vlm.compression.compressor import compressor_for  # compression loads lazily

    compressor = compressor_for(vlm.model)
    compiled = None
    if adaptive.compile:
        from vidqa.vlm.compression.compiled import CompiledPlans
        from vidqa.vlm.compression.plan import Plan

        compiled = CompiledPlans(vlm.model, compressor)
        if not on:  # the full model compiled the same way, for fair comparisons
            body = compiled.body(Plan.keep_all(compressor.paths))
            return [FullAnswerer(vlm, q, cfg.max_new_tokens, body) for q in cfg.questions]
    library = _library(adaptive.plan, compressor.paths)
    return [make_answerer(vlm, q, cfg, library, compiled) for q in cfg.questions]


def cuda_graphs(vlm: VisionLanguageModel, cfg: VlmConfig) -> Any:
    """The model's CUDA graphs (:mod:`vidqa.vlm.graphs`), captured now for every yes/no
    question, when they apply: ``vlm.cuda_graphs``, a CUDA device, one tile per crop. A model
    whose pass cannot be captured runs eager, and says so."""
    prompts = [vlm.prompt(q.question) for q in cfg.questions if q.answer == "yesno"]
    if not (cfg.cuda_graphs and prompts and vlm.device.type == "cuda"
            and not vlm.image_splitting):
        return None
    from vidqa.vlm.graphs import CudaGraphs, buckets

    if vlm.graphs is None or vlm.graphs.sizes[-1] < cfg.batch_size:
        vlm.graphs = CudaGraphs(vlm, buckets(cfg.batch_size))
    try:
        return vlm.graphs.warm(prompts)
    except RuntimeError as err:
        while err.__context__ is not None:  # the capture's own error hides what broke it
            err = err.__context__
        logger.warning("CUDA graphs could not be captured ({}: {}): the model runs eager, "
                       "launch by launch. Set vlm.cuda_graphs: false to skip the attempt.",
                       type(err).__name__, str(err).splitlines()[0])
        vlm.graphs = None
        return None


def make_answerer(vlm: VisionLanguageModel, question: QuestionConfig, cfg: VlmConfig,
                  library: Sequence[Any] = (), compiled: Any = None) -> Answerer:
    """The adaptive answerer when ``vlm.adaptive`` is on, else the full model."""
    adaptive = cfg.adaptive
    if adaptive.enabled and adaptive.mode != "off":
        from vidqa.vlm.adaptive import AdaptiveAnswerer  # the compression machinery loads lazily

        return AdaptiveAnswerer(vlm, question, adaptive, max_new_tokens=cfg.max_new_tokens,
                                library=library, compiled=compiled)
    return FullAnswerer(vlm, question, cfg.max_new_tokens)


def _library(setting: str, paths: Sequence[str]) -> list[Any]:
    """The plans of ``vlm.adaptive.plan`` (a file or folder), or none for ``auto``."""
    if setting == "auto":
        return []
    from vidqa.vlm.compression.plan_library import load_library

    library = load_library(setting, paths)
    logger.info("plan file {}: {} plan(s) for this model", setting, len(library))
    return library


class ServiceStage:
    """The VLM stage of one stream when a :class:`~vidqa.vlm.service.VlmService` answers:
    crops are submitted and the frame moves on; answers attach to the frame they arrive at.

    A file's front half waits when the service's queue is full (nothing is lost). A live
    stream's does not: the crop waits here, one per track, the newest replacing an older one,
    and is submitted on a later frame; a track that ends while waiting is counted as deferred.
    """

    def __init__(self, service: VlmService, questions: Sequence[str], live: bool,
                 stop: threading.Event | None = None) -> None:
        self.service = service
        self.questions = tuple(questions)
        self.live = live
        self.stop = stop or threading.Event()
        self.waiting: dict[int, Roi] = {}  # live, queue full: track -> its newest crop
        self.pending: set[int] = set()  # tracks asked and not answered yet (for the overlay)
        self._submitted: dict[Future, float] = {}  # not yet attached -> when it was submitted
        self._stats: Counter[str] = Counter()
        self._latency_ms: list[float] = []
        self._last_frame: VideoFrame | None = None

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
        for roi in result.rois:
            self._ask(roi)
        return dataclasses.replace(result, answers=result.answers + self._take(result.frame))

    def flush(self, timeout_s: float | None) -> list[Answer]:
        """Wait (at most ``timeout_s``) for the answers still in flight and return them."""
        wait(list(self._submitted), timeout=timeout_s)
        answers = list(self._take(self._last_frame)) if self._last_frame is not None else []
        return answers

    @property
    def in_flight(self) -> int:
        """Crops with the service whose answers have not reached a frame yet."""
        return len(self._submitted)

    def summary(self) -> dict[str, Any]:
        latencies = sorted(self._latency_ms)
        return {"submitted": self._stats["submitted"], "answered": self._stats["answered"],
                "failed": self._stats["failed"], "in_flight": len(self._submitted),
                "queue_full_waits": self._stats["queue_full_waits"],
                "deferred_tracks": self._stats["deferred_tracks"],
                "waiting_at_end": len(self.waiting),
                "latency_ms_p50": percentile(latencies, 50),
                "latency_ms_p95": percentile(latencies, 95)}

    def _ask(self, roi: Roi) -> None:
        if self.live:
            future = self.service.submit(roi, self.questions, block=False)
            if future is None:
                self._stats["queue_full_waits"] += 1
                self.waiting[roi.track_id] = roi  # the newest crop of the track wins
                return
        else:
            future = None
            while future is None and not self.stop.is_set():  # stay responsive to a stop
                future = self.service.submit(roi, self.questions, block=True, timeout=0.5)
            if future is None:
                return
        self._track(future, roi)

    def _retry_waiting(self) -> None:
        for track_id in list(self.waiting):
            roi = self.waiting.pop(track_id)
            future = self.service.submit(roi, self.questions, block=False)
            if future is None:
                self.waiting[track_id] = roi
                return  # still full: the rest wait for a later frame
            self._track(future, roi)

    def _track(self, future: Future, roi: Roi) -> None:
        self._submitted[future] = time.perf_counter()
        self._stats["submitted"] += 1
        self.pending.add(roi.track_id)

    def _take(self, frame: VideoFrame) -> tuple[Answer, ...]:
        """The answers that arrived since the last frame, stamped with this frame."""
        self._last_frame = frame
        now, taken = time.perf_counter(), []
        for future in [f for f in self._submitted if f.done()]:  # in order of submission
            submitted = self._submitted.pop(future)
            if future.exception() is not None:
                self._stats["failed"] += 1
                raise future.exception()
            latency_ms = 1000 * (now - submitted)
            self._latency_ms.append(latency_ms)
            self._stats["answered"] += 1
            for answer in future.result():
                self.pending.discard(answer.track_id)
                taken.append(dataclasses.replace(
                    answer, latency_ms=latency_ms, answered_frame_index=frame.frame_index,
                    answered_time_s=frame.timestamp))
        return tuple(taken)
