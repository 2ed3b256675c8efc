"""Answering one question on a batch of ROIs with the full model: the baseline every other
answerer (profiling, compression) is measured against; and the vision pass several questions
about the same crops share (:class:`SharedVision`)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from vidqa.clock import synchronize
from vidqa.config import QuestionConfig
from vidqa.messages import Answer, Crop
from vidqa.vlm.model import VisionLanguageModel, YesNo, to_yes_no


def build_answers(crops: Sequence[Crop], question: QuestionConfig, results: Sequence[YesNo | str],
                  seconds: float, model: str, compressed: bool = False,
                  plan_id: str | None = None, extra: dict[str, Any] | None = None
                  ) -> list[Answer]:
    """One :class:`Answer` per ROI; ``seconds`` is the batch's wall time, split evenly."""
    vlm_ms = 1000 * seconds / max(len(crops), 1)
    answers = []
    for crop, result in zip(crops, results, strict=True):
        scored = isinstance(result, YesNo)
        answers.append(Answer(
            frame_index=crop.frame_index, time_s=crop.time_s, track_id=crop.track_id,
            question=question.question, answer=result.answer if scored else result,
            p_yes=result.p_yes if scored else None, margin=result.margin if scored else None,
            bbox=crop.bbox, vlm_ms=vlm_ms, model=model, compressed=compressed,
            plan_id=plan_id, extra=dict(extra or {}), stream_id=crop.stream_id,
        ))
    return answers


@dataclass
class Asked:
    """What one batch of one question cost: its results, the wall seconds it spent, and the
    seconds it would have spent alone (``standalone_s`` adds the vision pass another question
    paid for; paired measurements compare standalone seconds, so sharing never flatters a
    plan)."""

    results: list[YesNo | str]
    seconds: float
    standalone_s: float


class SharedVision:
    """One batch of crops asked several questions: the pixels are prepared once, and the
    vision encoder + connector run once per vision plan (``vision_key``: the vision part of a
    question's plan, "full" for the full model). Idefics3 takes the features in place of the
    pixels, so every question's answers equal those of its own independent pass.

    Crops asked later from the store carry their full model's features (``Crop.features``):
    then only prompts are prepared, and every question reads those features."""

    def __init__(self, vlm: VisionLanguageModel, crops: Sequence[Crop]) -> None:
        self.vlm = vlm
        self.images = [crop.image for crop in crops]
        self._inputs: dict[tuple[str, int | None], Any] = {}  # (question, tile) -> inputs
        self._features: dict[str, tuple[torch.Tensor, float]] = {}
        self._encode_s: dict[int | None, float] = {}  # tile -> seconds its pixels took
        self.stats: Counter[str] = Counter()
        self.stored = bool(crops) and all(crop.features is not None for crop in crops)
        if self.stored:
            self._features["full"] = (torch.stack([torch.as_tensor(crop.features)
                                                   for crop in crops]).to(vlm.device), 0.0)

    def inputs(self, question: str, tile: int | None = None) -> tuple[Any, float]:
        """Prepared inputs for ``question`` at ``tile`` (None: the model's own) and the
        seconds another question paid for them. Stored features are the whole tile's: their
        prompt is the whole tile's, whatever ``tile`` says."""
        key = (question, tile)
        if key in self._inputs:
            return self._inputs[key], 0.0
        if self.stored:
            inputs = self._inputs[key] = self.vlm.text_inputs(question, len(self.images))
            return inputs, 0.0
        start = time.perf_counter()
        like = next((v for (_, t), v in self._inputs.items() if t == tile), None)
        if like is not None and not self.vlm.image_splitting:
            inputs = self._inputs[key] = self.vlm.prompt_inputs(question, like)
            return inputs, max(0.0, self._encode_s[tile] - (time.perf_counter() - start))
        inputs = self._inputs[key] = self.vlm.encode(self.images, question, tile=tile)
        self._encode_s[tile] = time.perf_counter() - start
        return inputs, 0.0

    def features(self, key: str, inputs: Any, body: Any = None) -> tuple[torch.Tensor, float]:
        """Image features under the vision plan ``key`` (computed now, under whatever plan is
        applied, when missing) and the seconds another question paid for them (0 if now)."""
        if key in self._features:
            self.stats["reused"] += 1
            features, seconds = self._features[key]
            return features, seconds
        synchronize(self.vlm.device)
        start = time.perf_counter()
        features = self.vlm.image_features(inputs, body)
        synchronize(self.vlm.device)
        self._features[key] = (features, time.perf_counter() - start)
        self.stats["computed"] += 1
        return features, 0.0


def ask(vlm: VisionLanguageModel, question: QuestionConfig, crops: Sequence[Crop],
        max_new_tokens: int, shared: SharedVision | None = None, vision_key: str = "full",
        body: Any = None, trace: Any = None, tile: int | None = None) -> Asked:
    """Run one batch through the model as it is now (or through ``body``, a plan's compiled
    module). ``shared``: the batch's shared pixels and vision features; ``trace``: a
    :class:`~vidqa.vlm.profiling.stream.StreamProfile` the pass also profiles into (it runs
    its own vision tower then, whose layers it measures); ``tile``: a plan's smaller tile."""
    images = [crop.image for crop in crops]
    synchronize(vlm.device)
    start = time.perf_counter()
    paid_by_others = 0.0
    if question.answer != "yesno":
        results: list[YesNo | str] = list(vlm.answer_text(images, question.question,
                                                          max_new_tokens))
    else:
        if shared is not None:
            inputs, paid_by_others = shared.inputs(question.question, tile)
        else:
            inputs = vlm.encode(images, question.question, tile=tile)
        if trace is not None:
            from vidqa.vlm.profiling.stream import traced_margins  # profiling loads lazily

            margins = traced_margins(vlm, inputs, trace)
        elif shared is not None:
            features, vision_s = shared.features(vision_key, inputs, body)
            paid_by_others += vision_s
            margins = vlm.margins(inputs, features=features, body=body)
        else:
            margins = vlm.margins(inputs, body=body)
        results = list(to_yes_no(margins))
    synchronize(vlm.device)
    seconds = time.perf_counter() - start
    return Asked(results, seconds, seconds + paid_by_others)


class FullAnswerer:
    """Answers every ROI of one question with the uncompressed model."""

    def __init__(self, vlm: VisionLanguageModel, question: QuestionConfig,
                 max_new_tokens: int = 16, body: Any = None) -> None:
        self.vlm = vlm
        self.body = body  # a compiled full model (yes/no only), or None: the model itself
        self.question = question
        self.max_new_tokens = max_new_tokens
        self.crops = 0
        self.seconds = 0.0

    def answer(self, crops: Sequence[Crop], shared: SharedVision | None = None) -> list[Answer]:
        body = self.body if self.question.answer == "yesno" else None
        asked = ask(self.vlm, self.question, crops, self.max_new_tokens, shared, body=body)
        self.crops += len(crops)
        self.seconds += asked.seconds
        return build_answers(crops, self.question, asked.results, asked.seconds,
                             self.vlm.info.name)

    def summary(self) -> dict[str, Any]:
        return {"question": self.question.question, "mode": "full", "vlm_crops": self.crops,
                "vlm_seconds": round(self.seconds, 3)}


class Answerer(Protocol):
    question: QuestionConfig

    def answer(self, crops: list[Crop], shared: SharedVision | None = None) -> list[Answer]: ...

    def summary(self) -> dict[str, Any]: ...
