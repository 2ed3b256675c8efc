"""Layer orders and the plans cut from them, on constructed cases."""

from __future__ import annotations

import numpy as np
import pytest
from factories import FakeProfile

from vidqa.vlm.compression.orders import (
    bottom,
    bottom_fraction,
    compare,
    operator_plan,
    random_order,
)

VISION = [f"model.vision_model.encoder.layers.{i}" for i in range(4)]
TEXT = [f"model.text_model.layers.{i}" for i in range(4)]
PATHS = VISION + TEXT
REFERENCE = np.array([2.0, -1.5, 0.7, -3.0, 1.2])


def profile() -> FakeProfile:
    """Importance = position in PATHS (layer 0 of vision is least important)."""
    return FakeProfile.of(PATHS)


@pytest.mark.parametrize(("operator", "fraction", "expected"), [
    ("int8", 0.5, {"keep": 4, "int8": 4, "skip": 0}),
    ("skip", 0.25, {"keep": 6, "int8": 0, "skip": 2}),
    ("int8+skip", 0.5, {"keep": 4, "int8": 2, "skip": 2}),
    ("int8", 0.0, {"keep": 8, "int8": 0, "skip": 0}),
])
def test_operator_plan_when_fraction_given_compresses_that_share(operator, fraction, expected):
    assert operator_plan(PATHS, operator, fraction).counts() == expected


def test_bottom_fraction_when_importance_given_compresses_least_important_first():
    plan = bottom_fraction(profile(), "block_influence", 0.25, "skip")
    assert plan.paths("skip") == sorted(PATHS[:2])


def test_bottom_when_per_tower_takes_the_share_of_each_tower():
    order = TEXT + VISION  # text first: global would take only text layers
    assert bottom(order, 0.5) == TEXT
    assert bottom(order, 0.5, "per_tower") == VISION[:2] + TEXT[:2]


def test_random_order_when_seeded_is_a_reproducible_permutation():
    assert random_order(PATHS, 1) == random_order(PATHS, 1)
    assert sorted(random_order(PATHS, 1)) == sorted(PATHS)


def test_compare_when_one_answer_flips_reports_agreement_and_dp():
    agreement, dp = compare(np.array([1.0, -1.0]), np.array([1.0, 1.0]))
    assert agreement == 0.5
    assert dp == pytest.approx((1 / (1 + np.exp(-1)) - 1 / (1 + np.exp(1))) / 2)
