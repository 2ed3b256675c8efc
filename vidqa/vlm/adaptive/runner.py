"""One question's batches run under a plan: the full model, a plan's layers swapped in and
back, or a plan's own compiled module — the one place the adaptive parts ask the model."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vidqa.config import QuestionConfig
from vidqa.messages import Answer, Crop
from vidqa.vlm.answerers import Asked, SharedVision, ask, build_answers
from vidqa.vlm.compression.compiled import CompiledPlans
from vidqa.vlm.compression.compressor import Compressor
from vidqa.vlm.compression.plan import Plan, tower_of
from vidqa.vlm.model import VisionLanguageModel
from vidqa.vlm.profiling.stream import StreamProfile


@dataclass
class PlanRunner:
    """Asks one question about a batch, under the full model or a plan."""

    vlm: VisionLanguageModel
    question: QuestionConfig
    compressor: Compressor
    max_new_tokens: int = 16
    compiled: CompiledPlans | None = None

    @property
    def full_plan(self) -> Plan:
        return Plan.keep_all(self.compressor.paths)

    def traced(self, crops: Sequence[Crop], shared: SharedVision | None,
               trace: StreamProfile) -> Asked:
        """The full model, eager, with the profiling hooks of ``trace``."""
        return ask(self.vlm, self.question, list(crops), self.max_new_tokens, shared,
                   trace=trace)

    def full(self, crops: Sequence[Crop], shared: SharedVision | None) -> Asked:
        """The full model on a batch: compiled like the plans when compiling (fair pairs)."""
        if self.compiled is not None and self.question.answer == "yesno":
            return self.plan(crops, self.full_plan, shared)
        return ask(self.vlm, self.question, list(crops), self.max_new_tokens, shared)

    def plan(self, crops: Sequence[Crop], plan: Plan, shared: SharedVision | None) -> Asked:
        """A batch under ``plan``: its compiled module, or its layers swapped in and back."""
        key = vision_key(plan)
        if self.compiled is not None:
            asked = ask(self.vlm, self.question, list(crops), self.max_new_tokens, shared, key,
                        body=self.compiled.body(plan), tile=plan.tile)
            self.compiled.mark_built(plan)
            return asked
        with self.compressor.using(plan):
            return ask(self.vlm, self.question, list(crops), self.max_new_tokens, shared, key,
                       tile=plan.tile)

    def answers(self, crops: Sequence[Crop], asked: Asked, phase: str, plan: Plan | None = None
                ) -> list[Answer]:
        """The answer events of a batch, marked with the phase (and plan) they came from."""
        return build_answers(list(crops), self.question, asked.results, asked.seconds,
                             self.vlm.info.name, compressed=plan is not None,
                             plan_id=None if plan is None else plan.id, extra={"phase": phase})


def vision_key(plan: Plan) -> str:
    """The vision part of a plan (its vision layers and tile): questions whose plans share it
    share one vision pass."""
    return Plan({p: op for p, op in plan.ops.items() if tower_of(p) == "vision"},
                tile=plan.tile).id
