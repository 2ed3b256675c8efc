"""Layer orders and the plans cut from them.

Layers are ordered least important first (:func:`importance_order`, or the controls
:func:`random_order` and reversed importance). :func:`bottom_fraction` compresses the first X% of
that order with one operator — the seed's experiment; :func:`compare` says whether a plan's
answers agree with the full model's. The stream's planner (:mod:`vidqa.vlm.adaptive.planner`)
ranks its candidates by expected saving instead; the offline search over fractions that the
benchmarks use is :mod:`vidqa.experiments.plan_search`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Protocol

import numpy as np

from vidqa.vlm.compression.plan import Plan, tower_of

Scope = Literal["global", "per_tower"]


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


def compare(margins: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """(agreement of yes/no answers, mean |Δ p_yes|) of ``margins`` against ``reference``."""
    margins, reference = np.asarray(margins, np.float64), np.asarray(reference, np.float64)
    agreement = float(np.mean((margins > 0) == (reference > 0)))
    p, p_ref = 1 / (1 + np.exp(-margins)), 1 / (1 + np.exp(-reference))
    return agreement, float(np.mean(np.abs(p - p_ref)))


