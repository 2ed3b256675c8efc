import math
from types import SimpleNamespace

import numpy as np
import pytest

from vidqa.experiments.stats import (
    DECISION_TABLE,
    bottom_k,
    cross_question,
    mean_pairwise_jaccard,
    mean_pairwise_pearson,
    mean_pairwise_spearman,
    rank_rows,
    stability,
    summarize,
    verdict,
)

N_LAYERS = 44


def identical(rng: np.random.Generator) -> np.ndarray:
    return np.tile(rng.random(N_LAYERS), (6, 1))  # (6, L)


def scaled_copies(rng: np.random.Generator) -> np.ndarray:
    """Same vector at different scales and offsets: a per-ROI normalisation changes nothing."""
    base = rng.random(N_LAYERS)
    return np.stack([base * s + o for s, o in ((1, 0), (10, 2), (0.1, 5))])


def independent(rng: np.random.Generator) -> np.ndarray:
    return rng.random((60, N_LAYERS))  # every ROI its own random importance


def reversed_ranks(rng: np.random.Generator) -> np.ndarray:
    return np.stack([np.arange(N_LAYERS), np.arange(N_LAYERS)[::-1]]).astype(float)


@pytest.mark.parametrize(("build", "statistic", "expected", "tolerance"), [
    (identical, mean_pairwise_pearson, 1.0, 1e-12),
    (identical, mean_pairwise_spearman, 1.0, 1e-12),
    (identical, lambda x: mean_pairwise_jaccard(x, 11), 1.0, 0),
    (scaled_copies, mean_pairwise_pearson, 1.0, 1e-12),
    (scaled_copies, mean_pairwise_spearman, 1.0, 1e-12),
    (independent, mean_pairwise_pearson, 0.0, 0.05),
    (independent, mean_pairwise_spearman, 0.0, 0.05),
    (reversed_ranks, mean_pairwise_spearman, -1.0, 1e-12),
    (reversed_ranks, mean_pairwise_pearson, -1.0, 1e-12),
    (reversed_ranks, lambda x: mean_pairwise_jaccard(x, 22), 0.0, 0),  # disjoint halves
])
def test_pairwise_statistic_when_vectors_constructed_then_expected_value(build, statistic,
                                                                         expected, tolerance):
    value = statistic(build(np.random.default_rng(0)))

    assert value == pytest.approx(expected, abs=tolerance)


def test_mean_pairwise_jaccard_when_sets_half_overlap_then_one_third():
    x = np.array([[0, 1, 2, 3], [1, 0, 3, 2]], float)  # bottom-2 sets {0,1} and {1,0}
    y = np.array([[0, 1, 2, 3], [0, 2, 1, 3]], float)  # bottom-2 sets {0,1} and {0,2}

    assert mean_pairwise_jaccard(x, 2) == 1.0
    assert mean_pairwise_jaccard(y, 2) == pytest.approx(1 / 3)


@pytest.mark.parametrize(("row", "ranks"), [
    ([3.0, 1.0, 2.0], [2.0, 0.0, 1.0]),
    ([1.0, 2.0, 2.0, 3.0], [0.0, 1.5, 1.5, 3.0]),
    ([5.0, 5.0, 5.0], [1.0, 1.0, 1.0]),
])
def test_rank_rows_when_ties_then_average_rank(row, ranks):
    assert rank_rows(np.array([row])).tolist() == [ranks]


def test_bottom_k_when_ties_then_earlier_layers_first():
    assert bottom_k(np.array([[2.0, 1.0, 1.0, 0.0]]), 2).tolist() == [[3, 1]]


@pytest.mark.parametrize(("pearson", "expected"), [
    (0.95, "> 0.7 high → proceed"),
    (0.7001, "> 0.7 high → proceed"),
    (0.7, "0.4–0.7 moderate"),
    (0.55, "0.4–0.7 moderate"),
    (0.4, "0.4–0.7 moderate"),
    (0.3999, "< 0.4 low → pivot"),
    (-0.2, "< 0.4 low → pivot"),
])
def test_verdict_when_pearson_given_then_seed_table_wording(pearson, expected):
    assert verdict(pearson) == expected
    assert expected in DECISION_TABLE


@pytest.mark.parametrize("pearson", [None, math.nan])
def test_verdict_when_pearson_undefined_then_says_so(pearson):
    assert verdict(pearson).startswith("undefined")


def test_decision_table_when_printed_then_verbatim_from_the_seed():
    assert DECISION_TABLE == "> 0.7 high → proceed; 0.4–0.7 moderate; < 0.4 low → pivot"


def test_stability_when_rows_share_a_pattern_then_far_above_the_null():
    rng = np.random.default_rng(1)
    x = rng.random(N_LAYERS) + 0.05 * rng.random((8, N_LAYERS))

    stats = stability(x, seed=0, n_shuffles=50)

    for name in ("pearson", "spearman", "jaccard_bottom_25", "jaccard_bottom_50"):
        assert stats[name]["value"] > stats[name]["null_mean"] + 3 * stats[name]["null_std"]
        assert stats[name]["p_null"] == pytest.approx(1 / 51)
    assert abs(stats["pearson"]["null_mean"]) < 0.05
    assert stats["k_bottom_25"] == 11 and stats["k_bottom_50"] == 22
    assert stats["verdict"] == "> 0.7 high → proceed"


def test_stability_when_rows_independent_then_value_is_like_the_null():
    x = np.random.default_rng(2).random((8, N_LAYERS))

    stats = stability(x, seed=0, n_shuffles=200)

    for name in ("pearson", "spearman", "jaccard_bottom_50"):
        assert stats[name]["p_null"] > 0.01
        assert abs(stats[name]["value"] - stats[name]["null_mean"]) < 4 * stats[name]["null_std"]
    assert stats["verdict"] == "< 0.4 low → pivot"


def test_stability_when_seeded_then_null_is_reproducible():
    x = np.random.default_rng(3).random((5, 10))

    assert stability(x, seed=7) == stability(x, seed=7)
    assert stability(x, seed=7)["pearson"] != stability(x, seed=8)["pearson"]


def test_stability_when_one_crop_then_statistics_undefined():
    stats = stability(np.ones((1, 5)))

    assert stats["pearson"]["value"] is None
    assert stats["verdict"].startswith("undefined")


def test_summarize_when_towers_given_then_statistics_per_tower():
    x = np.random.default_rng(4).random((4, 6))
    towers = ["vision"] * 2 + ["text"] * 4

    stats = summarize(x, towers, n_shuffles=10)

    assert set(stats["by_tower"]) == {"vision", "text"}
    assert stats["by_tower"]["text"]["n_layers"] == 4
    assert stats["by_tower"]["vision"]["pearson"]["value"] == pytest.approx(
        mean_pairwise_pearson(x[:, :2]))


def test_cross_query_when_questions_share_importance_then_not_query_specific():
    rng = np.random.default_rng(5)
    shared = rng.random(N_LAYERS)
    by_query = {q: shared + 0.1 * rng.random((8, N_LAYERS)) for q in ("a?", "b?")}

    result = cross_question(by_query, n_permutations=100)

    assert result["spearman"]["gap"] == pytest.approx(0, abs=0.05)
    assert result["query_specific"] is False
    assert result["spearman"]["across_query_same_roi"] > 0.8


def test_cross_query_when_each_question_has_its_own_pattern_then_query_specific():
    rng = np.random.default_rng(6)
    by_query = {q: rng.random(N_LAYERS) + 0.1 * rng.random((8, N_LAYERS)) for q in ("a?", "b?")}

    result = cross_question(by_query, n_permutations=100)

    assert result["spearman"]["within_query"] > 0.8
    assert abs(result["spearman"]["across_query_other_roi"]) < 0.3
    assert result["query_specific"] is True
    assert result["interpretation"].startswith("query-specific")


def test_cross_query_when_profiles_have_different_crops_then_value_error():
    profiles = [SimpleNamespace(question="a?", crop_ids=[1, 2], scores={"m": np.ones((2, 3))}),
                SimpleNamespace(question="b?", crop_ids=[1, 3], scores={"m": np.ones((2, 3))})]

    with pytest.raises(ValueError, match="same ROIs"):
        cross_question(profiles, "m")


def test_cross_query_when_one_question_then_says_it_needs_two():
    assert "at least 2" in cross_question({"a?": np.ones((3, 4))})["note"]
