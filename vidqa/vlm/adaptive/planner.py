"""Planning one question from its profiled answers: rank candidates, confirm only what can pay
back (each confirmation re-runs the profiled batches under the candidate, paired with their full
passes), and build the chosen plan."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from loguru import logger

from vidqa.config import AdaptiveConfig
from vidqa.messages import Crop
from vidqa.vlm.adaptive.runner import PlanRunner
from vidqa.vlm.compression.accounting import Ledger
from vidqa.vlm.compression.orders import bottom_fraction, compare
from vidqa.vlm.compression.payoff import (
    Candidate,
    CropForecast,
    TileOption,
    candidates,
    expected_return,
    expected_value,
    next_candidate,
)
from vidqa.vlm.compression.plan import Plan
from vidqa.vlm.profiling.stream import StreamProfile

BUILD_S_PER_LAYER = 0.05  # prior cost of one int8 copy until one is measured
COMPILE_S = 30.0  # prior cost of compiling one plan's graph (24-48 s for the 256M shape, H200)
CAPTURE_S = 2.0  # prior cost of capturing one plan's CUDA graphs for a bucket


@dataclass
class Decision:
    """What planning concluded: the plan to adopt (None: the full model), the search as the
    summary reports it, why, and whether the outcome is worth caching."""

    plan: Plan | None
    search: dict[str, Any]
    reason: str
    store: bool = True
    trials: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[Plan] = field(default_factory=list)  # candidates that moved the answers


class Planner:
    """Ranks, prices and confirms candidate plans for one question."""

    def __init__(self, runner: PlanRunner, cfg: AdaptiveConfig, ledger: Ledger) -> None:
        self.runner = runner
        self.cfg = cfg
        self.ledger = ledger
        self.rejected_before: list[Plan] = []  # moved the answers in an earlier run (cache)
        self.build_s_per_layer = BUILD_S_PER_LAYER
        self.compile_s = COMPILE_S if runner.compiled is not None else CAPTURE_S

    @property
    def label(self) -> str:
        return self.runner.question.label

    def plan(self, trace: StreamProfile, profile: Any, tracks: int, forecast: CropForecast
             ) -> Decision:
        """Rank candidates from the profiled answers; confirm only what can pay back."""
        if self.cfg.mode == "bottom_fraction":
            plan = bottom_fraction(profile, self.cfg.metric, self.cfg.fraction,
                                   self.cfg.operator)
            return Decision(plan, {"mode": "bottom_fraction"}, f"profiled {tracks} tracks")
        ranked = self._ranked(trace, profile)
        remaining, how = forecast.remaining()
        full_per_crop = trace.seconds / max(trace.crops, 1)
        trials, tried, chosen, stop = [], [], None, ""
        rejected = [c for c in ranked if c.plan in self.rejected_before]  # not confirmed again
        for _ in range(self.cfg.confirm):
            candidate = self._worth_confirming(trace, ranked, rejected, tried, remaining,
                                               full_per_crop)
            if candidate is None:
                stop = self._why_not(trace, ranked, rejected, remaining, how, full_per_crop)
                break
            trial = self._confirm(trace, candidate, full_per_crop, remaining)
            trials.append(trial)
            if trial["accepted"]:
                chosen = candidate
                break
            (tried if trial["kept_answers"] else rejected).append(candidate)
            stop = trial["why"]
        search = {"mode": "auto", "remaining_crops": round(remaining, 1), "forecast": how,
                  "full_per_roi_s": round(full_per_crop, 4),
                  "ranked": [c.to_dict() for c in ranked[:8]], "trials": trials,
                  "stopped": "" if chosen else stop}
        if chosen is None:  # cached only when every candidate, down to the safest, changed answers
            store = bool(trials) and not any(t["kept_answers"] for t in trials) and \
                next_candidate(ranked, rejected) is None
            return Decision(None, search, f"profiled {tracks} tracks; {stop}", store, trials,
                            [c.plan for c in rejected])
        return Decision(chosen.plan, search, f"profiled {tracks} tracks, confirmed "
                        f"{len(trials)} candidate(s)", True, trials)

    def build(self, plan: Plan) -> None:
        """Build ``plan``'s int8 copies (and, on CUDA, capture its graphs for every batch
        bucket), timed as planning; learns the per-layer build cost."""
        missing = len(plan.paths("int8"))
        start = time.perf_counter()
        self.runner.compressor.prepare(plan)
        self._capture(plan)
        seconds = time.perf_counter() - start
        self.ledger.add("build", seconds)
        if missing and seconds > 0.01:
            self.build_s_per_layer = seconds / missing

    def _capture(self, plan: Plan) -> None:
        graphs = self.runner.graphs
        if graphs is None or self.runner.bodies is not graphs or graphs.built(plan):
            return
        body = graphs.body(plan)
        if body is None:
            return
        try:
            body.warm([self.runner.vlm.prompt(self.runner.question.question)], plan.tile)
        except RuntimeError as err:
            graphs.failed(plan, err)
        else:
            graphs.mark_built(plan)

    # ----------------------------------------------------------------------------- ranking

    def _ranked(self, trace: StreamProfile, profile: Any) -> list[Candidate]:
        metric = self.cfg.metric
        if metric.startswith("task_") or self.cfg.task_impact:
            profile = self._task_profile(trace, metric if metric.startswith("task_")
                                         else "task_skip")
        influence = profile.mean(metric if metric in profile.scores else "block_influence")
        compressor = self.runner.compressor
        return candidates(compressor.paths, influence, trace.layer_seconds_per_crop(),
                          trace.seconds / max(trace.crops, 1), compressor.supports("int8"),
                          self.tile_options())

    def tile_options(self) -> list[TileOption]:
        """The smaller tiles of ``tile_scales`` this model takes (single tile per crop only:
        with image splitting a crop is many tiles), with the shares of patches and prompt
        tokens each keeps."""
        vlm = self.runner.vlm
        if vlm.image_splitting or not self.cfg.tile_scales:
            return []
        encoder, prompt = vlm.tiles, vlm.prompt(self.runner.question.question)
        full = encoder.tile
        sizes = {encoder.unit * int(full * scale // encoder.unit) for scale in
                 self.cfg.tile_scales} - {0, full}
        tokens = encoder.prompt_ids(prompt).shape[1]
        return [TileOption(tile, (tile / full) ** 2,
                           encoder.prompt_ids(prompt, tile).shape[1] / tokens)
                for tile in sorted(sizes, reverse=True)]

    def _task_profile(self, trace: StreamProfile, metric: str) -> Any:
        """Task impact on the profiled tracks' first crops: extra passes, paid as planning."""
        from vidqa.vlm.profiling.importance import profile_crops

        first: dict[tuple[str, int], Crop] = {}
        for batch in trace.batches:
            for crop in batch.crops:
                first.setdefault(crop.key, crop)
        start = time.perf_counter()
        profile = profile_crops(self.runner.vlm, [r.image for r in first.values()],
                               self.runner.question.question,
                               [r.track_id for r in first.values()], task_impact=(metric,))
        self.ledger.add("profile", time.perf_counter() - start)
        return profile

    # ----------------------------------------------------------------------------- pricing

    def _worth_confirming(self, trace: StreamProfile, ranked: list[Candidate],
                          rejected: list[Candidate], tried: list[Candidate], remaining: float,
                          full_per_crop: float) -> Candidate | None:
        """The best-ranked untried candidate (expected saving, ``est_saving * p_pass``: the
        safe plan first) whose expected value is positive and whose confirmation, added to
        the planning so far, stays below what it can return: never more planning than the
        ROIs still to come can pay back."""
        def returns(c: Candidate) -> float:
            return expected_return(remaining, full_per_crop, c.est_saving, self.cfg.audit_every)

        viable = [c for c in ranked if
                  expected_value(c, returns(c), self._confirm_cost(trace, c)) > 0 and
                  self.ledger.planning_s + self._confirm_cost(trace, c) < returns(c)]
        return next_candidate(viable, rejected, tried)

    def _why_not(self, trace: StreamProfile, ranked: list[Candidate],
                 rejected: list[Candidate], remaining: float, how: str,
                 full_per_crop: float) -> str:
        left = [c for c in ranked if c not in rejected]
        if not left:
            return "no candidate saves time" if not ranked else \
                f"every candidate moved the answers ({len(rejected)} rejected)"
        best = left[0]
        payback = expected_return(remaining, full_per_crop, best.est_saving,
                                  self.cfg.audit_every)
        tail = f"; {len(rejected)} candidate(s) rejected" if rejected else ""
        return (f"no candidate left that can pay back (best ranked not rejected, {best.label}, "
                f"would cost ~{self._confirm_cost(trace, best):.1f} s to confirm and can return "
                f"~{max(payback, 0):.1f} s on ~{remaining:.0f} ROIs still to come if it "
                f"passes, p_pass ~{best.p_pass:.2f}: {how}){tail}")

    def _confirm_cost(self, trace: StreamProfile, candidate: Candidate) -> float:
        """A compressed pass over the profiled batches, its int8 copies and, when compiling,
        each graph (the candidate's, the full model's) not compiled yet."""
        int8 = len(candidate.plan.paths("int8"))
        bodies = self.runner.bodies
        graphs = 0 if bodies is None else sum(
            not bodies.built(plan) for plan in (candidate.plan, self.runner.full_plan))
        return trace.seconds * (1 - candidate.est_saving) + \
            int8 * self.build_s_per_layer + graphs * self.compile_s

    # ----------------------------------------------------------------------------- confirming

    def _confirm(self, trace: StreamProfile, candidate: Candidate, full_per_crop: float,
                 remaining: float) -> dict[str, Any]:
        """Re-run the profiled batches under ``candidate``: agreement and paired time. Stops
        at the first batch after which the target can no longer be met."""
        self.build(candidate.plan)
        self._compile_graphs(candidate.plan, trace.batches[0].crops)
        compressed_s, full_s, margins = 0.0, 0.0, []
        for batch in trace.batches:
            if margins and self._target_out_of_reach(trace, margins):
                break
            asked = self.runner.plan(batch.crops, candidate.plan, None)
            self.ledger.add("confirm", asked.seconds)
            reference_s = batch.seconds
            if self.runner.bodies is not None:  # the traced pass ran eager: time graphs
                full = self.runner.plan(batch.crops, self.runner.full_plan, None)
                self.ledger.add("confirm", full.seconds)
                reference_s = full.standalone_s
            self.ledger.pair(reference_s, asked.standalone_s, len(batch.crops), "profile")
            compressed_s, full_s = compressed_s + asked.standalone_s, full_s + reference_s
            margins.append(np.asarray([r.margin for r in asked.results]))
        return self._trial(trace, candidate, margins, compressed_s, full_s, full_per_crop,
                           remaining)

    def _trial(self, trace: StreamProfile, candidate: Candidate, margins: list[np.ndarray],
               compressed_s: float, full_s: float, full_per_crop: float, remaining: float
               ) -> dict[str, Any]:
        """The verdict on a confirmed candidate: kept the answers, and pays for its audits."""
        reference = np.concatenate([b.margins for b in trace.batches[:len(margins)]])
        agreement, dp = compare(np.concatenate(margins), reference)
        saving = 1 - compressed_s / full_s if full_s else 0.0
        payback = expected_return(remaining, full_per_crop, saving, self.cfg.audit_every)
        checked = len(margins)
        ok = kept = agreement >= self.cfg.target_agreement and dp <= self.cfg.max_dp_yes
        why = "" if ok else (f"{candidate.label}: agreement {agreement:.0%}, |dp| {dp:.3f} "
                             f"on {checked} of {len(trace.batches)} profiled batches")
        if ok and payback <= 0:
            ok, why = False, f"{candidate.label}: measured saving {saving:.0%} does not pay " \
                             f"for its audits"
        logger.info("question {!r}: candidate {}: agreement {:.0%}, |dp| {:.3f}, paired saving "
                    "{:.0%} -> {}", self.label, candidate.label, agreement, dp, saving,
                    "accepted" if ok else "rejected")
        return {**candidate.to_dict(), "agreement": round(agreement, 4),
                "mean_dp_yes": round(dp, 5), "saving": round(saving, 4), "accepted": ok,
                "kept_answers": kept, "batches_checked": checked, "why": why}

    def _target_out_of_reach(self, trace: StreamProfile, margins: list[np.ndarray]) -> bool:
        """Whether the batches confirmed so far already rule the candidate out: more
        disagreements, or more summed |dp|, than the whole profiled set may hold."""
        total = trace.crops
        reference = np.concatenate([b.margins for b in trace.batches[:len(margins)]])
        done = np.concatenate(margins)
        agreement, dp = compare(done, reference)
        disagree = (1 - agreement) * done.size
        return disagree > (1 - self.cfg.target_agreement) * total + 1e-9 or \
            dp * done.size > self.cfg.max_dp_yes * total

    def _compile_graphs(self, plan: Plan, crops: list[Crop]) -> None:
        """Compile (or capture as CUDA graphs) ``plan``'s pass and the full model's on one
        profiled batch before the paired passes: that is building a plan (booked as
        ``build``), not answering, and what it cost prices the next candidate."""
        bodies = self.runner.bodies
        if bodies is None:
            return
        if bodies is self.runner.graphs:  # every bucket at once: no capture inside a pair
            start = time.perf_counter()
            self._capture(plan)
            self.ledger.add("build", time.perf_counter() - start)
            return
        for graph in (plan, self.runner.full_plan):
            if bodies.built(graph):
                continue
            self.compile_s = self.runner.plan(crops, graph, None).seconds
            self.ledger.add("build", self.compile_s)
