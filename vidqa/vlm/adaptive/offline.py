"""Planning ahead of a run (``vidqa plan``): a question's plan from sample crops, for a plan
file that later runs load instead of planning."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from vidqa.config import AdaptiveConfig, QuestionConfig
from vidqa.messages import Crop
from vidqa.vlm.adaptive.answerer import AdaptiveAnswerer
from vidqa.vlm.compression.plan_cache import PlanCache
from vidqa.vlm.model import VisionLanguageModel


def plan_offline(vlm: VisionLanguageModel, question: QuestionConfig, crops: Sequence[Crop],
                 cfg: AdaptiveConfig, batch_size: int = 8) -> dict[str, Any]:
    """Plan ``question`` ahead of time on sample crops (``vidqa plan``): the first
    ``cfg.profile_tracks`` tracks are profiled and candidates confirmed as in a stream that
    will last (the plan is for later runs); every later crop is a held-out audit, answered
    both ways. Returns a plan-file entry."""
    cfg = dataclasses.replace(cfg, borrow=False, cache_dir="off", mode="auto",
                              audit_window=max(len(crops), 1))
    answerer = AdaptiveAnswerer(vlm, question, cfg, cache=PlanCache(None))
    answerer.expect(crops=10**6)  # made to be reused: it pays over the runs that load it
    for start in range(0, len(crops), batch_size):
        if answerer.phase != "profile":  # planned as the stream audits; checked on all the rest
            answerer.cfg = answerer.auditor.cfg = dataclasses.replace(cfg, audit_every=1)
        answerer.answer(list(crops[start:start + batch_size]))
    summary = answerer.summary()
    trials = (answerer.search or {}).get("trials", [])
    return {"question": question.question, "plan": answerer.plan.to_dict(),
            "reason": summary["reason"], "phase": summary["phase"],
            "agreement_profiled": next((t["agreement"] for t in trials if t["accepted"]), None),
            "agreement_held_out": summary["agreement"]["audit"],
            "held_out_crops": summary["agreement"]["audited_crops"],
            "paired_ratio": summary["accounting"]["paired_ratio"],
            "planning_s": summary["accounting"]["planning_s"], "crops": len(crops)}
