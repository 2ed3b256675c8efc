"""The per-question controller inside the stream: profile, plan, compress, audit.

Phases of one :class:`AdaptiveAnswerer`:

1. ``profile`` — the first K distinct tracks (``profile_tracks``) are answered by the full
   model; their first crops are kept. Once K are in, they are profiled (layer importance) and a
   plan is chosen (``mode``: ``auto`` searches, ``bottom_fraction`` is the seed's rule).
2. ``compressed`` — later ROIs are answered under the plan. Every ``audit_every``-th compressed
   ROI is answered by the full model too and the full answer is the one emitted. When the
   rolling agreement over the last ``audit_window`` audits drops below the target, the question
   re-profiles (seeded with the crops it got wrong) and re-plans; after ``max_replans`` it gives
   up and answers with the full model for good. Every such decision is logged with its reason.
3. ``full`` — the plan compresses nothing (nothing passed, or compression did not pay), or
   the question gave up: full model, no audits.

Text questions (``answer: text``) are never compressed: the guard compares yes/no answers and
p_yes, and free text has no such cheap, reliable agreement measure — exact string matches fail
on harmless rewording and ``generate`` spends its time decoding one token at a time, where a
smaller prefill buys little. They run on the full model (phase ``text``).

The model is only ever compressed inside ``Compressor.using``; outside an ``answer`` call it is
the full model, so several questions (each with its own plan) share one model safely.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np
from loguru import logger

from vidqa.config import AdaptiveConfig, QuestionConfig
from vidqa.messages import Answer, Roi
from vidqa.vlm.answerers import ask, build_answers
from vidqa.vlm.compression.compressor import Compressor, compressor_for
from vidqa.vlm.compression.operators import module_bytes
from vidqa.vlm.compression.plan import Plan
from vidqa.vlm.compression.plan_cache import PlanCache, cache_key_fields
from vidqa.vlm.compression.planner import (
    ForwardEvaluator,
    Search,
    auto_plan,
    bottom_fraction,
    importance_order,
    operator_orders,
)
from vidqa.vlm.model import VisionLanguageModel
from vidqa.vlm.profiling.importance import profile_rois

PROFILE_METRICS = ("activation", "block_influence")


class AdaptiveAnswerer:
    """Answers one question: full model while profiling, then the question's own compressed plan."""

    def __init__(self, vlm: VisionLanguageModel, question: QuestionConfig, cfg: AdaptiveConfig,
                 cache: PlanCache | None = None, max_new_tokens: int = 16,
                 compressor: Compressor | None = None, max_replans: int = 2,
                 profile_batch_size: int = 8) -> None:
        self.vlm = vlm
        self.question = question
        self.cfg = cfg
        self.cache = cache if cache is not None else PlanCache.from_setting(cfg.cache_dir)
        self.max_new_tokens = max_new_tokens
        self.compressor = compressor or compressor_for(vlm.model)
        self.max_replans = max_replans
        self.profile_batch_size = profile_batch_size
        self.plan = Plan.keep_all(self.compressor.paths)
        self.search: dict[str, Any] | None = None
        self.phase = "text" if question.answer == "text" else "profile"
        self.reason = "free-text answers are not compressed" if self.phase == "text" else ""
        self._pending: dict[tuple[str, int], np.ndarray] = {}  # track -> crop to profile
        self._audits: deque[bool] = deque(maxlen=cfg.audit_window)
        self._stats = _Stats()
        self.replans = 0
        self._owner = f"{question.label}@{id(self):x}"  # its pin on the shared compressor
        self._key = cache_key_fields(vlm.info, vlm.device.type, str(vlm.dtype), question.question,
                                     question.answer, cfg,
                                     {"int8_backend": self.compressor.int8_backend})
        if self.phase == "profile":
            self._load_cached()

    # ----------------------------------------------------------------------------- answering

    def answer(self, rois: Sequence[Roi]) -> list[Answer]:
        """Answers for one batch of ROIs, by the phase this question is in."""
        rois = list(rois)
        if not rois:
            return []
        if self.phase == "compressed":
            return self._answer_compressed(rois)
        answers = self._answer_full(rois, self.phase)
        if self.phase == "profile":
            self._collect(rois)
        return answers

    def _answer_full(self, rois: list[Roi], phase: str) -> list[Answer]:
        results, seconds = ask(self.vlm, self.question, rois, self.max_new_tokens)
        self._stats.add("full", seconds, len(rois))
        return build_answers(rois, self.question, results, seconds, self.vlm.info.name,
                             extra={"phase": phase})

    def _answer_compressed(self, rois: list[Roi]) -> list[Answer]:
        with self.compressor.using(self.plan) as applied:
            results, seconds = ask(self.vlm, self.question, rois, self.max_new_tokens)
        self._stats.add("compressed", seconds, len(rois))
        answers = build_answers(rois, self.question, results, seconds, self.vlm.info.name,
                                compressed=True, plan_id=applied.id,
                                extra={"phase": "compressed"})
        audited = self._audit_indices(len(rois))
        if audited:
            answers = self._audit(rois, answers, audited)
        return answers

    def _audit_indices(self, count: int) -> list[int]:
        """Which of the next ``count`` compressed ROIs are every ``audit_every``-th."""
        done, every = self._stats.compressed_rois, self.cfg.audit_every
        self._stats.compressed_rois += count
        return [i for i in range(count) if every and (done + i + 1) % every == 0]

    def _audit(self, rois: list[Roi], answers: list[Answer], indices: list[int]) -> list[Answer]:
        """Answer ``indices`` with the full model too; emit the full answers; maybe re-plan."""
        picked = [rois[i] for i in indices]
        results, seconds = ask(self.vlm, self.question, picked, self.max_new_tokens)
        self._stats.add("audit", seconds, len(picked))
        full = build_answers(picked, self.question, results, seconds, self.vlm.info.name,
                             plan_id=self.plan.id)
        missed = []
        for i, reference in zip(indices, full, strict=True):
            compressed = answers[i]
            agree = reference.answer == compressed.answer
            self._audits.append(agree)
            self._stats.audit_agree.append(agree)
            if not agree:
                missed.append(rois[i])
            answers[i] = dataclasses.replace(reference, extra={
                "phase": "audit", "audit_agree": agree, "compressed_answer": compressed.answer,
                "compressed_p_yes": compressed.p_yes})
        self._check_agreement(missed)
        return answers

    def _check_agreement(self, missed: list[Roi]) -> None:
        rolling = float(np.mean(self._audits))
        if rolling >= self.cfg.target_agreement:
            return
        why = (f"audit agreement {rolling:.0%} over the last {len(self._audits)} audits is below "
               f"the target {self.cfg.target_agreement:.0%}")
        self.cache.delete(self._key)  # a plan the stream disproved must not come back
        if self.replans >= self.max_replans:
            self._become_full(f"{why}; gave up after {self.replans} re-plans")
            return
        self.replans += 1
        logger.warning("question {!r}: {}: re-profiling ({}/{})", self.question.label, why,
                       self.replans, self.max_replans)
        self.phase = "profile"
        self.plan = Plan.keep_all(self.compressor.paths)
        self.compressor.pin(self._owner, None)
        self._audits.clear()
        # The crops the plan got wrong are the most informative ones to profile next.
        self._pending = {roi.key: roi.image for roi in missed[:self.cfg.profile_tracks]}

    def _become_full(self, reason: str) -> None:
        logger.warning("question {!r}: answering with the full model from now on: {}",
                       self.question.label, reason)
        self.phase, self.reason = "full", reason
        self.plan = Plan.keep_all(self.compressor.paths)
        self.compressor.pin(self._owner, None)
        self.compressor.prune()

    # ----------------------------------------------------------------------------- profiling

    def _collect(self, rois: list[Roi]) -> None:
        for roi in rois:
            if len(self._pending) < self.cfg.profile_tracks:
                self._pending.setdefault(roi.key, roi.image)
        if len(self._pending) >= self.cfg.profile_tracks:
            self._profile_and_plan()

    def _profile_and_plan(self) -> None:
        keys = list(self._pending)  # (stream, track): the first K tracks seen in any stream
        images = [self._pending[key] for key in keys]
        track_ids = [track_id for _, track_id in keys]
        self._pending = {}
        start = time.perf_counter()
        profile = self._profile(images, track_ids)
        profiled = time.perf_counter()
        plan, search = self._plan(profile, images)
        self._stats.profile_seconds += profiled - start
        self._stats.plan_seconds += time.perf_counter() - profiled
        self._stats.profiles += 1
        self.search = search
        self._adopt(plan, f"profiled {len(images)} tracks")
        self.cache.put(self._key, {"plan": plan.to_dict(), "search": search,
                                   "profile": _to_dict(profile)})

    def _profile(self, images: list[np.ndarray], track_ids: list[int]) -> Any:
        # task_impact measures each operator's own impact, so auto can order int8 and skip
        # separately (planner.operator_orders); int8's only where an int8 kernel exists.
        wanted = ["task_skip", "task_int8"] if self.cfg.task_impact else []
        if self.cfg.metric.startswith("task_"):
            wanted.insert(0, self.cfg.metric)
        task = tuple(m for m in dict.fromkeys(wanted)
                     if m != "task_int8" or self.compressor.supports("int8"))
        return profile_rois(self.vlm, images, self.question.question, track_ids,
                            metrics=PROFILE_METRICS, task_impact=task,
                            batch_size=self.profile_batch_size)

    def _plan(self, profile: Any, images: list[np.ndarray]) -> tuple[Plan, dict[str, Any]]:
        cfg = self.cfg
        if cfg.mode == "bottom_fraction":
            plan = bottom_fraction(profile, cfg.metric, cfg.fraction, cfg.operator)
            return plan, {"mode": "bottom_fraction", "plan": plan.to_dict()}
        inputs = self.vlm.encode(images, self.question.question)
        evaluate = ForwardEvaluator(self.vlm, self.compressor, inputs)
        search: Search = auto_plan(evaluate, importance_order(profile, cfg.metric),
                                   orders=operator_orders(profile, cfg.metric),
                                   target_agreement=cfg.target_agreement,
                                   max_dp_yes=cfg.max_dp_yes,
                                   int8=self.compressor.supports("int8"))
        logger.info("question {!r}: plan {} — {}", self.question.label, search.plan.id,
                    search.reason)
        return search.plan, {"mode": "auto", **search.to_dict()}

    def _adopt(self, plan: Plan, source: str) -> None:
        """Switch to ``plan``: compressed if it compresses anything here, else full."""
        effective = self.compressor.effective(plan)
        if not effective.compressed:
            self._become_full(f"{source}: the plan compresses nothing ({effective.note})")
            return
        start = time.perf_counter()
        self.compressor.prepare(effective)
        self._stats.build_seconds += time.perf_counter() - start
        self.plan, self.phase, self.reason = effective, "compressed", source
        self.compressor.pin(self._owner, effective)
        self.compressor.prune()  # the search's rejected int8 copies
        self._audits.clear()
        with self.compressor.using(effective):
            self._stats.compressed_bytes = module_bytes(self.vlm.model)
        logger.info("question {!r}: compressing with plan {} {} ({})", self.question.label,
                    effective.id, effective.counts(), source)

    def _load_cached(self) -> None:
        entry = self.cache.get(self._key)
        if entry is None:
            return
        try:
            plan = Plan.from_dict(entry["plan"])
            self.compressor.effective(plan)  # raises if the layers do not match this model
        except (KeyError, ValueError, LookupError) as err:
            logger.warning("question {!r}: cached plan unusable ({}): profiling again",
                           self.question.label, err)
            return
        self.search = entry.get("search")
        self._stats.from_cache = True
        self._adopt(plan, "plan from the profile cache")

    # ----------------------------------------------------------------------------- summary

    def summary(self) -> dict[str, Any]:
        """Profiling overhead, plan, compression ratio, measured speedup, agreement, cache."""
        stats = self._stats
        full_bytes = module_bytes(self.vlm.model)  # outside `using`: the full model
        compressed_bytes = stats.compressed_bytes or full_bytes
        reason = self.reason
        if self.phase == "profile":
            reason = (f"still profiling: {len(self._pending)} of {self.cfg.profile_tracks} "
                      f"tracks collected")
        return {
            "question": self.question.question, "mode": f"adaptive/{self.cfg.mode}",
            "phase": self.phase, "reason": reason, "replans": self.replans,
            "answers": stats.counts(),
            "vlm_rois": sum(stats.counts().values()), "vlm_seconds": round(stats.seconds(), 3),
            "profiling": stats.overhead(),
            "plan": self.plan.summary(), "search": _search_brief(self.search),
            "weight_bytes": {"full": full_bytes, "compressed": compressed_bytes,
                             "ratio": round(full_bytes / compressed_bytes, 3),
                             "int8_copies": self.compressor.cached_bytes()},
            "latency_ms": stats.latency(),
            "agreement": {"profiling": _planned_agreement(self.search),
                          "audit": stats.audit_agreement(), "audits": len(stats.audit_agree),
                          "rolling": round(float(np.mean(self._audits)), 4)
                          if self._audits else None},
            "cache": self.cache.stats(),
        }


class _Stats:
    """Counters and latencies of one question (per-ROI latency of each batch, by kind)."""

    def __init__(self) -> None:
        self.batches: dict[str, list[tuple[float, int]]] = {"full": [], "compressed": [],
                                                            "audit": []}
        self.compressed_rois = 0
        self.audit_agree: list[bool] = []
        self.profile_seconds = self.plan_seconds = self.build_seconds = 0.0
        self.profiles = 0
        self.from_cache = False
        self.compressed_bytes = 0

    def add(self, kind: str, seconds: float, rois: int) -> None:
        self.batches[kind].append((seconds, rois))

    def counts(self) -> dict[str, int]:
        return {kind: sum(n for _, n in batches) for kind, batches in self.batches.items()}

    def seconds(self) -> float:
        return sum(s for batches in self.batches.values() for s, _ in batches)

    def overhead(self) -> dict[str, Any]:
        extra = self.profile_seconds + self.plan_seconds + self.build_seconds
        total = self.seconds() + extra
        return {"runs": self.profiles, "from_cache": self.from_cache,
                "profile_s": round(self.profile_seconds, 3), "plan_s": round(self.plan_seconds, 3),
                "int8_build_s": round(self.build_seconds, 3), "overhead_s": round(extra, 3),
                "share": round(extra / total, 4) if total else None}

    def latency(self) -> dict[str, Any]:
        """Mean and median ms per ROI of full and compressed batches, and their ratio.

        The first batch of each kind is left out: it pays one-off allocations (warm-up) and
        would flatter whichever kind ran first. Audits run on a few ROIs at a time, a
        different batch size, so they are reported but not used for the speedup.
        """
        out: dict[str, Any] = {}
        for kind, batches in self.batches.items():
            per_roi = [1000 * s / n for s, n in batches[1:]] or \
                      [1000 * s / n for s, n in batches]
            out[f"{kind}_mean"] = round(statistics.fmean(per_roi), 2) if per_roi else None
            out[f"{kind}_median"] = round(statistics.median(per_roi), 2) if per_roi else None
        for name in ("mean", "median"):  # the median resists batches slowed by a busy host
            full, compressed = out[f"full_{name}"], out[f"compressed_{name}"]
            key = "speedup" if name == "mean" else "speedup_median"
            out[key] = round(full / compressed, 3) if full and compressed else None
        return out

    def audit_agreement(self) -> float | None:
        return round(float(np.mean(self.audit_agree)), 4) if self.audit_agree else None


def _to_dict(profile: Any) -> dict[str, Any] | None:
    return profile.to_dict() if hasattr(profile, "to_dict") else None


def _search_brief(search: dict[str, Any] | None) -> dict[str, Any] | None:
    if not search:
        return None
    return {k: v for k, v in search.items() if k != "plan"}


def _planned_agreement(search: dict[str, Any] | None) -> float | None:
    """Agreement of the chosen plan on the profiled ROIs, from the search's trials."""
    if not search or "trials" not in search:
        return None
    chosen = search["plan"]["id"]
    found = [t["agreement"] for t in search["trials"] if t["plan_id"] == chosen]
    return found[0] if found else (1.0 if chosen == "full" else None)
