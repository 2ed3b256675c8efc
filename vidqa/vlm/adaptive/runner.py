"""One question's batches run under a plan: the full model, a plan's layers swapped in and
back, a plan's own compiled module, or a plan's CUDA graphs — the one place the adaptive parts
ask the model."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vidqa.config import QuestionConfig
from vidqa.messages import Answer, Crop
from vidqa.vlm.answerers import Asked, SharedVision, ask, build_answers
from vidqa.vlm.compression.compiled import CompiledPlans
from vidqa.vlm.compression.compressor import Compressor
from vidqa.vlm.compression.plan import Plan, tower_of
from vidqa.vlm.graphs import PlanGraphs
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
    graphs: PlanGraphs | None = None  # CUDA: each plan's graphs (yes/no questions)

    @property
    def full_plan(self) -> Plan:
        return Plan.keep_all(self.compressor.paths)

    @property
    def bodies(self) -> CompiledPlans | PlanGraphs | None:
        """What runs plans in place of swapped layers (compiled modules or CUDA graphs): its
        first pass of a plan builds it, so the full model is timed the same way in pairs."""
        if self.question.answer != "yesno":
            return None
        return self.compiled if self.compiled is not None else self.graphs

    def traced(self, crops: Sequence[Crop], shared: SharedVision | None,
               trace: StreamProfile) -> Asked:
        """The full model, eager, with the profiling hooks of ``trace``."""
        return ask(self.vlm, self.question, list(crops), self.max_new_tokens, shared,
                   trace=trace)

    def full(self, crops: Sequence[Crop], shared: SharedVision | None) -> Asked:
        """The full model on a batch: compiled or graphed like the plans (fair pairs)."""
        if self.bodies is not None:
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
        if self.bodies is not None and (graphs := self.graphs.body(plan)) is not None:
            try:
                asked = ask(self.vlm, self.question, list(crops), self.max_new_tokens, shared,
                            key, body=graphs, tile=plan.tile)
            except RuntimeError as err:  # a pass the plan's layers make uncapturable
                self.graphs.failed(plan, err)
            else:
                self.graphs.mark_built(plan)
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
