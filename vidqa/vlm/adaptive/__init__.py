"""Query-adaptive compression, one question at a time: profile its first tracks, plan only what
pays, compress, audit (:class:`AdaptiveAnswerer`, composed of a :class:`~.planner.Planner`, a
:class:`~.borrower.Borrower` and an :class:`~.auditor.Auditor` that share a
:class:`~.runner.PlanRunner`); :func:`plan_offline` plans ahead of a run."""

from vidqa.vlm.adaptive.answerer import AdaptiveAnswerer, AlwaysProfile, PlanGate
from vidqa.vlm.adaptive.offline import plan_offline

__all__ = ["AdaptiveAnswerer", "AlwaysProfile", "PlanGate", "plan_offline"]
