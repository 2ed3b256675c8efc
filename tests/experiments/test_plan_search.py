"""The offline plan search of the benchmarks: the plan that saves most while answers agree."""

from __future__ import annotations

import numpy as np
import pytest

from vidqa.experiments.plan_search import auto_plan
from vidqa.vlm.compression.plan import Plan

VISION = [f"model.vision_model.encoder.layers.{i}" for i in range(4)]
TEXT = [f"model.text_model.layers.{i}" for i in range(4)]
PATHS = VISION + TEXT
REFERENCE = np.array([2.0, -1.5, 0.7, -3.0, 1.2])




def evaluator(damage, seconds_per_layer: dict[str, float]):
    """Margins = reference shifted by ``damage(plan)``; time = sum of kept layers' cost."""
    cost = {"keep": 1.0, **seconds_per_layer}

    def evaluate(plan: Plan) -> tuple[np.ndarray, float]:
        ops = [plan.ops.get(p, "keep") for p in PATHS]
        return REFERENCE + damage(plan), sum(cost[op] for op in ops)
    return evaluate


def test_auto_plan_when_every_compression_flips_answers_keeps_everything():
    flip = evaluator(lambda plan: -2 * REFERENCE if plan.compressed else 0.0,
                     {"int8": 0.5, "skip": 0.0})

    search = auto_plan(flip, PATHS)

    assert not search.plan.compressed
    assert search.reason == "no compressed plan kept the answers"
    assert search.trials and not any(t.accepted for t in search.trials)


def test_auto_plan_when_nothing_changes_answers_compresses_most_time():
    harmless = evaluator(lambda plan: 0.0, {"int8": 0.5, "skip": 0.0})

    search = auto_plan(harmless, PATHS)

    counts = search.plan.counts()
    assert counts["skip"] == round(0.75 * len(PATHS))  # the skip grid's top
    assert counts["keep"] == 0  # and int8 on the rest
    assert search.expected_saving == pytest.approx(1 - 2 * 0.5 / len(PATHS))


def test_auto_plan_when_only_int8_is_harmless_picks_int8():
    skip_hurts = evaluator(lambda plan: -2 * REFERENCE if plan.paths("skip") else 0.0,
                           {"int8": 0.5, "skip": 0.0})

    search = auto_plan(skip_hurts, PATHS)

    assert search.plan.counts() == {"keep": 0, "int8": len(PATHS), "skip": 0}


def test_auto_plan_when_saving_is_below_minimum_keeps_everything():
    barely = evaluator(lambda plan: 0.0, {"int8": 0.99, "skip": 0.99})

    search = auto_plan(barely, PATHS, min_saving=0.05)

    assert not search.plan.compressed
    assert "not worth the risk" in search.reason


def test_auto_plan_when_dp_yes_exceeds_tolerance_rejects_plan():
    # Same yes/no answers, but p_yes moves a lot: rejected by max_dp_yes alone.
    shrink = evaluator(lambda plan: -0.9 * REFERENCE * plan.compressed, {"int8": 0.5, "skip": 0})

    search = auto_plan(shrink, PATHS, max_dp_yes=0.05)

    assert not search.plan.compressed
    assert all(t.agreement == 1.0 for t in search.trials)


def test_auto_plan_when_damage_grows_with_fraction_stops_at_the_threshold():
    # Skipping more than 3 layers flips answers; int8 unavailable on this "device".
    def damage(plan: Plan):
        return -2 * REFERENCE if len(plan.paths("skip")) > 3 else 0.0

    search = auto_plan(evaluator(damage, {"int8": 0.5, "skip": 0.0}), PATHS, int8=False)

    assert search.plan.counts()["skip"] == 3  # one tower's 3 layers; both towers' 6 fail
    assert len(search.trials) == 5  # per tower: smallest, top; then the merge


def test_auto_plan_when_int8_hurts_only_text_quantizes_the_vision_tower():
    # The stand-in's pattern: int8 is harmless on vision layers, harmful on text layers.
    def damage(plan: Plan):
        text_int8 = [p for p in plan.paths("int8") if "text" in p]
        return -2 * REFERENCE if text_int8 or plan.paths("skip") else 0.0

    search = auto_plan(evaluator(damage, {"int8": 0.5, "skip": 0.0}), PATHS)

    assert search.plan.paths("int8") == sorted(VISION)
    assert not search.plan.paths("skip")


def test_auto_plan_when_a_family_saves_too_little_drops_it():
    # Skipping text layers is free of damage but saves nothing: smallest and top tried, dropped.
    costs = {p: (1.0 if "vision" in p else 0.001) for p in PATHS}

    def evaluate(plan: Plan):
        return REFERENCE, sum(c for p, c in costs.items() if plan.ops.get(p, "keep") != "skip")

    search = auto_plan(evaluate, PATHS, int8=False)

    text_trials = [t for t in search.trials if t.label.startswith("skip") and "text" in t.label]
    assert len(text_trials) == 2
    assert search.plan.paths("skip") and all("vision" in p for p in search.plan.paths("skip"))


def test_auto_plan_when_smallest_skip_hurts_drops_skip_after_one_trial():
    def damage(plan: Plan):
        return -2 * REFERENCE if plan.paths("skip") else 0.0

    search = auto_plan(evaluator(damage, {"int8": 0.5, "skip": 0.0}), PATHS)

    assert len([t for t in search.trials if t.label.startswith("skip")]) == 2  # one per tower
    assert not search.plan.paths("skip")


def test_auto_plan_when_orders_per_operator_given_uses_each():
    reverse = PATHS[::-1]
    harmless = evaluator(lambda plan: 0.0, {"int8": 0.5, "skip": 0.0})

    search = auto_plan(harmless, PATHS, orders={"skip": reverse}, int8=False,
                       skip_grid=(0.25,))

    assert search.plan.paths("skip") == sorted([VISION[-1], TEXT[-1]])
