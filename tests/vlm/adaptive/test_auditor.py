"""The auditor alone: when a batch is audited, how agreement is counted, when a plan fails."""

from __future__ import annotations

import pytest
from factories import make_crops, scripted_answers

from vidqa.config import AdaptiveConfig
from vidqa.vlm.adaptive.auditor import Auditor
from vidqa.vlm.compression.accounting import Ledger


@pytest.mark.parametrize(("compressed", "audited", "batch", "due"), [
    (6, 1, 2, True),  # 1 audited of 9: below 1 in 4
    (6, 3, 2, False),  # 3 audited of 11: enough
    (0, 0, 1, True),  # the first batch
])
def test_auditor_when_audits_fall_behind_one_in_every_then_due(compressed, audited, batch, due):
    ledger = Ledger()
    ledger.add("compressed", 1.0, compressed)
    ledger.add("audit_compressed", 1.0, audited)
    ledger.add("audit", 1.0, audited)

    assert Auditor(AdaptiveConfig(audit_every=4), ledger).due(batch) == due


def test_auditor_when_audits_never_then_never_due():
    assert not Auditor(AdaptiveConfig(audit_every=0), Ledger()).due(100)


def test_auditor_when_answers_disagree_then_full_answers_marked_and_plan_falls_short():
    auditor = Auditor(AdaptiveConfig(audit_window=4, target_agreement=0.75), Ledger())
    crops = make_crops([2, 3, 4, 5])  # even tracks answer "yes" in the scripted answers
    reference = [a[0] for a in scripted_answers(crops, ["q"])]
    compressed = [a.__class__(**{**a.__dict__, "answer": "yes"}) for a in reference]

    judged = auditor.judge(compressed, reference, plan_id="p1")

    assert [a.extra["audit_agree"] for a in judged] == [True, False, True, False]
    assert [a.answer for a in judged] == [a.answer for a in reference]  # the full answers
    assert all(a.plan_id == "p1" and a.extra["phase"] == "audit" for a in judged)
    assert "audit agreement 50%" in auditor.shortfall()
    assert auditor.summary() == {"audit": 0.5, "audited_crops": 4, "rolling": 0.5}


def test_auditor_when_agreement_recovers_in_the_window_then_no_shortfall():
    auditor = Auditor(AdaptiveConfig(audit_window=2, target_agreement=0.75), Ledger())
    crops = make_crops([2, 3])
    reference = [a[0] for a in scripted_answers(crops, ["q"])]
    auditor.judge([reference[1], reference[0]], reference, "p")  # both disagree ...
    auditor.judge(reference, reference, "p")  # ... then both agree: the window forgets

    assert auditor.shortfall() is None
    assert auditor.summary()["audit"] == 0.5 and auditor.summary()["rolling"] == 1.0
