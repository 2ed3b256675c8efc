"""The VLM stage: batches the ROIs of each frame and hands them to one answerer per question.

The answerer is the seam for the research idea: :class:`~vidqa.vlm.answerers.FullAnswerer` runs
the whole model, :class:`~vidqa.vlm.adaptive.AdaptiveAnswerer` profiles the first tracks of its
question, then compresses and audits. Both have ``answer(rois) -> list[Answer]`` and ``summary()``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

from vidqa.config import QuestionConfig, VlmConfig
from vidqa.messages import Answer, FrameResult, Roi
from vidqa.vlm.answerers import FullAnswerer
from vidqa.vlm.model import VisionLanguageModel


class Answerer(Protocol):
    def answer(self, rois: list[Roi]) -> list[Answer]: ...

    def summary(self) -> dict[str, Any]: ...


class VlmStage:
    """Answers every question about every ROI, ``batch_size`` crops per forward pass."""

    def __init__(self, vlm: VisionLanguageModel, cfg: VlmConfig,
                 answerers: list[Answerer] | None = None) -> None:
        self.vlm = vlm
        self.cfg = cfg
        self.answerers = answerers if answerers is not None else \
            [make_answerer(vlm, question, cfg) for question in cfg.questions]

    def update(self, result: FrameResult) -> FrameResult:
        if not result.rois:
            return result
        answers: list[Answer] = []
        rois = list(result.rois)
        for answerer in self.answerers:
            for start in range(0, len(rois), self.cfg.batch_size):
                answers += answerer.answer(rois[start:start + self.cfg.batch_size])
        return dataclasses.replace(result, answers=result.answers + tuple(answers))

    def __call__(self, results: Iterable[FrameResult]) -> Iterator[FrameResult]:
        for result in results:
            yield self.update(result)

    def summary(self) -> dict[str, Any]:
        return {"model": self.vlm.info.name, "standin": self.vlm.info.standin,
                "weight_bytes": self.vlm.weight_bytes(),
                "questions": [answerer.summary() for answerer in self.answerers]}


def make_answerer(vlm: VisionLanguageModel, question: QuestionConfig, cfg: VlmConfig) -> Answerer:
    """The adaptive answerer when ``vlm.adaptive`` is on, else the full model."""
    adaptive = cfg.adaptive
    if adaptive.enabled and adaptive.mode != "off":
        from vidqa.vlm.adaptive import AdaptiveAnswerer  # the compression machinery loads lazily

        return AdaptiveAnswerer(vlm, question, adaptive, max_new_tokens=cfg.max_new_tokens)
    return FullAnswerer(vlm, question, cfg.max_new_tokens)
