"""Choosing a compression plan from a layer-importance profile.

Layers are ordered least important first (:func:`importance_order`, or the controls
:func:`random_order` and reversed importance). ``bottom_fraction`` compresses the first X% of
that order with one operator — the seed's experiment. ``auto_plan`` searches and keeps the plan
that saves the most *measured* time while its answers on the profiled ROIs still agree with the
full model:

- every family (int8 or skip, on the vision or the text tower) is searched on its own, int8
  from its most aggressive fraction down, skip from its smallest up (see
  :func:`_search_family`), by binary search. This assumes damage grows with the fraction —
  true on average, not step by step, which is one reason audits check the plan in the stream;
- the best plans of the families are merged and checked once more;
- each candidate costs one timed forward of the profiled batch; the full model's forward in the
  same search is both the reference answers and the baseline time.
A plan that saves less than ``min_saving`` is not worth the risk: the search keeps the full model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
from loguru import logger

from vidqa.vlm.compression.compressor import Compressor
from vidqa.vlm.compression.plan import Plan, tower_of
from vidqa.vlm.model import timed_margins

Scope = Literal["global", "per_tower"]
GRID = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75)
INT8_GRID = (*GRID, 0.875, 1.0)  # int8 is mild: worth trying on every layer


class RankedProfile(Protocol):
    """What planning needs from :class:`vidqa.vlm.profiling.importance.Profile`."""

    layers: Sequence[Any]  # LayerRef(path, tower, index)

    def ranking(self, metric: str) -> Sequence[int]: ...


# --------------------------------------------------------------------------------------------
# Orders and fixed plans


def importance_order(profile: RankedProfile, metric: str) -> list[str]:
    """Layer paths, least important first by ``metric``."""
    return [profile.layers[i].path for i in profile.ranking(metric)]


def operator_orders(profile: RankedProfile, metric: str) -> dict[str, list[str]]:
    """Per operator, the order to compress in: by the operator's own task impact when the
    profile measured it (``task_int8`` for int8, ``task_skip`` for skip), else by ``metric``.
    A layer that is cheap to skip need not be cheap to quantize: on the stand-in, int8 hardly
    moves the vision layers' answers but shifts the text layers'."""
    measured = set(getattr(profile, "scores", {}))
    return {op: importance_order(profile, task if task in measured else metric)
            for op, task in (("int8", "task_int8"), ("skip", "task_skip"))}


def random_order(paths: Sequence[str], seed: int = 0) -> list[str]:
    """A seeded shuffle: the control that shows whether a ranking is worth anything."""
    rng = np.random.default_rng(seed)
    return [paths[i] for i in rng.permutation(len(paths))]


def bottom(order: Sequence[str], fraction: float, scope: Scope = "global") -> list[str]:
    """The first ``fraction`` of ``order``; per tower, the first ``fraction`` of each tower."""
    if scope == "global":
        return list(order[:_count(fraction, len(order))])
    chosen = []
    for tower in ("vision", "text"):
        layers = [path for path in order if tower_of(path) == tower]
        chosen += layers[:_count(fraction, len(layers))]
    return chosen


def _count(fraction: float, total: int) -> int:
    """``fraction`` of ``total`` layers, rounded half up (Python's round() goes to even)."""
    return int(fraction * total + 0.5 + 1e-9)


def mixed_plan(order: Sequence[str], skip_fraction: float, int8_fraction: float,
               scope: Scope = "global") -> Plan:
    """Skip the bottom ``skip_fraction`` of ``order``, int8 the next ``int8_fraction``."""
    skipped = bottom(order, skip_fraction, scope)
    quantized = bottom(order, min(1.0, skip_fraction + int8_fraction), scope)
    ops = {path: "keep" for path in order}
    ops.update({path: "int8" for path in quantized})
    ops.update({path: "skip" for path in skipped})
    return Plan(ops, f"skip {skip_fraction:.3g} + int8 {int8_fraction:.3g} ({scope})")


def operator_plan(order: Sequence[str], operator: str, fraction: float,
                  scope: Scope = "global") -> Plan:
    """``operator`` ("int8", "skip" or "int8+skip") on the bottom ``fraction`` of ``order``.

    "int8+skip" splits the fraction: the bottom half of it is skipped, the rest quantized, so
    the x axis of a report means "share of layers compressed" for every operator.
    """
    if operator == "int8":
        return mixed_plan(order, 0.0, fraction, scope)
    if operator == "skip":
        return mixed_plan(order, fraction, 0.0, scope)
    if operator == "int8+skip":
        return mixed_plan(order, fraction / 2, fraction / 2, scope)
    raise ValueError(f"operator {operator!r}: choose int8, skip or int8+skip")


def bottom_fraction(profile: RankedProfile, metric: str, fraction: float, operator: str,
                    scope: Scope = "global") -> Plan:
    """The seed's plan: ``operator`` on the least important ``fraction`` of the layers."""
    plan = operator_plan(importance_order(profile, metric), operator, fraction, scope)
    return Plan(plan.ops, f"bottom {fraction:.0%} by {metric}: {operator} ({scope})")


# --------------------------------------------------------------------------------------------
# Evaluating candidates


@dataclass(frozen=True)
class Trial:
    """One candidate plan checked on the profiled ROIs."""

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


def compare(margins: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """(agreement of yes/no answers, mean |Δ p_yes|) of ``margins`` against ``reference``."""
    margins, reference = np.asarray(margins, np.float64), np.asarray(reference, np.float64)
    agreement = float(np.mean((margins > 0) == (reference > 0)))
    p, p_ref = 1 / (1 + np.exp(-margins)), 1 / (1 + np.exp(-reference))
    return agreement, float(np.mean(np.abs(p - p_ref)))


class ForwardEvaluator:
    """Runs the profiled ROIs' prepared inputs through the model under a plan, timed."""

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
