"""Audits of a compressed question: whole batches answered both ways (a paired measurement),
the full answers emitted, and the rolling agreement that sends the question back to profiling
when the plan stops keeping its answers."""

from __future__ import annotations

import dataclasses
from collections import deque
from typing import Any

from vidqa.config import AdaptiveConfig
from vidqa.messages import Answer
from vidqa.vlm.compression.accounting import Ledger


class Auditor:
    """When to audit, how audited answers agree, and whether the plan still holds."""

    def __init__(self, cfg: AdaptiveConfig, ledger: Ledger) -> None:
        self.cfg = cfg
        self.ledger = ledger
        self.window: deque[bool] = deque(maxlen=cfg.audit_window)  # the rolling agreement
        self.agreed = 0  # audited answers that agreed, over the whole run
        self.audited = 0

    def due(self, count: int) -> bool:
        """Audit this whole batch when audited ROIs would fall below 1 in ``audit_every``."""
        every = self.cfg.audit_every
        answered = self.ledger.crops["compressed"] + self.ledger.crops["audit_compressed"]
        return bool(every) and self.ledger.crops["audit"] < (answered + count) / every

    def judge(self, compressed: list[Answer], reference: list[Answer], plan_id: str
              ) -> list[Answer]:
        """The full answers of an audited batch, each marked with its agreement."""
        out = []
        for mine, ref in zip(compressed, reference, strict=True):
            agree = ref.answer == mine.answer
            self.window.append(agree)
            self.agreed += agree
            self.audited += 1
            out.append(dataclasses.replace(ref, plan_id=plan_id, extra={
                "phase": "audit", "audit_agree": agree, "compressed_answer": mine.answer,
                "compressed_p_yes": mine.p_yes}))
        return out

    def shortfall(self) -> str | None:
        """Why the plan no longer holds (rolling agreement below the target), or None."""
        rolling = self.rolling()
        if rolling is None or rolling >= self.cfg.target_agreement:
            return None
        return (f"audit agreement {rolling:.0%} over the last {len(self.window)} audited ROIs "
                f"is below the target {self.cfg.target_agreement:.0%}")

    def rolling(self) -> float | None:
        return sum(self.window) / len(self.window) if self.window else None

    def summary(self) -> dict[str, Any]:
        mean = self.agreed / self.audited if self.audited else None
        return {"audit": _round(mean), "audited_crops": self.audited,
                "rolling": _round(self.rolling())}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
