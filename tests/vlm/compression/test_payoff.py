"""Forecasting ROIs, ranking candidates from profiling signals, pricing confirmations."""

from __future__ import annotations

import numpy as np
import pytest

from vidqa.vlm.compression.payoff import (
    RoiForecast,
    candidates,
    expected_return,
    next_candidate,
    static_plan,
)

PATHS = [f"model.vision_model.encoder.layers.{i}" for i in range(4)] + \
        [f"model.text_model.layers.{i}" for i in range(4)]


def test_forecast_when_rois_are_announced_counts_down():
    forecast = RoiForecast(horizon_s=100)
    forecast.expect(rois=10)
    for t in range(3):
        forecast.observe("0", float(t))
    assert forecast.remaining()[0] == 7


@pytest.mark.parametrize(("seconds", "expected"), [(None, 100.0), (50.0, 40.0), (5.0, 0.0)])
def test_forecast_when_rate_is_known_uses_seconds_left_or_horizon(seconds, expected):
    forecast = RoiForecast(horizon_s=100)
    for t in range(11):  # 11 ROIs over 10 s of stream
        forecast.observe("0", float(t))
    forecast.expect(seconds=seconds)
    assert forecast.remaining()[0] == pytest.approx(1.1 * expected)


def test_forecast_when_under_a_second_seen_expects_nothing():
    forecast = RoiForecast(horizon_s=100)
    forecast.observe("0", 0.0)
    assert forecast.remaining()[0] == 0.0


def test_candidates_when_a_layer_matters_rank_plans_that_keep_it_first():
    influence = np.array([0.1, 0.1, 0.1, 5.0, 0.1, 0.1, 0.1, 0.1])
    ranked = candidates(PATHS, influence, np.full(8, 0.1), 1.0, int8=False)
    best = ranked[0]
    assert best.plan.ops[PATHS[3]] == "keep"
    assert best.est_saving > 0 and all(c.plan.paths("int8") == [] for c in ranked)


def test_next_candidate_when_one_was_rejected_only_offers_a_safer_one():
    ranked = candidates(PATHS, np.ones(8), np.full(8, 0.1), 1.0, int8=True)
    first = next_candidate(ranked, [])
    second = next_candidate(ranked, [first])
    assert second is None or second.risk <= first.risk / 2


@pytest.mark.parametrize(("rois", "saving", "every", "expected"),
                         [(100, 0.5, 10, 40.0), (100, 0.05, 10, -5.0), (0, 0.5, 10, 0.0),
                          (100, 0.5, 0, 50.0)])
def test_expected_return_when_audits_cost_full_passes_subtracts_them(rois, saving, every,
                                                                      expected):
    assert expected_return(rois, 1.0, saving, every) == pytest.approx(expected)


@pytest.mark.parametrize(("int8", "op"), [(True, "int8"), (False, "skip")])
def test_static_plan_when_built_touches_only_the_vision_tower(int8, op):
    plan = static_plan(PATHS, int8)
    changed = [p for p, o in plan.ops.items() if o != "keep"]
    assert changed and all("vision" in p for p in changed)
    assert {plan.ops[p] for p in changed} == {op}
    assert plan.ops[PATHS[3]] == ("int8" if int8 else "keep")  # the last vision layer
