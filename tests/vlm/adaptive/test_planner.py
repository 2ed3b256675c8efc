"""The planner alone, on profiled batches of a tiny model whose layers are all x -> x."""

from __future__ import annotations

import pytest
from factories import make_crops, make_identity_layer

from vidqa.config import AdaptiveConfig, QuestionConfig
from vidqa.vlm.adaptive.planner import Planner
from vidqa.vlm.adaptive.runner import PlanRunner
from vidqa.vlm.compression.accounting import Ledger
from vidqa.vlm.compression.compressor import Compressor, layer_paths
from vidqa.vlm.compression.payoff import CropForecast
from vidqa.vlm.profiling.stream import ProfiledBatch, new_stream_profile

QUESTION = QuestionConfig(question="Is this person carrying a backpack?")


@pytest.fixture()
def profiled(tiny_vlm):
    """A runner over an all-identity tiny model and the trace of two profiled batches."""
    for path in layer_paths(tiny_vlm.model):
        make_identity_layer(tiny_vlm.model, path)
    runner = PlanRunner(tiny_vlm, QUESTION, Compressor(tiny_vlm.model, int8="none"))
    trace = new_stream_profile(tiny_vlm)
    for frame, tracks in enumerate(([1, 2], [3, 4])):
        crops = make_crops(tracks, frame=frame)
        asked = runner.traced(crops, None, trace)
        trace.batches.append(ProfiledBatch(crops, asked.standalone_s,
                                           [r.margin for r in asked.results]))
    return runner, trace, trace.profile(QUESTION.question, tiny_vlm.info.name)


def forecast(crops: int) -> CropForecast:
    ahead = CropForecast(horizon_s=300)
    ahead.expect(crops=crops)
    return ahead


def test_planner_when_nothing_is_still_to_come_then_confirms_nothing(profiled):
    runner, trace, profile = profiled
    ledger = Ledger()

    decision = Planner(runner, AdaptiveConfig(), ledger).plan(trace, profile, 4, forecast(0))

    assert decision.plan is None and not decision.trials
    assert "no candidate left that can pay back" in decision.reason
    assert ledger.planning_s == 0.0


def test_planner_when_a_long_stream_is_to_come_then_confirms_a_plan_that_keeps_answers(
        profiled):
    runner, trace, profile = profiled
    ledger = Ledger()

    cfg = AdaptiveConfig(tile_scales=(), audit_every=0)  # layer plans, no audit share to beat
    decision = Planner(runner, cfg, ledger).plan(trace, profile, 4, forecast(10**6))

    assert decision.plan is not None and decision.plan.compressed
    assert decision.trials[-1]["accepted"] and decision.trials[-1]["agreement"] == 1.0
    assert ledger.seconds["confirm"] > 0 and ledger.pair_count >= 1  # paired, booked


def test_planner_when_bottom_fraction_then_plan_without_confirmation(profiled):
    runner, trace, profile = profiled
    cfg = AdaptiveConfig(mode="bottom_fraction", operator="skip", fraction=0.5)

    decision = Planner(runner, cfg, Ledger()).plan(trace, profile, 4, forecast(0))

    assert decision.search == {"mode": "bottom_fraction"} and not decision.trials
    assert len(decision.plan.paths("skip")) == len(runner.compressor.paths) // 2
