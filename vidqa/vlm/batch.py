"""Every question about a batch of crops: :class:`BatchAnswerer`, the function the services
(:mod:`vidqa.serving`) call once per batch, with one answerer per question.

The answerer is the seam for the research idea: :class:`~vidqa.vlm.answerers.FullAnswerer` runs
the whole model, :class:`~vidqa.vlm.adaptive.AdaptiveAnswerer` profiles the first tracks of its
question, then compresses and audits. Both have ``answer(crops) -> list[Answer]`` and ``summary()``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from loguru import logger

from vidqa.config import VlmConfig
from vidqa.messages import Answer, Crop
from vidqa.vlm.answerers import Answerer, SharedVision
from vidqa.vlm.factory import make_answerers
from vidqa.vlm.features import FeatureShelf, FeatureTarget
from vidqa.vlm.model import VisionLanguageModel


class BatchAnswerer:
    """Answers every question about every crop, ``batch_size`` crops per forward pass.

    When several yes/no questions are asked about the same crops, the crops are prepared once
    and the vision encoder + connector run once per vision plan (:class:`SharedVision`); the
    answers equal those of independent passes.
    """

    def __init__(self, vlm: VisionLanguageModel, cfg: VlmConfig,
                 answerers: list[Answerer] | None = None, share_vision: bool = True,
                 features: FeatureTarget | None = None) -> None:
        self.vlm = vlm
        self.cfg = cfg
        self.share_vision = share_vision
        self.answerers = answerers if answerers is not None else make_answerers(vlm, cfg)
        # store.features: every crop's full-model vision features, kept on disk
        self.features = FeatureShelf(features, vlm.info) if features is not None else None
        self._shared: Counter[str] = Counter()

    def answer(self, crops: Sequence[Crop], questions: Sequence[str] | None = None
               ) -> list[list[Answer]]:
        """Per ROI, its answer to every question (or to those whose text is in
        ``questions``, in the stage's order), ``batch_size`` crops per forward pass. Crops
        that carry stored features (asked later) are batched apart from those with pixels."""
        crops = list(crops)
        asked = [a for a in self.answerers
                 if questions is None or a.question.question in questions]
        per_crop: list[list[Answer]] = [[] for _ in crops]
        stored = [i for i, crop in enumerate(crops) if crop.features is not None]
        pixels = [i for i, crop in enumerate(crops) if crop.features is None]
        for group in (stored, pixels):
            for start in range(0, len(group), self.cfg.batch_size):
                indices = group[start:start + self.cfg.batch_size]
                answers = self._chunk([crops[i] for i in indices], asked)
                for i, answered in zip(indices, answers, strict=True):
                    per_crop[i] = answered
        return per_crop

    def _chunk(self, chunk: list[Crop], asked: list[Answerer]) -> list[list[Answer]]:
        """One forward pass's crops, every question asked of them."""
        yes_no = [a for a in asked if a.question.answer == "yesno"]
        keep = self.features is not None and bool(yes_no) and chunk[0].features is None
        share = keep or chunk[0].features is not None or (self.share_vision and len(yes_no) > 1)
        shared = SharedVision(self.vlm, chunk) if share else None
        if keep:  # the full model's features, before any plan swaps layers in
            inputs, _ = shared.inputs(yes_no[0].question.question)
            features, _ = shared.features("full", inputs, self.vlm.graphs)
            self.features.put(chunk, features)
        per_crop: list[list[Answer]] = [[] for _ in chunk]
        for answerer in asked:
            answers = answerer.answer(chunk) if shared is None else answerer.answer(chunk, shared)
            for offset, answer in enumerate(answers):
                per_crop[offset].append(answer)  # answerers keep the ROIs' order
        if shared is not None:
            self._shared.update(shared.stats)
        return per_crop

    def expect(self, crops: int | None = None, seconds: float | None = None) -> None:
        """What is still to come — ``crops`` ROIs or ``seconds`` of stream (e.g. a file's
        ``frame_count / fps`` at start): adaptive questions plan only what can pay back."""
        planners = [a for a in self.answerers if hasattr(a, "expect")]
        if planners and seconds is not None:
            logger.info("adaptive planning knows the files' length: {:.0f} s of stream still to "
                        "come", seconds)
        for answerer in planners:
            answerer.expect(crops, seconds)

    def flush(self) -> None:
        """The service is idle, or has answered its last crop: the features gathered are
        written (the batching thread calls it: it alone touches the shelf)."""
        if self.features is not None:
            self.features.flush()

    def summary(self) -> dict[str, Any]:
        """Per question its summary (and, for adaptive ones, the accounting verdict logged)."""
        for answerer in self.answerers:
            if hasattr(answerer, "verdict"):
                logger.info(answerer.verdict())
        return {"model": self.vlm.info.name, "standin": self.vlm.info.standin,
                "features_kept": None if self.features is None else self.features.summary(),
                "encode_s": round(self.vlm.encode_seconds, 3),
                "weight_bytes": self.vlm.weight_bytes(),
                "cuda_graphs": self.vlm.graphs.summary() if self.vlm.graphs else None,
                "vision_reuse": {"features_computed": self._shared["computed"],
                                 "features_reused": self._shared["reused"]},
                "questions": [answerer.summary() for answerer in self.answerers]}
