"""Borrowing: a question with no plan of its own tries the plan of the nearest cached (or plan
file) question on its first tracks — answered full and under the borrowed plan, compared — and
keeps it only if it agreed on those held-out tracks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from loguru import logger

from vidqa.config import AdaptiveConfig
from vidqa.messages import Crop
from vidqa.vlm.adaptive.runner import PlanRunner
from vidqa.vlm.answerers import Asked, SharedVision
from vidqa.vlm.compression.accounting import Ledger
from vidqa.vlm.compression.orders import compare
from vidqa.vlm.compression.plan import Plan
from vidqa.vlm.compression.plan_cache import PlanCache
from vidqa.vlm.compression.plan_library import LibraryPlan, nearest


class Borrower:
    """One borrowed plan on trial: its answers beside the full model's, batch by batch."""

    def __init__(self, plan: Plan, source: str, similarity: float, runner: PlanRunner,
                 ledger: Ledger) -> None:
        self.plan = plan
        self.source = source  # the question it was planned for
        self.similarity = similarity
        self.runner = runner
        self.ledger = ledger
        self._checks: list[tuple[np.ndarray, np.ndarray]] = []  # (full, borrowed) margins

    @classmethod
    def find(cls, cache: PlanCache, key: dict[str, Any], library: Sequence[LibraryPlan],
             runner: PlanRunner, ledger: Ledger) -> Borrower | None:
        """The nearest cached (or library) question's plan, if it compresses this model."""
        others = {e["key"]["question"]: e for e in cache.neighbours(key)
                  if "plan" in e and e.get("accepted", True)}
        others.update({entry.question: {"plan": entry.plan.to_dict()} for entry in library})
        best = nearest(runner.question.question, others)
        if best is None or best[1] <= 0:
            return None
        try:
            plan = runner.compressor.effective(Plan.from_dict(others[best[0]]["plan"]))
        except (KeyError, ValueError, LookupError):
            return None
        if not plan.compressed:
            return None
        logger.info("question {!r}: trying the plan of {!r} (similarity {:.2f}) on its first "
                    "tracks", runner.question.label, best[0], best[1])
        return cls(plan, best[0], best[1], runner, ledger)

    def check(self, crops: Sequence[Crop], full: Asked, shared: SharedVision | None) -> None:
        """The borrowed plan on the batch ``full`` answered: paired, margins kept."""
        borrowed = self.runner.plan(crops, self.plan, shared)
        self.ledger.add("borrow", borrowed.seconds)
        self.ledger.pair(full.standalone_s, borrowed.standalone_s, len(crops), "profile")
        self._checks.append((np.asarray([r.margin for r in full.results]),
                             np.asarray([r.margin for r in borrowed.results])))

    def settle(self, cfg: AdaptiveConfig) -> tuple[bool, dict[str, Any], str]:
        """(kept, the search as the summary reports it, why)."""
        full = np.concatenate([f for f, _ in self._checks])
        borrowed = np.concatenate([b for _, b in self._checks])
        agreement, dp = compare(borrowed, full)
        search = {"mode": "borrow", "from": self.source,
                  "similarity": round(self.similarity, 3), "held_out_crops": int(full.size),
                  "agreement": round(agreement, 4), "mean_dp_yes": round(dp, 5)}
        if agreement >= cfg.target_agreement and dp <= cfg.max_dp_yes:
            return True, search, (f"borrowed from {self.source!r}: agreement {agreement:.0%} "
                                  f"on {full.size} held-out ROIs")
        logger.info("question {!r}: borrowed plan of {!r} agreed {:.0%} (|dp| {:.3f}): "
                    "planning its own", self.runner.question.label, self.source, agreement, dp)
        return False, search, ""
