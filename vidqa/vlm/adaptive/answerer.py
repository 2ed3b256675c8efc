"""The per-question controller inside the stream: profile, plan only if it pays, compress, audit.

Phases of one :class:`AdaptiveAnswerer`:

1. ``profile`` — the first K distinct tracks (``profile_tracks``, from any stream) are answered
   by the full model, and those very passes are the profile: hooks read block influence and
   each layer's time (:mod:`vidqa.vlm.profiling.stream`); no extra forward pass.
2. plan — candidates are ranked from what profiling measured (saving from layer times, risk
   from block influence; :mod:`vidqa.vlm.compression.payoff`). Before each confirmation the
   planner prices it against what the plan can return on the ROIs still to come
   (:meth:`AdaptiveAnswerer.expect`, the rate of new ROIs, the live horizon; :mod:`.planner`)
   and stops when it cannot pay back; at most ``confirm`` candidates are confirmed, by
   re-running the profiled batches under the plan (paired with their full passes).
   A live stream profiled within its first seconds (everyone in view is a new track at once)
   answers full until the rate of new ROIs is known, then plans.
   ``mode: static`` skips all of this (a fixed plan per model); a cached plan, a plan file
   (``plan: PATH``) or a borrowed plan skip it too.
3. ``compressed`` — answers under the plan. One ROI in ``audit_every`` is audited: whole
   batches are answered both ways (same crops, same batch size: a paired measurement) and the
   full answers are emitted. When the rolling agreement over ``audit_window`` audited ROIs
   drops below the target, the question re-profiles; after ``max_replans`` it keeps the full
   model for good. Every decision is logged with its reason.
4. ``borrow`` — a question with no plan of its own first tries the plan of the nearest cached
   question: its first K tracks are answered full (and profiled) and compressed, and the
   borrowed plan is kept only if it agreed on those held-out tracks.
5. ``full`` — nothing pays, nothing passed, or the question gave up: full model, no audits.
   Candidates that moved the answers are cached as such (a "pending" entry), so the next run
   does not pay to confirm them again.

Text questions (``answer: text``) are never compressed (phase ``text``): free text has no
cheap, reliable agreement check.

The model is only ever compressed inside ``Compressor.using`` (or runs a plan's own compiled
module); outside an ``answer`` call it is the full model, so questions with different plans
share one model safely.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
from loguru import logger

from vidqa.config import AdaptiveConfig, QuestionConfig
from vidqa.messages import Answer, Crop
from vidqa.vlm.adaptive.auditor import Auditor
from vidqa.vlm.adaptive.borrower import Borrower
from vidqa.vlm.adaptive.planner import Planner
from vidqa.vlm.adaptive.runner import PlanRunner
from vidqa.vlm.answerers import Asked, SharedVision
from vidqa.vlm.compression.accounting import Ledger
from vidqa.vlm.compression.compiled import CompiledPlans
from vidqa.vlm.compression.compressor import Compressor, compressor_for
from vidqa.vlm.compression.payoff import BURST_S, CropForecast, static_plan
from vidqa.vlm.compression.plan import Plan
from vidqa.vlm.compression.plan_cache import PlanCache, cache_key_fields
from vidqa.vlm.compression.plan_library import LibraryPlan, find
from vidqa.vlm.graphs import PlanGraphs
from vidqa.vlm.model import VisionLanguageModel, module_bytes
from vidqa.vlm.profiling.stream import ProfiledBatch, StreamProfile, new_stream_profile


class PlanGate(Protocol):
    """Who profiles a question when several answerers (replicas of a fleet) ask it: the one the
    gate lets profile plans; the others answer full until a plan is published."""

    def may_profile(self, key: str) -> bool: ...

    def published(self, key: str) -> bool: ...


class AlwaysProfile:
    """The gate of an answerer alone with its question: it always profiles."""

    def may_profile(self, key: str) -> bool:
        return True

    def published(self, key: str) -> bool:
        return False


class AdaptiveAnswerer:
    """Answers one question: full model while profiling, then its own plan if it pays."""

    def __init__(self, vlm: VisionLanguageModel, question: QuestionConfig, cfg: AdaptiveConfig,
                 cache: PlanCache | None = None, max_new_tokens: int = 16,
                 compressor: Compressor | None = None, max_replans: int = 2,
                 library: Sequence[LibraryPlan] = (), compiled: CompiledPlans | None = None,
                 gate: PlanGate | None = None, graphs: PlanGraphs | None = None) -> None:
        self.vlm = vlm
        self.question = question
        self.cfg = cfg
        self.cache = cache if cache is not None else PlanCache.from_setting(cfg.cache_dir)
        self.compressor = compressor or compressor_for(vlm.model)
        self.gate = gate or AlwaysProfile()
        self.max_replans = max_replans
        self.runner = PlanRunner(vlm, question, self.compressor, max_new_tokens, compiled,
                                 graphs)
        self.ledger = Ledger()
        self.forecast = CropForecast(cfg.horizon_s)
        self.planner = Planner(self.runner, cfg, self.ledger)
        self.auditor = Auditor(cfg, self.ledger)
        self.borrower: Borrower | None = None
        self.plan = self.runner.full_plan
        self.plan_source = "none"
        self.search: dict[str, Any] | None = None
        self.phase = "text" if question.answer == "text" else "profile"
        self.reason = "free-text answers are not compressed" if self.phase == "text" else ""
        self.replans = 0
        self._trace: StreamProfile = new_stream_profile(vlm)
        self._tracks: set[tuple[str, int]] = set()  # tracks seen while profiling / borrowing
        self._waiting = False  # profiled, the plan waits for a forecast of what is to come
        self._compressed_bytes = 0
        self._owner = f"{question.label}@{id(self):x}"  # its pin on the shared compressor
        self._key = cache_key_fields(vlm.info, vlm.device.type, str(vlm.dtype), question.question,
                                     question.answer, cfg,
                                     {"int8_backend": self.compressor.int8_backend})
        self._gate_key = self.cache.key(self._key)
        if self.phase == "profile":
            self._start(library)

    @property
    def compiled(self) -> CompiledPlans | None:
        return self.runner.compiled

    def _start(self, library: Sequence[LibraryPlan]) -> None:
        """Static plan, plan file, plan cache, borrowed plan — or profile."""
        if self.cfg.mode == "static":
            plan = static_plan(self.compressor.paths, self.compressor.supports("int8"))
            self._adopt(plan, "static plan per model, no profiling", "static")
            return
        stored = find(library, self.question.question)
        if stored is not None:
            self.ledger.cache_saved_s = float(stored.checks.get("planning_s", 0.0))
            self._adopt(stored.plan, f"plan file {stored.source}", "plan file")
            return
        if self._load_cached():
            return
        if self.cfg.borrow and self.cfg.mode == "auto":
            self.borrower = Borrower.find(self.cache, self._key, library, self.runner,
                                          self.ledger)
            if self.borrower is not None:
                self.phase = "borrow"

    # ----------------------------------------------------------------------------- the stream

    def expect(self, crops: int | None = None, seconds: float | None = None) -> None:
        """Announce what is still to come — ``crops`` ROIs, or ``seconds`` of stream (a file's
        remaining length) — so planning never spends more than the plan can return."""
        self.forecast.expect(crops, seconds)

    def answer(self, crops: Sequence[Crop], shared: SharedVision | None = None) -> list[Answer]:
        """Answers for one batch of ROIs, by the phase this question is in."""
        crops = list(crops)
        if not crops:
            return []
        for crop in crops:
            self.forecast.observe(crop.stream_id, crop.time_s)
        if self.phase == "compressed":
            return self._answer_compressed(crops, shared)
        if self.phase == "borrow":
            return self._answer_borrow(crops, shared)
        if self.phase == "profile":
            return self._answer_profile(crops, shared)
        return self._answer_full(crops, shared, self.phase)

    def _answer_full(self, crops: list[Crop], shared: SharedVision | None, phase: str
                     ) -> list[Answer]:
        asked = self.runner.full(crops, shared)
        self.ledger.add("full", asked.seconds, len(crops))
        return self.runner.answers(crops, asked, phase=phase)

    def _answer_profile(self, crops: list[Crop], shared: SharedVision | None) -> list[Answer]:
        key = self._gate_key
        if not self.gate.may_profile(key):  # another answerer profiles: full model meanwhile
            answers = self._answer_full(crops, shared, "profile")
            if self.gate.published(key):
                self._load_cached()  # adopts the published plan: compressed from the next batch
            return answers
        if len(self._tracks) >= self.cfg.profile_tracks:  # profiled; waiting for a rate
            answers = self._answer_full(crops, shared, "profile")
        else:
            answers = self.runner.answers(crops, self._traced(crops, shared), phase="profile")
        if len(self._tracks) >= self.cfg.profile_tracks:
            if self.forecast.known() or self.cfg.mode != "auto":  # only auto prices plans
                self._plan_from_stream()
            elif not self._waiting:
                self._waiting = True
                logger.info("question {!r}: {} tracks profiled; planning waits for the rate of "
                            "new ROIs (every stream's first {:g} s is a burst that does not "
                            "count)", self.question.label, len(self._tracks), BURST_S)
        return answers

    def _traced(self, crops: list[Crop], shared: SharedVision | None) -> Asked:
        """The full model on a batch, profiled; the batch is kept for confirmations."""
        asked = self.runner.traced(crops, shared, self._trace)
        hooks = min(self._trace.hook_s, asked.seconds)  # profiling's own share of the pass
        self.ledger.add("full", asked.seconds - hooks, len(crops))
        self.ledger.add("profile", hooks)
        margins = np.asarray([r.margin for r in asked.results])
        self._trace.batches.append(ProfiledBatch(crops, asked.standalone_s - hooks, margins))
        self._tracks.update(crop.key for crop in crops)
        return asked

    def _answer_compressed(self, crops: list[Crop], shared: SharedVision | None) -> list[Answer]:
        n = len(crops)
        audited = self.auditor.due(n)
        compressed = self.runner.plan(crops, self.plan, shared)
        answers = self.runner.answers(crops, compressed, "compressed", self.plan)
        if not audited:
            self.ledger.add("compressed", compressed.seconds, n)
            return answers
        full = self.runner.full(crops, shared)
        self.ledger.add("audit_compressed", compressed.seconds, n)
        self.ledger.add("audit", full.seconds, n)
        self.ledger.pair(full.standalone_s, compressed.standalone_s, n, "audit")
        judged = self.auditor.judge(answers, self.runner.answers(crops, full, "audit"),
                                    self.plan.id)
        if (why := self.auditor.shortfall()) is not None:
            self._replan(why)
        return judged

    def _answer_borrow(self, crops: list[Crop], shared: SharedVision | None) -> list[Answer]:
        """Full answers (profiled too), and the borrowed plan on the same batch, compared."""
        if not self._trace.batches:
            self.planner.build(self.borrower.plan)
        full = self._traced(crops, shared)
        self.borrower.check(crops, full, shared)
        answers = self.runner.answers(crops, full, "borrow")
        if len(self._tracks) >= self.cfg.profile_tracks:
            self._settle_borrow()
        return answers

    # ----------------------------------------------------------------------------- decisions

    def _replan(self, why: str) -> None:
        """The audits disproved the plan: profile again, or give up after ``max_replans``."""
        self.cache.delete(self._key)  # a plan the stream disproved must not come back
        if self.replans >= self.max_replans or self.cfg.mode == "static":
            self._become_full(f"{why}; gave up after {self.replans} re-plans")
            return
        self.replans += 1
        logger.warning("question {!r}: {}: re-profiling ({}/{})", self.question.label, why,
                       self.replans, self.max_replans)
        self.phase = "profile"
        self.plan = self.runner.full_plan
        self.compressor.pin(self._owner, None)
        self.auditor.window.clear()
        self._trace, self._tracks = new_stream_profile(self.vlm), set()

    def _become_full(self, reason: str) -> None:
        logger.warning("question {!r}: answering with the full model from now on: {}",
                       self.question.label, reason)
        self.phase, self.reason = "full", reason
        self.plan = self.runner.full_plan
        self.compressor.pin(self._owner, None)
        self.compressor.prune()

    def _plan_from_stream(self) -> None:
        """Plan from the profiled answers (:class:`~.planner.Planner`) and act on it."""
        self._waiting = False
        profile = self._trace.profile(self.question.question, self.vlm.info.name)
        decision = self.planner.plan(self._trace, profile, len(self._tracks), self.forecast)
        self.search = decision.search
        if decision.plan is None:
            self._become_full(decision.reason)
            if decision.store:
                self._store(profile)
            elif decision.rejected:  # the next run skips what moved the answers this time
                _store_pending(self, decision.rejected)
            return
        self._adopt(decision.plan, decision.reason, "profiled")
        self._store(profile)

    def _settle_borrow(self) -> None:
        kept, self.search, reason = self.borrower.settle(self.cfg)
        if kept:
            self._adopt(self.borrower.plan, reason, "borrowed")
            self._store(self._trace.profile(self.question.question, self.vlm.info.name))
            return
        self.phase = "profile"
        self._plan_from_stream()

    def _adopt(self, plan: Plan, reason: str, source: str) -> None:
        """Switch to ``plan``: compressed if it compresses anything here, else full."""
        effective = self.compressor.effective(plan)
        if not effective.compressed:
            self._become_full(f"{reason}: the plan compresses nothing ({effective.note})")
            return
        self.planner.build(effective)
        self.plan, self.phase, self.reason = effective, "compressed", reason
        self.plan_source = source
        self.compressor.pin(self._owner, effective)
        self.compressor.prune()  # the rejected candidates' int8 copies
        self.auditor.window.clear()
        with self.compressor.using(effective):
            self._compressed_bytes = module_bytes(self.vlm.model)
        logger.info("question {!r}: compressing with plan {} {} ({})", self.question.label,
                    effective.id, effective.counts(), reason)

    # ----------------------------------------------------------------------------- plan cache

    def _store(self, profile: Any) -> None:
        self.cache.put(self._key, {"plan": self.plan.to_dict(), "search": self.search,
                                   "accepted": self.plan.compressed,
                                   "planning_s": round(self.ledger.planning_s, 3),
                                   "profile": profile.to_dict()})

    def _load_cached(self) -> bool:
        """Adopt the cached plan (or verdict) of this question; False: plan it here."""
        return _load_cached(self)

    # ----------------------------------------------------------------------------- summary

    def summary(self) -> dict[str, Any]:
        """Accounting, plan and where it came from, agreement, cache."""
        return _summary(self)

    def verdict(self) -> str:
        return _verdict(self)


def _summary(answerer: AdaptiveAnswerer) -> dict[str, Any]:
    """:meth:`AdaptiveAnswerer.summary`: what the run's summary.json says of the question."""
    full_bytes = module_bytes(answerer.vlm.model)  # outside `using`: the full model
    compressed_bytes = answerer._compressed_bytes or full_bytes
    reason = answerer.reason
    if answerer.phase in ("profile", "borrow"):
        reason = (f"still {answerer.phase}: {len(answerer._tracks)} of "
                  f"{answerer.cfg.profile_tracks} tracks seen")
    ledger = answerer.ledger
    return {
        "question": answerer.question.question, "mode": f"adaptive/{answerer.cfg.mode}",
        "phase": answerer.phase, "reason": reason, "replans": answerer.replans,
        "plan_source": answerer.plan_source,
        "answers": dict(ledger.crops),
        "vlm_crops": sum(ledger.crops.values()), "vlm_seconds": round(ledger.vlm_s, 3),
        "accounting": ledger.summary(),
        "plan": answerer.plan.summary(), "search": answerer.search,
        "weight_bytes": {"full": full_bytes, "compressed": compressed_bytes,
                         "ratio": round(full_bytes / compressed_bytes, 3),
                         "int8_copies": answerer.compressor.cached_bytes()},
        "latency_ms": _latency(ledger),
        "agreement": answerer.auditor.summary(),
        "forecast": {"crops_seen": answerer.forecast.seen,
                     "crops_per_stream_s": _round(answerer.forecast.rate(), 3)},
        "cache": {**answerer.cache.stats(), "saved_s": round(ledger.cache_saved_s, 3)},
        "plan_graphs": answerer.runner.graphs.summary() if answerer.runner.graphs else None,
    }


def _load_cached(answerer: AdaptiveAnswerer) -> bool:
    """:meth:`AdaptiveAnswerer._load_cached`."""
    entry = answerer.cache.get(answerer._key)
    if entry is None:
        return False
    if entry.get("pending"):  # no conclusion yet: plan again, without what was rejected
        _load_pending(answerer, entry)
        return False
    try:
        plan = Plan.from_dict(entry["plan"])
        answerer.compressor.effective(plan)  # raises if the layers do not match this model
    except (KeyError, ValueError, LookupError) as err:
        logger.warning("question {!r}: cached plan unusable ({}): profiling again",
                       answerer.question.label, err)
        return False
    answerer.search = entry.get("search")
    answerer.ledger.cache_saved_s = float(entry.get("planning_s", 0.0))
    if not plan.compressed:
        answerer._become_full("the plan cache says no plan keeps this question's answers")
        answerer.plan_source = "cache"
        return True
    answerer._adopt(plan, "plan from the profile cache", "cache")
    return True


def _verdict(answerer: AdaptiveAnswerer) -> str:
    """The ledger's verdict, with the plan's audits when there were any; a question that
    abstained (kept the full model) says so, and what deciding that cost."""
    audits = answerer.auditor.summary()
    if answerer.phase == "full" and not answerer.ledger.crops["compressed"]:
        s = answerer.ledger.summary()
        return (f"question {answerer.question.label!r}: kept the full model ({answerer.reason}); "
                f"deciding cost {s['planning_s']:.1f} s of {s['spent_s']:.1f} s on the VLM "
                f"(net {s['net_ratio']}x)")
    line = answerer.ledger.verdict(answerer.question.label)
    if not audits["audited_crops"]:
        return line
    return (f"{line}; plan {answerer.plan.id} agreed with the full model on "
            f"{audits['audit']:.1%} of {audits['audited_crops']} audited ROIs")


def _store_pending(answerer: AdaptiveAnswerer, rejected: Sequence[Plan]) -> None:
    """A search without a verdict: the candidates that moved the answers, for the next run."""
    answerer.cache.put(answerer._key, {
        "plan": answerer.plan.to_dict(), "accepted": False, "pending": True,
        "search": answerer.search, "rejected": [plan.to_dict() for plan in rejected],
        "planning_s": round(answerer.ledger.planning_s, 3)})


def _load_pending(answerer: AdaptiveAnswerer, entry: dict[str, Any]) -> None:
    answerer.planner.rejected_before = [Plan.from_dict(p) for p in entry["rejected"]]
    logger.info("question {!r}: the plan cache holds {} candidate(s) that moved the answers "
                "before: not confirmed again", answerer.question.label,
                len(answerer.planner.rejected_before))


def _latency(ledger: Ledger) -> dict[str, Any]:
    """Mean ms per ROI of each kind (not comparable across kinds: see accounting)."""
    return {f"{kind}_mean": round(1000 * ledger.seconds[kind] / n, 2) if n else None
            for kind, n in ledger.crops.items()}


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)
