"""Answering one question on a batch of ROIs with the full model: the baseline every other
answerer (profiling, compression) is measured against."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from vidqa.config import QuestionConfig
from vidqa.messages import Answer, Roi
from vidqa.vlm.model import VisionLanguageModel, YesNo


def build_answers(rois: Sequence[Roi], question: QuestionConfig, results: Sequence[YesNo | str],
                  seconds: float, model: str, compressed: bool = False,
                  plan_id: str | None = None, extra: dict[str, Any] | None = None
                  ) -> list[Answer]:
    """One :class:`Answer` per ROI; ``seconds`` is the batch's wall time, split evenly."""
    vlm_ms = 1000 * seconds / max(len(rois), 1)
    answers = []
    for roi, result in zip(rois, results, strict=True):
        scored = isinstance(result, YesNo)
        answers.append(Answer(
            frame_index=roi.frame_index, time_s=roi.time_s, track_id=roi.track_id,
            question=question.question, answer=result.answer if scored else result,
            p_yes=result.p_yes if scored else None, margin=result.margin if scored else None,
            bbox=roi.bbox, vlm_ms=vlm_ms, model=model, compressed=compressed,
            plan_id=plan_id, extra=dict(extra or {}), stream_id=roi.stream_id,
        ))
    return answers


def ask(vlm: VisionLanguageModel, question: QuestionConfig, rois: Sequence[Roi],
        max_new_tokens: int) -> tuple[list[YesNo | str], float]:
    """Run one batch through the model as it is now; returns results and wall seconds."""
    images = [roi.image for roi in rois]
    start = time.perf_counter()
    if question.answer == "yesno":
        results: list[YesNo | str] = list(vlm.answer_yes_no(images, question.question))
    else:
        results = list(vlm.answer_text(images, question.question, max_new_tokens))
    return results, time.perf_counter() - start


class FullAnswerer:
    """Answers every ROI of one question with the uncompressed model."""

    def __init__(self, vlm: VisionLanguageModel, question: QuestionConfig,
                 max_new_tokens: int = 16) -> None:
        self.vlm = vlm
        self.question = question
        self.max_new_tokens = max_new_tokens
        self.rois = 0
        self.seconds = 0.0

    def answer(self, rois: Sequence[Roi]) -> list[Answer]:
        results, seconds = ask(self.vlm, self.question, rois, self.max_new_tokens)
        self.rois += len(rois)
        self.seconds += seconds
        return build_answers(rois, self.question, results, seconds, self.vlm.info.name)

    def summary(self) -> dict[str, Any]:
        return {"question": self.question.question, "mode": "full", "vlm_rois": self.rois,
                "vlm_seconds": round(self.seconds, 3)}
