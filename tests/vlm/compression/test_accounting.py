"""Paired accounting: what was spent, what the full model would have spent, the verdict."""

from __future__ import annotations

import pytest

from vidqa.vlm.compression.accounting import Ledger


def ledger(planning: float = 0.0, audits: bool = True) -> Ledger:
    book = Ledger()
    book.add("full", 10.0, 10)  # profiled tracks, full model
    book.add("confirm", planning)
    book.add("compressed", 20.0, 40)  # 0.5 s per ROI
    if audits:
        book.add("audit_compressed", 2.0, 4)
        book.add("audit", 4.0, 4)
        book.pair(4.0, 2.0, 4, "audit")
    book.pair(10.0, 6.0, 10, "profile")
    return book


def test_paired_ratio_when_audits_exist_prefers_them_over_profiled_batches():
    assert ledger().paired_ratio() == (2.0, "audit")
    assert ledger(audits=False).paired_ratio() == (pytest.approx(10 / 6), "profile")


def test_full_equivalent_when_compressed_prices_only_unaudited_batches_by_the_ratio():
    # full 10 s + audit full side 4 s + compressed 20 s x 2.0
    assert ledger().full_equivalent_s() == pytest.approx(54.0)


@pytest.mark.parametrize(("planning", "word"), [(1.0, "saved"), (40.0, "LOST")])
def test_verdict_when_planning_costs_more_than_it_saved_says_so(planning, word):
    book = ledger(planning)
    assert word in book.verdict("backpack")
    assert (book.summary()["net_saving_s"] < 0) == (word == "LOST")


def test_break_even_when_plan_saves_per_crop_divides_planning_by_the_saving():
    book = ledger(planning=9.0)
    # per ROI: compressed 0.5 s (pairs), full 1.0 s, audit share 4/44
    expected = 9.0 / (1.0 - 0.5 - (4 / 44) * 1.0)
    assert book.break_even_crops() == pytest.approx(expected)


def test_full_equivalent_when_nothing_priced_the_compressed_answers_is_none():
    book = Ledger()
    book.add("compressed", 5.0, 10)
    assert book.full_equivalent_s() is None
    assert "no saving is claimed" in book.verdict("q")
