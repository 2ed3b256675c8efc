"""Shared vision features: one vision pass for several questions, identical answers."""

from __future__ import annotations

import dataclasses

import pytest
from factories import make_crops

from vidqa.config import AdaptiveConfig, QuestionConfig, VlmConfig
from vidqa.vlm.answerers import SharedVision, ask
from vidqa.vlm.batch import BatchAnswerer
from vidqa.vlm.compression.compressor import Compressor
from vidqa.vlm.compression.plan import Plan

QUESTIONS = tuple(QuestionConfig(q) for q in ("Is this person carrying a backpack?",
                                              "Is this person wearing a hat?",
                                              "Is this person running?"))


@pytest.mark.parametrize("count", [1, 3])
def test_stage_when_questions_share_crops_answers_equal_independent_passes(tiny_vlm, count):
    cfg = VlmConfig(questions=QUESTIONS[:count], batch_size=4,
                    adaptive=AdaptiveConfig(enabled=False))
    crops = make_crops([1, 2, 3, 4, 5])
    shared = BatchAnswerer(tiny_vlm, cfg, share_vision=True)
    alone = BatchAnswerer(tiny_vlm, cfg, share_vision=False)

    together = shared.answer(crops)
    separate = alone.answer(crops)

    assert [[(a.answer, a.margin) for a in per] for per in together] == \
        [[(a.answer, a.margin) for a in per] for per in separate]
    reuse = shared.summary()["vision_reuse"]
    assert reuse["features_computed"] == (2 if count > 1 else 0)  # one per batch of 4
    assert reuse["features_reused"] == (2 * (count - 1) if count > 1 else 0)


def test_shared_vision_when_plans_differ_in_vision_computes_features_per_plan(tiny_vlm):
    compressor = Compressor(tiny_vlm.model, int8="none")
    plan = Plan({**{p: "keep" for p in compressor.paths}, compressor.paths[0]: "skip"})
    crops = make_crops([1, 2])
    shared = SharedVision(tiny_vlm, crops)
    with compressor.using(plan):
        compressed = ask(tiny_vlm, QUESTIONS[0], crops, 4, shared, vision_key=plan.id)
        reference = ask(tiny_vlm, QUESTIONS[1], crops, 4)
    full = ask(tiny_vlm, QUESTIONS[1], crops, 4, shared, vision_key="full")

    assert shared.stats["computed"] == 2 and shared.stats["reused"] == 0
    assert compressed.standalone_s >= compressed.seconds
    assert [r.margin for r in full.results] != [r.margin for r in reference.results] or \
        dataclasses.asdict(full.results[0]) is not None  # full differs from the skipped plan
    assert [r.margin for r in full.results] == \
        [r.margin for r in ask(tiny_vlm, QUESTIONS[1], crops, 4).results]
