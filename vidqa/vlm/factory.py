"""Which answerer asks each question: the full model (with CUDA graphs where they apply) or
the adaptive one (with the plan file, compiled plans or every plan's CUDA graphs and, for the
replicas of a fleet, their shared plans). One factory for the local engine and Ray's replicas."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from loguru import logger

from vidqa.config import QuestionConfig, VlmConfig
from vidqa.vlm.answerers import Answerer, FullAnswerer
from vidqa.vlm.model import VisionLanguageModel


class Fleet(Protocol):
    """The replicas of one run that share plans (:mod:`vidqa.engines.fleet_plans`): each
    adaptive answerer gets the fleet's plan cache and the gate that says who profiles."""

    def cache_and_gate(self, cache_dir: str) -> tuple[Any, Any]: ...


def make_answerers(vlm: VisionLanguageModel, cfg: VlmConfig, fleet: Fleet | None = None
                   ) -> list[Answerer]:
    """One answerer per question, for the local engine and Ray's replicas alike: adaptive
    ones share the plan file and compiled plans, and with a ``fleet`` (the replicas of one
    run) its plan cache and gate; full ones run the CUDA graphs where they apply."""
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
    graphs = None if compiled is not None else plan_graphs(vlm, cfg, compressor)
    return [make_answerer(vlm, q, cfg, library, compiled, fleet, graphs)
            for q in cfg.questions]


def plan_graphs(vlm: VisionLanguageModel, cfg: VlmConfig, compressor: Any) -> Any:
    """Every plan's CUDA graphs (:class:`~vidqa.vlm.graphs.PlanGraphs`) beside the full
    model's, when the full model's apply (:func:`cuda_graphs`); None otherwise (eager)."""
    full = cuda_graphs(vlm, cfg)
    if full is None:
        return None
    from vidqa.vlm.compression.compiled import plan_module
    from vidqa.vlm.graphs import CudaGraphs, PlanGraphs

    def capture(plan: Any) -> CudaGraphs:
        effective = compressor.effective(plan)
        compressor.prepare(effective)
        return CudaGraphs(vlm, full.sizes, plan_module(vlm.model, "model", compressor,
                                                       effective))
    return PlanGraphs(full, capture)


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
                  library: Sequence[Any] = (), compiled: Any = None, fleet: Fleet | None = None,
                  graphs: Any = None) -> Answerer:
    """The adaptive answerer when ``vlm.adaptive`` is on, else the full model."""
    adaptive = cfg.adaptive
    if adaptive.enabled and adaptive.mode != "off":
        from vidqa.vlm.adaptive import AdaptiveAnswerer  # the compression machinery loads lazily

        cache, gate = fleet.cache_and_gate(adaptive.cache_dir) if fleet else (None, None)
        return AdaptiveAnswerer(vlm, question, adaptive, cache=cache,
                                max_new_tokens=cfg.max_new_tokens, library=library,
                                compiled=compiled, gate=gate, graphs=graphs)
    return FullAnswerer(vlm, question, cfg.max_new_tokens)


def _library(setting: str, paths: Sequence[str]) -> list[Any]:
    """The plans of ``vlm.adaptive.plan`` (a file or folder), or none for ``auto``."""
    if setting == "auto":
        return []
    from vidqa.vlm.compression.plan_library import load_library

    library = load_library(setting, paths)
    logger.info("plan file {}: {} plan(s) for this model", setting, len(library))
    return library
