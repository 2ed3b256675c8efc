"""The borrower alone: finding the nearest question's plan, checking it on held-out batches."""

from __future__ import annotations

import pytest
from factories import make_crops, make_identity_layer

from vidqa.config import AdaptiveConfig, QuestionConfig
from vidqa.vlm.adaptive.borrower import Borrower
from vidqa.vlm.adaptive.runner import PlanRunner
from vidqa.vlm.compression.accounting import Ledger
from vidqa.vlm.compression.compressor import Compressor, layer_paths
from vidqa.vlm.compression.plan import Plan
from vidqa.vlm.compression.plan_cache import PlanCache, cache_key_fields

BACKPACK = QuestionConfig(question="Is this person carrying a backpack?")
BAG = QuestionConfig(question="Is this person carrying a bag?")


def key(vlm, question: QuestionConfig) -> dict:
    return cache_key_fields(vlm.info, vlm.device.type, str(vlm.dtype), question.question,
                            question.answer, AdaptiveConfig(), {"int8_backend": "none"})


@pytest.fixture()
def runner(tiny_vlm):
    for path in layer_paths(tiny_vlm.model):
        make_identity_layer(tiny_vlm.model, path)
    return PlanRunner(tiny_vlm, BAG, Compressor(tiny_vlm.model, int8="none"))


def skip_first(runner: PlanRunner) -> Plan:
    paths = runner.compressor.paths
    return Plan({**{p: "keep" for p in paths}, paths[0]: "skip"})


def test_borrower_when_a_near_question_has_a_plan_then_finds_it(runner, tmp_path):
    cache = PlanCache(tmp_path)
    cache.put(key(runner.vlm, BACKPACK), {"plan": skip_first(runner).to_dict()})

    found = Borrower.find(cache, key(runner.vlm, BAG), (), runner, Ledger())

    assert found is not None and found.source == BACKPACK.question
    assert found.plan == skip_first(runner) and found.similarity > 0


def test_borrower_when_no_other_question_planned_then_finds_nothing(runner, tmp_path):
    assert Borrower.find(PlanCache(tmp_path), key(runner.vlm, BAG), (), runner, Ledger()) \
        is None


def test_borrower_when_the_plan_keeps_the_answers_then_kept_and_paired(runner):
    ledger = Ledger()
    borrower = Borrower(skip_first(runner), BACKPACK.question, 0.8, runner, ledger)
    for frame in range(2):
        crops = make_crops([frame * 2 + 1, frame * 2 + 2], frame=frame)
        borrower.check(crops, runner.full(crops, None), None)

    kept, search, reason = borrower.settle(AdaptiveConfig())

    assert kept and search["agreement"] == 1.0 and search["held_out_crops"] == 4
    assert "borrowed from" in reason
    assert ledger.pair_count == 2 and ledger.seconds["borrow"] > 0
