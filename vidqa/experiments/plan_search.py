"""An offline search for the plan that saves the most *measured* time while its answers on the
profiled crops still agree with the full model (``tools/bench_vlm.py``'s auto row; the stream
plans with :mod:`vidqa.vlm.adaptive.planner`):

- every family (int8 or skip, on the vision or the text tower) is searched on its own, int8
  from its most aggressive fraction down, skip from its smallest up (see
  :func:`_search_family`), by binary search. This assumes damage grows with the fraction —
  true on average, not step by step;
- the best plans of the families are merged and checked once more;
- each candidate costs one timed forward of the profiled batch; the full model's forward in the
  same search is both the reference answers and the baseline time.
A plan that saves less than ``min_saving`` is not worth the risk: the search keeps the full model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from loguru import logger

from vidqa.vlm.compression.compressor import Compressor
from vidqa.vlm.compression.orders import bottom, compare
from vidqa.vlm.compression.plan import Plan, tower_of
from vidqa.vlm.model import timed_margins

GRID = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75)
INT8_GRID = (*GRID, 0.875, 1.0)  # int8 is mild: worth trying on every layer


@dataclass(frozen=True)
class Trial:
    """One candidate plan checked on the profiled crops."""

    label: str
    plan: Plan
    agreement: float  # share of ROIs whose yes/no matches the full model
    mean_dp_yes: float  # mean |p_yes - p_yes(full)|
    seconds: float  # one timed forward of the profiled batch
    saving: float  # 1 - seconds / full model's seconds
    accepted: bool

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "plan_id": self.plan.id, "counts": self.plan.counts(),
                "agreement": round(self.agreement, 4), "mean_dp_yes": round(self.mean_dp_yes, 5),
                "seconds": round(self.seconds, 4), "saving": round(self.saving, 4),
                "accepted": self.accepted}


@dataclass(frozen=True)
class Search:
    """The plan chosen by :func:`auto_plan`, why, and every trial behind it."""

    plan: Plan
    reason: str
    baseline_seconds: float
    trials: tuple[Trial, ...]

    @property
    def expected_saving(self) -> float:
        return max((t.saving for t in self.trials if t.plan == self.plan), default=0.0)

    def to_dict(self) -> dict[str, Any]:
        return {"plan": self.plan.to_dict(), "reason": self.reason,
                "baseline_seconds": round(self.baseline_seconds, 4),
                "expected_saving": round(self.expected_saving, 4),
                "trials": [t.to_dict() for t in self.trials]}


Evaluate = Callable[[Plan], tuple[np.ndarray, float]]  # plan -> (margins (N,), seconds)


class ForwardEvaluator:
    """Runs the profiled crops' prepared inputs through the model under a plan, timed."""

    def __init__(self, vlm: Any, compressor: Compressor, inputs: Any,
                 warmup: bool | None = None) -> None:
        self.vlm = vlm
        self.compressor = compressor
        self.inputs = inputs
        # On CUDA a plan's first forward pays kernel selection (and compilation, if any); on
        # CPU it pays nothing worth a second pass of the profiled batch.
        self.warmup = vlm.device.type == "cuda" if warmup is None else warmup

    def __call__(self, plan: Plan) -> tuple[np.ndarray, float]:
        self.compressor.prepare(plan)  # int8 copies are built outside the timed forward
        with self.compressor.using(plan):
            if self.warmup:
                self.vlm.margins(self.inputs)
            return timed_margins(self.vlm, [self.inputs])


# --------------------------------------------------------------------------------------------
# Auto search


class _Judge:
    """Runs candidates once each and remembers the trials."""

    def __init__(self, evaluate: Evaluate, target_agreement: float, max_dp_yes: float,
                 paths: Sequence[str]) -> None:
        self.evaluate = evaluate
        self.target_agreement = target_agreement
        self.max_dp_yes = max_dp_yes
        self.paths = list(paths)
        self.reference, self.baseline = evaluate(Plan.keep_all(paths))
        self.trials: list[Trial] = []

    def __call__(self, label: str, ops: dict[str, str]) -> Trial:
        plan = Plan({**{p: "keep" for p in self.paths}, **ops}, label)
        for trial in self.trials:  # a plan already tried (same ops) is not re-run
            if trial.plan == plan:
                return trial
        margins, seconds = self.evaluate(plan)
        agreement, dp = compare(margins, self.reference)
        accepted = agreement >= self.target_agreement and dp <= self.max_dp_yes
        trial = Trial(label, plan, agreement, dp, seconds, 1 - seconds / self.baseline, accepted)
        self.trials.append(trial)
        logger.debug("plan {}: agreement {:.3f} |dp| {:.4f} saving {:.1%} -> {}", label,
                     agreement, dp, trial.saving, "ok" if accepted else "rejected")
        return trial


def auto_plan(evaluate: Evaluate, order: Sequence[str], *,
              orders: Mapping[str, Sequence[str]] | None = None,
              target_agreement: float = 0.98, max_dp_yes: float = 0.05, int8: bool = True,
              skip: bool = True, min_saving: float = 0.05,
              int8_grid: Sequence[float] = INT8_GRID, skip_grid: Sequence[float] = GRID) -> Search:
    """The accepted plan with the most measured time saved (or the full model).

    Each family (operator x tower) is searched on its own, in its own importance order
    (``orders[operator]``, default ``order``): the towers differ in cost (SmolVLM's vision
    encoder is ~90% of the FLOPs at 512 px) and in how they take each operator, so one global
    fraction would spend its budget where it buys nothing. The best plan of each family is then
    merged with the others and checked once more: damage is roughly but not exactly additive.
    """
    orders = {"int8": list(order), "skip": list(order), **(orders or {})}
    judge = _Judge(evaluate, target_agreement, max_dp_yes, order)
    grids = {"int8": int8_grid, "skip": skip_grid}
    families = [(op, tower) for op in ("int8", "skip") if {"int8": int8, "skip": skip}[op]
                for tower in ("vision", "text")]
    best = []
    for op, tower in families:
        layers = [path for path in orders[op] if tower_of(path) == tower]
        if layers:
            found = _search_family(judge, op, tower, layers, grids[op], min_saving)
            best += [found] if found else []
    _merge(judge, sorted(best, key=lambda t: -t.saving))
    return _choose(judge, order, min_saving)


def _search_family(judge: _Judge, op: str, tower: str, layers: Sequence[str],
                   grid: Sequence[float], min_saving: float) -> Trial | None:
    """The largest accepted fraction of one family, or None.

    int8 usually keeps the answers, so the search opens at the top fraction (accepted: done);
    skip usually does not (every skipped layer moves p_yes), so it opens at the smallest
    fraction (rejected: the family is dropped). Then a binary search between what passed and
    what failed. A family whose top saves less than ``min_saving`` is not worth searching.
    """
    def trial(index: int) -> Trial | None:
        chosen = bottom(layers, grid[index])
        if not chosen:  # a fraction too small for this tower's layer count
            return None
        return judge(f"{op} {grid[index]:g} of {tower}", {path: op for path in chosen})

    smallest = next((i for i in range(len(grid)) if bottom(layers, grid[i])), None)
    if smallest is None:
        return None
    low, high, found = -1, len(grid), None  # grid[low] passed (or -1), grid[high] failed
    if op == "skip":
        first = trial(smallest)
        if not first.accepted:
            return None
        low, found = smallest, first
    top = trial(len(grid) - 1)
    if top.saving < min_saving:  # even the most aggressive candidate barely pays
        return None
    if top.accepted:
        return top
    high = len(grid) - 1
    while high - low > 1:
        mid = max((low + high) // 2, smallest)
        candidate = trial(mid)
        if candidate.accepted:
            low, found = mid, candidate
        elif candidate.saving < min_saving or mid == smallest:
            break  # smaller fractions save even less, or there are none
        else:
            high = mid
    return found if found is not None and found.saving >= min_saving else None


def _merge(judge: _Judge, best: list[Trial]) -> None:
    """Try the union of every family's best plan, then of the two that save most."""
    for group in (best, best[:2]):
        if len(group) < 2:
            return
        ops: dict[str, str] = {}
        for trial in sorted(group, key=lambda t: t.label.startswith("skip")):  # skip wins
            ops.update({p: op for p, op in trial.plan.ops.items() if op != "keep"})
        if judge(" + ".join(t.label for t in group), ops).accepted:
            return


def _choose(judge: _Judge, order: Sequence[str], min_saving: float) -> Search:
    trials = tuple(judge.trials)
    accepted = [t for t in trials if t.accepted]
    full = Plan.keep_all(order, "full model")
    if not accepted:
        return Search(full, "no compressed plan kept the answers", judge.baseline, trials)
    best = max(accepted, key=lambda t: t.saving)
    if best.saving < min_saving:
        reason = (f"best accepted plan ({best.label}) saved only {best.saving:.1%} "
                  f"(< {min_saving:.0%}): not worth the risk")
        return Search(full, reason, judge.baseline, trials)
    reason = (f"{best.label}: agreement {best.agreement:.0%}, |dp| {best.mean_dp_yes:.3f}, "
              f"saves {best.saving:.0%} of the profiled batch's time")
    plan = Plan(best.plan.ops, f"auto: {best.label}")
    return Search(plan, reason, judge.baseline, trials)
