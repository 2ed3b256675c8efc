"""Forecasting ROIs, ranking candidates from profiling signals, pricing confirmations."""

from __future__ import annotations

import numpy as np
import pytest

from vidqa.vlm.compression.payoff import (
    Candidate,
    CropForecast,
    TileOption,
    candidates,
    expected_return,
    expected_value,
    next_candidate,
    static_plan,
)
from vidqa.vlm.compression.plan import Plan

PATHS = [f"model.vision_model.encoder.layers.{i}" for i in range(4)] + \
        [f"model.text_model.layers.{i}" for i in range(4)]

# The offline stand-in's profile on the first 16 tracks of vtest.avi (CPU, fp32): mean block
# influence and seconds per ROI of its 12 vision and 30 text layers.
STANDIN_PATHS = [f"model.vision_model.encoder.layers.{i}" for i in range(12)] + \
                [f"model.text_model.layers.{i}" for i in range(30)]
STANDIN_INFLUENCE = np.array([
    0.1149, 0.0593, 0.0409, 0.0323, 0.0248, 0.0206, 0.0192, 0.0162, 0.0145, 0.0129, 0.0119,
    0.0109, 0.0740, 0.0667, 0.0263, 0.0137, 0.0118, 0.0110, 0.0121, 0.0127, 0.0163, 0.0161,
    0.0146, 0.0159, 0.0094, 0.0076, 0.0078, 0.0080, 0.0092, 0.0100, 0.0163, 0.0122, 0.0206,
    0.0090, 0.0112, 0.0212, 0.0556, 0.0072, 0.0055, 0.0114, 0.0114, 0.0968])
STANDIN_LAYER_S = np.array([
    0.1249, 0.1236, 0.1337, 0.1756, 0.1295, 0.1203, 0.1199, 0.1179, 0.1244, 0.1188, 0.1233,
    0.1210, 0.0065, 0.0048, 0.0041, 0.0042, 0.0039, 0.0042, 0.0046, 0.0042, 0.0041, 0.0044,
    0.0045, 0.0057, 0.0050, 0.0043, 0.0046, 0.0041, 0.0041, 0.0042, 0.0042, 0.0041, 0.0046,
    0.0047, 0.0041, 0.0038, 0.0039, 0.0041, 0.0041, 0.0042, 0.0038, 0.0038])


def test_forecast_when_crops_are_announced_counts_down():
    forecast = CropForecast(horizon_s=100)
    forecast.expect(crops=10)
    for t in range(3):
        forecast.observe("0", float(t))
    assert forecast.remaining()[0] == 7


@pytest.mark.parametrize(("seconds", "expected"), [(None, 100.0), (50.0, 40.0), (5.0, 0.0)])
def test_forecast_when_rate_is_known_uses_seconds_left_or_horizon(seconds, expected):
    forecast = CropForecast(horizon_s=100)
    for t in range(11):  # one ROI a second for 10 s: 8 after the first 2 s, over 8 s
        forecast.observe("0", float(t))
    forecast.expect(seconds=seconds)
    rate = (8 - 2 * 8 ** 0.5) / 8  # the lower end of a Poisson rate of 8 arrivals
    assert forecast.remaining()[0] == pytest.approx(rate * expected)


def test_forecast_when_a_stream_starts_with_a_crowd_then_the_burst_does_not_count():
    forecast = CropForecast(horizon_s=100)
    for track in range(12):  # twelve people in view at the start ...
        forecast.observe("0", 0.5)
    for t in range(4, 44, 4):  # ... then one new person every 4 s
        forecast.observe("0", float(t))
    assert forecast.rate() == pytest.approx((10 - 2 * 10 ** 0.5) / (40.0 - 0.5 - 2.0))
    assert forecast.seen == 22


def test_forecast_when_streams_run_side_by_side_then_their_rates_add_up():
    one, many = CropForecast(horizon_s=100), CropForecast(horizon_s=100)
    for t in range(11):  # one ROI a second for 10 s ...
        one.observe("0", float(t))
        for stream in ("0", "1", "2", "3"):  # ... and on each of four cameras at once
            many.observe(stream, float(t))
    point = 8 / 8  # 8 arrivals after the burst, over 8 s, per stream
    assert one.rate() == pytest.approx(point * (1 - 2 / 8 ** 0.5))
    assert many.rate() == pytest.approx(4 * point * (1 - 2 / 32 ** 0.5))


def test_forecast_when_under_a_second_seen_expects_nothing():
    forecast = CropForecast(horizon_s=100)
    forecast.observe("0", 0.0)
    assert forecast.remaining()[0] == 0.0


def test_candidates_when_a_layer_matters_rank_plans_that_keep_it_first():
    influence = np.array([0.1, 0.1, 0.1, 5.0, 0.1, 0.1, 0.1, 0.1])
    ranked = candidates(PATHS, influence, np.full(8, 0.1), 1.0, int8=False)
    best = ranked[0]
    assert best.plan.ops[PATHS[3]] == "keep"
    assert best.est_saving > 0 and all(c.plan.paths("int8") == [] for c in ranked)


def test_candidates_when_standin_profile_ranks_int8_on_vision_before_any_skip():
    ranked = candidates(STANDIN_PATHS, STANDIN_INFLUENCE, STANDIN_LAYER_S, 1.71, int8=True)

    assert ranked[0].label == "int8 vision"
    skips = [c for c in ranked if c.plan.paths("skip")]
    assert skips and max(c.est_saving for c in skips) > ranked[0].est_saving  # they promise more
    assert all(c.p_pass < ranked[0].p_pass for c in skips)  # but rarely keep the answers


def test_candidates_when_ranked_orders_by_saving_times_probability_of_passing():
    ranked = candidates(STANDIN_PATHS, STANDIN_INFLUENCE, STANDIN_LAYER_S, 1.71, int8=True)

    scores = [c.est_saving * c.p_pass for c in ranked]
    assert scores == sorted(scores, reverse=True)


def test_candidates_when_skipped_layers_carry_no_influence_rank_the_larger_saving_first():
    influence = np.array([0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])  # vision 0-2 do nothing
    layer_s = np.array([0.2, 0.2, 0.2, 0.2, 0.05, 0.05, 0.05, 0.05])

    ranked = candidates(PATHS, influence, layer_s, 1.0, int8=True)

    assert ranked[0].plan.paths("skip") and ranked[0].p_pass == pytest.approx(1.0)


@pytest.mark.parametrize(("returns", "expected"), [(5.0, -5.0), (50.0, 4.0), (100.0, 14.0)])
def test_expected_value_when_confirmation_is_paid_either_way_weighs_only_the_return(
        returns, expected):  # 0.4 x returns at half (RETURN_DISCOUNT) - 6 s of confirmation
    plan = Plan.keep_all(PATHS)
    candidate = Candidate("a plan that passes 2 times in 5", plan, 0.5, -np.log(0.4))

    assert expected_value(candidate, returns, 6.0) == pytest.approx(expected)


def test_next_candidate_when_one_was_rejected_only_offers_a_safer_one():
    ranked = candidates(PATHS, np.ones(8), np.full(8, 0.1), 1.0, int8=True)
    first = next_candidate(ranked, [])
    second = next_candidate(ranked, [first])
    assert second is None or second.risk <= first.risk / 2


@pytest.mark.parametrize(("crops", "saving", "every", "expected"),
                         [(100, 0.5, 10, 40.0), (100, 0.05, 10, -5.0), (0, 0.5, 10, 0.0),
                          (100, 0.5, 0, 50.0)])
def test_expected_return_when_audits_cost_full_passes_subtracts_them(crops, saving, every,
                                                                      expected):
    assert expected_return(crops, 1.0, saving, every) == pytest.approx(expected)


@pytest.mark.parametrize(("int8", "op"), [(True, "int8"), (False, "skip")])
def test_static_plan_when_built_touches_only_the_vision_tower(int8, op):
    plan = static_plan(PATHS, int8)
    changed = [p for p, o in plan.ops.items() if o != "keep"]
    assert changed and all("vision" in p for p in changed)
    assert {plan.ops[p] for p in changed} == {op}
    assert plan.ops[PATHS[3]] == ("int8" if int8 else "keep")  # the last vision layer


def test_next_candidate_when_one_kept_answers_but_did_not_pay_offers_riskier_ones():
    ranked = candidates(STANDIN_PATHS, STANDIN_INFLUENCE, STANDIN_LAYER_S, 1.71, int8=True)
    first = ranked[0]

    after_cost = next_candidate(ranked, [], tried=[first])
    after_change = next_candidate(ranked, [first])

    assert after_cost == ranked[1] and ranked[1].risk > first.risk / 2  # however risky
    assert after_change is None or after_change.risk <= first.risk / 2


def test_candidates_when_tiles_are_offered_then_standin_ranks_a_small_tile_before_int8():
    # Given the stand-in's profile, where the vision tower is most of a ROI's time
    tiles = [TileOption(384, 0.5625, 0.65), TileOption(256, 0.25, 0.41)]

    ranked = candidates(STANDIN_PATHS, STANDIN_INFLUENCE, STANDIN_LAYER_S,
                        float(STANDIN_LAYER_S.sum()) * 1.1, True, tiles)

    by_label = {c.label: c for c in ranked}
    # Then the tile candidates exist alone and with the best layer plans, carry their tile,
    # save what the patches they drop cost, and the 256 px tile outranks int8 on the vision
    assert by_label["tile 256"].plan.tile == 256 and not by_label["tile 256"].plan.paths("skip")
    assert any(label.startswith("tile 384 + ") for label in by_label)
    assert by_label["tile 256"].est_saving > by_label["tile 384"].est_saving > 0.3
    assert by_label["tile 256"].risk > by_label["tile 384"].risk
    assert by_label["tile 256"].score > by_label["int8 vision"].score
    assert [c.score for c in ranked] == sorted((c.score for c in ranked), reverse=True)


def test_next_candidate_when_a_tile_moved_the_answers_then_layer_plans_stay_on_offer():
    # Given the stand-in's ranking with tiles, where the 256 px tile moved the answers
    tiles = [TileOption(384, 0.5625, 0.65), TileOption(256, 0.25, 0.41)]
    ranked = candidates(STANDIN_PATHS, STANDIN_INFLUENCE, STANDIN_LAYER_S,
                        float(STANDIN_LAYER_S.sum()) * 1.1, True, tiles)
    tile = next(c for c in ranked if c.label == "tile 256")

    after = next_candidate(ranked, [tile])

    # Then the tiles riskier than half of it are passed over (384 px, and every tile with
    # layers), and the next is the best layer plan: int8 rarely moves a yes/no answer
    passed_over = ranked[1:ranked.index(after)]
    assert after.label == "int8 vision"
    assert passed_over and all(c.plan.tile and c.risk > tile.risk / 2 for c in passed_over)
