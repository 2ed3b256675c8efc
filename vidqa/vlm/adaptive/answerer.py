"""The per-question controller inside the stream: profile, plan only if it pays, compress, audit.

Phases of one :class:`AdaptiveAnswerer`:

1. ``profile`` — the first K distinct tracks (``profile_tracks``, from any stream) are answered
   by the full model, and those very passes are the profile: hooks read block influence and
   each layer's time (:mod:`vidqa.vlm.profiling.stream`); no extra forward pass.
2. plan — candidates are ranked from what profiling measured (saving from layer times, risk
   from block influence; :mod:`vidqa.vlm.compression.payoff`). Before each confirmation the
   planner prices it against what the plan can return on the ROIs still to come
   (:meth:`AdaptiveAnswerer.expect`, the rate of new ROIs, the live horizon) and stops when it
   cannot pay back; at most ``confirm`` candidates are confirmed, by re-running the profiled
   batches under the plan (paired with their full passes). ``mode: static`` skips all of this
   (a fixed plan per model); a cached plan, a plan file (``plan: PATH``) or a borrowed plan
   skip it too.
3. ``compressed`` — answers under the plan. One ROI in ``audit_every`` is audited: whole
   batches are answered both ways (same crops, same batch size: a paired measurement) and the
   full answers are emitted. When the rolling agreement over ``audit_window`` audited ROIs
   drops below the target, the question re-profiles; after ``max_replans`` it keeps the full
   model for good. Every decision is logged with its reason.
4. ``borrow`` — a question with no plan of its own first tries the plan of the nearest cached
   question: its first K tracks are answered full (and profiled) and compressed, and the
   borrowed plan is kept only if it agreed on those held-out tracks.
5. ``full`` — nothing pays, nothing passed, or the question gave up: full model, no audits.

Text questions (``answer: text``) are never compressed (phase ``text``): free text has no
cheap, reliable agreement check.

The model is only ever compressed inside ``Compressor.using`` (or runs a plan's own compiled
module); outside an ``answer`` call it is the full model, so questions with different plans
share one model safely.
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np
from loguru import logger

from vidqa.config import AdaptiveConfig, QuestionConfig
from vidqa.messages import Answer, Roi
from vidqa.vlm.answerers import Asked, SharedVision, ask, build_answers
from vidqa.vlm.compression.accounting import Ledger
from vidqa.vlm.compression.compiled import CompiledPlans
from vidqa.vlm.compression.compressor import Compressor, compressor_for
from vidqa.vlm.compression.operators import module_bytes
from vidqa.vlm.compression.payoff import (
    Candidate,
    RoiForecast,
    candidates,
    expected_return,
    expected_value,
    next_candidate,
    static_plan,
)
from vidqa.vlm.compression.plan import Plan, tower_of
from vidqa.vlm.compression.plan_cache import PlanCache, cache_key_fields
from vidqa.vlm.compression.plan_library import LibraryPlan, find, nearest
from vidqa.vlm.compression.planner import bottom_fraction, compare
from vidqa.vlm.model import VisionLanguageModel
from vidqa.vlm.profiling.stream import ProfiledBatch, StreamProfile, new_stream_profile

BUILD_S_PER_LAYER = 0.05  # prior cost of one int8 copy until one is measured
COMPILE_S = 30.0  # prior cost of compiling one plan's graph (24-48 s for the 256M shape, H200)


class AdaptiveAnswerer:
    """Answers one question: full model while profiling, then its own plan if it pays."""

    def __init__(self, vlm: VisionLanguageModel, question: QuestionConfig, cfg: AdaptiveConfig,
                 cache: PlanCache | None = None, max_new_tokens: int = 16,
                 compressor: Compressor | None = None, max_replans: int = 2,
                 library: Sequence[LibraryPlan] = (), compiled: CompiledPlans | None = None
                 ) -> None:
        self.vlm = vlm
        self.question = question
        self.cfg = cfg
        self.cache = cache if cache is not None else PlanCache.from_setting(cfg.cache_dir)
        self.max_new_tokens = max_new_tokens
        self.compressor = compressor or compressor_for(vlm.model)
        self.compiled = compiled
        self.max_replans = max_replans
        self.plan = Plan.keep_all(self.compressor.paths)
        self.plan_source = "none"
        self.search: dict[str, Any] | None = None
        self.ledger = Ledger()
        self.forecast = RoiForecast(cfg.horizon_s)
        self.phase = "text" if question.answer == "text" else "profile"
        self.reason = "free-text answers are not compressed" if self.phase == "text" else ""
        self.replans = 0
        self._trace: StreamProfile = new_stream_profile(vlm)
        self._tracks: set[tuple[str, int]] = set()  # tracks seen while profiling / borrowing
        self._borrowed: tuple[Plan, str, float] | None = None  # plan, its question, similarity
        self._borrow_checks: list[tuple[np.ndarray, np.ndarray]] = []  # (full, borrowed) margins
        self._audits: deque[bool] = deque(maxlen=cfg.audit_window)
        self._audit_agree: list[bool] = []
        self._compressed_bytes = 0
        self._build_s_per_layer = BUILD_S_PER_LAYER
        self._compile_s = COMPILE_S
        self._owner = f"{question.label}@{id(self):x}"  # its pin on the shared compressor
        self._key = cache_key_fields(vlm.info, vlm.device.type, str(vlm.dtype), question.question,
                                     question.answer, cfg,
                                     {"int8_backend": self.compressor.int8_backend})
        if self.phase == "profile":
            self._start(library)

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
            self._try_borrow(library)

    # ----------------------------------------------------------------------------- the stream

    def expect(self, rois: int | None = None, seconds: float | None = None) -> None:
        """Announce what is still to come — ``rois`` ROIs, or ``seconds`` of stream (a file's
        remaining length) — so planning never spends more than the plan can return."""
        self.forecast.expect(rois, seconds)

    def answer(self, rois: Sequence[Roi], shared: SharedVision | None = None) -> list[Answer]:
        """Answers for one batch of ROIs, by the phase this question is in."""
        rois = list(rois)
        if not rois:
            return []
        for roi in rois:
            self.forecast.observe(roi.stream_id, roi.time_s)
        if self.phase == "compressed":
            return self._answer_compressed(rois, shared)
        if self.phase == "borrow":
            return self._answer_borrow(rois, shared)
        if self.phase == "profile":
            return self._answer_profile(rois, shared)
        asked = self._ask_full(rois, shared)
        self.ledger.add("full", asked.seconds, len(rois))
        return self._answers(rois, asked, phase=self.phase)

    def _answers(self, rois: list[Roi], asked: Asked, phase: str, plan: Plan | None = None
                 ) -> list[Answer]:
        return build_answers(rois, self.question, asked.results, asked.seconds,
                             self.vlm.info.name, compressed=plan is not None,
                             plan_id=None if plan is None else plan.id, extra={"phase": phase})

    def _answer_profile(self, rois: list[Roi], shared: SharedVision | None) -> list[Answer]:
        asked = self._traced(rois, shared)
        answers = self._answers(rois, asked, phase="profile")
        if len(self._tracks) >= self.cfg.profile_tracks:
            self._plan_from_stream()
        return answers

    def _traced(self, rois: list[Roi], shared: SharedVision | None) -> Asked:
        """The full model on a batch, profiled; the batch is kept for confirmations."""
        asked = ask(self.vlm, self.question, rois, self.max_new_tokens, shared,
                    trace=self._trace)
        hooks = min(self._trace.hook_s, asked.seconds)  # profiling's own share of the pass
        self.ledger.add("full", asked.seconds - hooks, len(rois))
        self.ledger.add("profile", hooks)
        margins = np.asarray([r.margin for r in asked.results])
        self._trace.batches.append(ProfiledBatch(rois, asked.standalone_s - hooks, margins))
        self._tracks.update(roi.key for roi in rois)
        return asked

    def _ask_full(self, rois: list[Roi], shared: SharedVision | None) -> Asked:
        """The full model on a batch: compiled like the plans when compiling (fair pairs)."""
        if self.compiled is not None and self.question.answer == "yesno":
            return self._ask_plan(rois, Plan.keep_all(self.compressor.paths), shared)
        return ask(self.vlm, self.question, rois, self.max_new_tokens, shared)

    def _ask_plan(self, rois: list[Roi], plan: Plan, shared: SharedVision | None) -> Asked:
        """A batch under ``plan``: its compiled module, or its layers swapped in and back."""
        key = _vision_key(plan)
        if self.compiled is not None:
            asked = ask(self.vlm, self.question, rois, self.max_new_tokens, shared, key,
                        body=self.compiled.body(plan))
            self.compiled.mark_built(plan)
            return asked
        with self.compressor.using(plan):
            return ask(self.vlm, self.question, rois, self.max_new_tokens, shared, key)

    # ----------------------------------------------------------------------------- compressed

    def _answer_compressed(self, rois: list[Roi], shared: SharedVision | None) -> list[Answer]:
        n = len(rois)
        audited = self._audit_due(n)
        compressed = self._ask_plan(rois, self.plan, shared)
        answers = self._answers(rois, compressed, "compressed", self.plan)
        if not audited:
            self.ledger.add("compressed", compressed.seconds, n)
            return answers
        full = self._ask_full(rois, shared)
        self.ledger.add("audit_compressed", compressed.seconds, n)
        self.ledger.add("audit", full.seconds, n)
        self.ledger.pair(full.standalone_s, compressed.standalone_s, n, "audit")
        return self._audit(rois, answers, full)

    def _audit_due(self, count: int) -> bool:
        """Audit this whole batch when audited ROIs would fall below 1 in ``audit_every``."""
        every = self.cfg.audit_every
        answered = self.ledger.rois["compressed"] + self.ledger.rois["audit_compressed"]
        return bool(every) and self.ledger.rois["audit"] < (answered + count) / every

    def _audit(self, rois: list[Roi], answers: list[Answer], full: Asked) -> list[Answer]:
        """Emit the full answers of an audited batch, each marked with its agreement."""
        reference = self._answers(rois, full, "audit")
        out = []
        for compressed, ref in zip(answers, reference, strict=True):
            agree = ref.answer == compressed.answer
            self._audits.append(agree)
            self._audit_agree.append(agree)
            out.append(dataclasses.replace(ref, plan_id=self.plan.id, extra={
                "phase": "audit", "audit_agree": agree, "compressed_answer": compressed.answer,
                "compressed_p_yes": compressed.p_yes}))
        self._check_agreement()
        return out

    def _check_agreement(self) -> None:
        rolling = float(np.mean(self._audits))
        if rolling >= self.cfg.target_agreement:
            return
        why = (f"audit agreement {rolling:.0%} over the last {len(self._audits)} audited ROIs "
               f"is below the target {self.cfg.target_agreement:.0%}")
        self.cache.delete(self._key)  # a plan the stream disproved must not come back
        if self.replans >= self.max_replans or self.cfg.mode == "static":
            self._become_full(f"{why}; gave up after {self.replans} re-plans")
            return
        self.replans += 1
        logger.warning("question {!r}: {}: re-profiling ({}/{})", self.question.label, why,
                       self.replans, self.max_replans)
        self.phase = "profile"
        self.plan = Plan.keep_all(self.compressor.paths)
        self.compressor.pin(self._owner, None)
        self._audits.clear()
        self._trace, self._tracks = new_stream_profile(self.vlm), set()

    def _become_full(self, reason: str) -> None:
        logger.warning("question {!r}: answering with the full model from now on: {}",
                       self.question.label, reason)
        self.phase, self.reason = "full", reason
        self.plan = Plan.keep_all(self.compressor.paths)
        self.compressor.pin(self._owner, None)
        self.compressor.prune()

    # ----------------------------------------------------------------------------- planning

    def _plan_from_stream(self) -> None:
        """Rank candidates from the profiled answers; confirm only what can pay back."""
        profile = self._trace.profile(self.question.question, self.vlm.info.name)
        if self.cfg.mode == "bottom_fraction":
            plan = bottom_fraction(profile, self.cfg.metric, self.cfg.fraction,
                                   self.cfg.operator)
            self.search = {"mode": "bottom_fraction"}
            self._adopt(plan, f"profiled {len(self._tracks)} tracks", "profiled")
            self._store(profile)
            return
        ranked = self._ranked(profile)
        remaining, how = self.forecast.remaining()
        full_per_roi = self._trace.seconds / max(self._trace.rois, 1)
        trials, rejected, tried, chosen, stop = [], [], [], None, ""
        for _ in range(self.cfg.confirm):
            candidate = self._worth_confirming(ranked, rejected, tried, remaining,
                                               full_per_roi)
            if candidate is None:
                stop = self._why_not(ranked, rejected, remaining, how, full_per_roi)
                break
            trial = self._confirm(candidate, full_per_roi, remaining)
            trials.append(trial)
            if trial["accepted"]:
                chosen = candidate
                break
            (tried if trial["kept_answers"] else rejected).append(candidate)
            stop = trial["why"]
        self.search = {"mode": "auto", "remaining_rois": round(remaining, 1), "forecast": how,
                       "full_per_roi_s": round(full_per_roi, 4),
                       "ranked": [c.to_dict() for c in ranked[:8]], "trials": trials,
                       "stopped": "" if chosen else stop}
        if chosen is None:
            self._become_full(f"profiled {len(self._tracks)} tracks; {stop}")
            if trials and not any(t["kept_answers"] for t in trials) and \
                    next_candidate(ranked, rejected) is None:
                self._store(profile)  # every candidate, down to the safest, changed answers
            return
        self._adopt(chosen.plan, f"profiled {len(self._tracks)} tracks, confirmed "
                    f"{len(trials)} candidate(s)", "profiled")
        self._store(profile)

    def _worth_confirming(self, ranked: list[Candidate], rejected: list[Candidate],
                          tried: list[Candidate], remaining: float, full_per_roi: float
                          ) -> Candidate | None:
        """The best-ranked untried candidate (expected saving, ``est_saving * p_pass``: the
        safe plan first) whose expected value is positive and whose confirmation, added to
        the planning so far, stays below what it can return: never more planning than the
        ROIs still to come can pay back."""
        def returns(c: Candidate) -> float:
            return expected_return(remaining, full_per_roi, c.est_saving, self.cfg.audit_every)

        viable = [c for c in ranked if
                  expected_value(c, returns(c), self._confirm_cost(c)) > 0 and
                  self.ledger.planning_s + self._confirm_cost(c) < returns(c)]
        return next_candidate(viable, rejected, tried)

    def _why_not(self, ranked: list[Candidate], rejected: list[Candidate], remaining: float,
                 how: str, full_per_roi: float) -> str:
        if not ranked:
            return "no candidate saves time"
        best = ranked[0]
        payback = expected_return(remaining, full_per_roi, best.est_saving,
                                  self.cfg.audit_every)
        tail = f"; {len(rejected)} candidate(s) rejected" if rejected else ""
        return (f"no candidate left that can pay back (best ranked, {best.label}, would cost "
                f"~{self._confirm_cost(best):.1f} s to confirm and can return "
                f"~{max(payback, 0):.1f} s on ~{remaining:.0f} ROIs still to come if it "
                f"passes, p_pass ~{best.p_pass:.2f}: {how}){tail}")

    def _ranked(self, profile: Any) -> list[Candidate]:
        metric = self.cfg.metric
        if metric.startswith("task_") or self.cfg.task_impact:
            profile = self._task_profile(metric if metric.startswith("task_") else "task_skip")
        influence = profile.mean(metric if metric in profile.scores else "block_influence")
        return candidates(self.compressor.paths, influence,
                          self._trace.layer_seconds_per_roi(),
                          self._trace.seconds / max(self._trace.rois, 1),
                          self.compressor.supports("int8"))

    def _task_profile(self, metric: str) -> Any:
        """Task impact on the profiled tracks' first crops: extra passes, paid as planning."""
        from vidqa.vlm.profiling.importance import profile_rois

        first: dict[tuple[str, int], Roi] = {}
        for batch in self._trace.batches:
            for roi in batch.rois:
                first.setdefault(roi.key, roi)
        start = time.perf_counter()
        profile = profile_rois(self.vlm, [r.image for r in first.values()],
                               self.question.question, [r.track_id for r in first.values()],
                               task_impact=(metric,))
        self.ledger.add("profile", time.perf_counter() - start)
        return profile

    def _confirm_cost(self, candidate: Candidate) -> float:
        """A compressed pass over the profiled batches, its int8 copies and, when compiling,
        each graph (the candidate's, the full model's) not compiled yet."""
        int8 = len(candidate.plan.paths("int8"))
        graphs = 0 if self.compiled is None else sum(
            not self.compiled.built(plan)
            for plan in (candidate.plan, Plan.keep_all(self.compressor.paths)))
        return self._trace.seconds * (1 - candidate.est_saving) + \
            int8 * self._build_s_per_layer + graphs * self._compile_s

    def _confirm(self, candidate: Candidate, full_per_roi: float, remaining: float
                 ) -> dict[str, Any]:
        """Re-run the profiled batches under ``candidate``: agreement and paired time. Stops
        at the first batch after which the target can no longer be met."""
        self._build(candidate.plan)
        self._compile_graphs(candidate.plan, self._trace.batches[0].rois)
        compressed_s, full_s, margins = 0.0, 0.0, []
        for batch in self._trace.batches:
            if margins and self._target_out_of_reach(margins):
                break
            asked = self._ask_plan(batch.rois, candidate.plan, None)
            self.ledger.add("confirm", asked.seconds)
            reference_s = batch.seconds
            if self.compiled is not None:  # the traced pass ran eager: time the compiled full
                full = self._ask_plan(batch.rois, Plan.keep_all(self.compressor.paths), None)
                self.ledger.add("confirm", full.seconds)
                reference_s = full.standalone_s
            self.ledger.pair(reference_s, asked.standalone_s, len(batch.rois), "profile")
            compressed_s, full_s = compressed_s + asked.standalone_s, full_s + reference_s
            margins.append(np.asarray([r.margin for r in asked.results]))
        reference = np.concatenate([b.margins for b in self._trace.batches[:len(margins)]])
        agreement, dp = compare(np.concatenate(margins), reference)
        saving = 1 - compressed_s / full_s if full_s else 0.0
        payback = expected_return(remaining, full_per_roi, saving, self.cfg.audit_every)
        checked = len(margins)
        ok = kept = agreement >= self.cfg.target_agreement and dp <= self.cfg.max_dp_yes
        why = "" if ok else (f"{candidate.label}: agreement {agreement:.0%}, |dp| {dp:.3f} "
                             f"on {checked} of {len(self._trace.batches)} profiled batches")
        if ok and payback <= 0:
            ok, why = False, f"{candidate.label}: measured saving {saving:.0%} does not pay " \
                             f"for its audits"
        logger.info("question {!r}: candidate {}: agreement {:.0%}, |dp| {:.3f}, paired saving "
                    "{:.0%} -> {}", self.question.label, candidate.label, agreement, dp,
                    saving, "accepted" if ok else "rejected")
        return {**candidate.to_dict(), "agreement": round(agreement, 4),
                "mean_dp_yes": round(dp, 5), "saving": round(saving, 4), "accepted": ok,
                "kept_answers": kept, "batches_checked": checked, "why": why}

    def _target_out_of_reach(self, margins: list[np.ndarray]) -> bool:
        """Whether the batches confirmed so far already rule the candidate out: more
        disagreements, or more summed |dp|, than the whole profiled set may hold."""
        total = self._trace.rois
        reference = np.concatenate([b.margins for b in self._trace.batches[:len(margins)]])
        done = np.concatenate(margins)
        agreement, dp = compare(done, reference)
        disagree = (1 - agreement) * done.size
        return disagree > (1 - self.cfg.target_agreement) * total + 1e-9 or \
            dp * done.size > self.cfg.max_dp_yes * total

    def _compile_graphs(self, plan: Plan, rois: list[Roi]) -> None:
        """Compile ``plan``'s graph and the full model's on one profiled batch before the
        paired passes: compiling is building a plan (booked as ``build``), not answering, and
        what it cost prices the next candidate."""
        if self.compiled is None:
            return
        for graph in (plan, Plan.keep_all(self.compressor.paths)):
            if self.compiled.built(graph):
                continue
            self._compile_s = self._ask_plan(rois, graph, None).seconds
            self.ledger.add("build", self._compile_s)

    def _build(self, plan: Plan) -> None:
        """Build ``plan``'s int8 copies, timed as planning; learns the per-layer build cost."""
        missing = len(plan.paths("int8"))
        start = time.perf_counter()
        self.compressor.prepare(plan)
        seconds = time.perf_counter() - start
        self.ledger.add("build", seconds)
        if missing and seconds > 0.01:
            self._build_s_per_layer = seconds / missing

    # ----------------------------------------------------------------------------- borrowing

    def _try_borrow(self, library: Sequence[LibraryPlan]) -> None:
        """Find the nearest cached (or library) question's plan to check on held-out tracks."""
        others = {e["key"]["question"]: e for e in self.cache.neighbours(self._key)
                  if "plan" in e and e.get("accepted", True)}
        others.update({entry.question: {"plan": entry.plan.to_dict()} for entry in library})
        best = nearest(self.question.question, others)
        if best is None or best[1] <= 0:
            return
        try:
            plan = self.compressor.effective(Plan.from_dict(others[best[0]]["plan"]))
        except (KeyError, ValueError, LookupError):
            return
        if plan.compressed:
            self._borrowed = (plan, best[0], best[1])
            self.phase = "borrow"
            logger.info("question {!r}: trying the plan of {!r} (similarity {:.2f}) on its "
                        "first {} tracks", self.question.label, best[0], best[1],
                        self.cfg.profile_tracks)

    def _answer_borrow(self, rois: list[Roi], shared: SharedVision | None) -> list[Answer]:
        """Full answers (profiled too), and the borrowed plan on the same batch, compared."""
        plan = self._borrowed[0]
        if not self._trace.batches:
            self._build(plan)
        full = self._traced(rois, shared)
        borrowed = self._ask_plan(rois, plan, shared)
        self.ledger.add("borrow", borrowed.seconds)
        self.ledger.pair(full.standalone_s, borrowed.standalone_s, len(rois), "profile")
        self._borrow_checks.append((np.asarray([r.margin for r in full.results]),
                                    np.asarray([r.margin for r in borrowed.results])))
        answers = self._answers(rois, full, "borrow")
        if len(self._tracks) >= self.cfg.profile_tracks:
            self._settle_borrow()
        return answers

    def _settle_borrow(self) -> None:
        plan, source, similarity = self._borrowed
        full = np.concatenate([f for f, _ in self._borrow_checks])
        borrowed = np.concatenate([b for _, b in self._borrow_checks])
        agreement, dp = compare(borrowed, full)
        self.search = {"mode": "borrow", "from": source, "similarity": round(similarity, 3),
                       "held_out_rois": int(full.size), "agreement": round(agreement, 4),
                       "mean_dp_yes": round(dp, 5)}
        if agreement >= self.cfg.target_agreement and dp <= self.cfg.max_dp_yes:
            self._adopt(plan, f"borrowed from {source!r}: agreement {agreement:.0%} on "
                        f"{full.size} held-out ROIs", "borrowed")
            self._store(self._trace.profile(self.question.question, self.vlm.info.name))
            return
        logger.info("question {!r}: borrowed plan of {!r} agreed {:.0%} (|dp| {:.3f}): "
                    "planning its own", self.question.label, source, agreement, dp)
        self.phase = "profile"
        self._plan_from_stream()

    # ----------------------------------------------------------------------------- plans

    def _adopt(self, plan: Plan, reason: str, source: str) -> None:
        """Switch to ``plan``: compressed if it compresses anything here, else full."""
        effective = self.compressor.effective(plan)
        if not effective.compressed:
            self._become_full(f"{reason}: the plan compresses nothing ({effective.note})")
            return
        self._build(effective)
        self.plan, self.phase, self.reason = effective, "compressed", reason
        self.plan_source = source
        self.compressor.pin(self._owner, effective)
        self.compressor.prune()  # the rejected candidates' int8 copies
        self._audits.clear()
        with self.compressor.using(effective):
            self._compressed_bytes = module_bytes(self.vlm.model)
        logger.info("question {!r}: compressing with plan {} {} ({})", self.question.label,
                    effective.id, effective.counts(), reason)

    def _store(self, profile: Any) -> None:
        self.cache.put(self._key, {"plan": self.plan.to_dict(), "search": self.search,
                                   "accepted": self.plan.compressed,
                                   "planning_s": round(self.ledger.planning_s, 3),
                                   "profile": profile.to_dict()})

    def _load_cached(self) -> bool:
        entry = self.cache.get(self._key)
        if entry is None:
            return False
        try:
            plan = Plan.from_dict(entry["plan"])
            self.compressor.effective(plan)  # raises if the layers do not match this model
        except (KeyError, ValueError, LookupError) as err:
            logger.warning("question {!r}: cached plan unusable ({}): profiling again",
                           self.question.label, err)
            return False
        self.search = entry.get("search")
        self.ledger.cache_saved_s = float(entry.get("planning_s", 0.0))
        if not plan.compressed:
            self._become_full("the plan cache says no plan keeps this question's answers")
            self.plan_source = "cache"
            return True
        self._adopt(plan, "plan from the profile cache", "cache")
        return True

    # ----------------------------------------------------------------------------- summary

    def summary(self) -> dict[str, Any]:
        """Accounting, plan and where it came from, agreement, cache."""
        full_bytes = module_bytes(self.vlm.model)  # outside `using`: the full model
        compressed_bytes = self._compressed_bytes or full_bytes
        reason = self.reason
        if self.phase in ("profile", "borrow"):
            reason = (f"still {self.phase}: {len(self._tracks)} of {self.cfg.profile_tracks} "
                      f"tracks seen")
        ledger = self.ledger
        return {
            "question": self.question.question, "mode": f"adaptive/{self.cfg.mode}",
            "phase": self.phase, "reason": reason, "replans": self.replans,
            "plan_source": self.plan_source,
            "answers": dict(ledger.rois),
            "vlm_rois": sum(ledger.rois.values()), "vlm_seconds": round(ledger.vlm_s, 3),
            "accounting": ledger.summary(),
            "plan": self.plan.summary(), "search": self.search,
            "weight_bytes": {"full": full_bytes, "compressed": compressed_bytes,
                             "ratio": round(full_bytes / compressed_bytes, 3),
                             "int8_copies": self.compressor.cached_bytes()},
            "latency_ms": _latency(ledger),
            "agreement": {"audit": _mean(self._audit_agree), "audited_rois": len(self._audit_agree),
                          "rolling": _mean(self._audits)},
            "forecast": {"rois_seen": self.forecast.seen,
                         "rois_per_stream_s": _round(self.forecast.rate(), 3)},
            "cache": {**self.cache.stats(), "saved_s": round(ledger.cache_saved_s, 3)},
        }

    def verdict(self) -> str:
        return self.ledger.verdict(self.question.label)


def _vision_key(plan: Plan) -> str:
    """The vision part of a plan: questions whose plans share it share one vision pass."""
    return Plan({p: op for p, op in plan.ops.items() if tower_of(p) == "vision"}).id


def _latency(ledger: Ledger) -> dict[str, Any]:
    """Mean ms per ROI of each kind (not comparable across kinds: see accounting)."""
    return {f"{kind}_mean": round(1000 * ledger.seconds[kind] / n, 2) if n else None
            for kind, n in ledger.rois.items()}


def _mean(values: Any) -> float | None:
    return round(float(np.mean(list(values))), 4) if len(values) else None


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def plan_offline(vlm: VisionLanguageModel, question: QuestionConfig, rois: Sequence[Roi],
                 cfg: AdaptiveConfig, batch_size: int = 8) -> dict[str, Any]:
    """Plan ``question`` ahead of time on sample crops (``vidqa plan``): the first
    ``cfg.profile_tracks`` tracks are profiled and candidates confirmed as in a stream that
    will last (the plan is for later runs); every later crop is a held-out audit, answered
    both ways. Returns a plan-file entry."""
    cfg = dataclasses.replace(cfg, borrow=False, cache_dir="off", mode="auto",
                              audit_window=max(len(rois), 1))
    answerer = AdaptiveAnswerer(vlm, question, cfg, cache=PlanCache(None))
    answerer.expect(rois=10**6)  # made to be reused: it pays over the runs that load it
    for start in range(0, len(rois), batch_size):
        if answerer.phase != "profile":  # planned as the stream audits; checked on all the rest
            answerer.cfg = dataclasses.replace(cfg, audit_every=1)
        answerer.answer(list(rois[start:start + batch_size]))
    summary = answerer.summary()
    trials = (answerer.search or {}).get("trials", [])
    return {"question": question.question, "plan": answerer.plan.to_dict(),
            "reason": summary["reason"], "phase": summary["phase"],
            "agreement_profiled": next((t["agreement"] for t in trials if t["accepted"]), None),
            "agreement_held_out": summary["agreement"]["audit"],
            "held_out_rois": summary["agreement"]["audited_rois"],
            "paired_ratio": summary["accounting"]["paired_ratio"],
            "planning_s": summary["accounting"]["planning_s"], "rois": len(rois)}
