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
from vidqa.vlm.model import VisionLanguageModel


class BatchAnswerer:
    """Answers every question about every crop, ``batch_size`` crops per forward pass.

    When several yes/no questions are asked about the same crops, the crops are prepared once
    and the vision encoder + connector run once per vision plan (:class:`SharedVision`); the
    answers equal those of independent passes.
    """

    def __init__(self, vlm: VisionLanguageModel, cfg: VlmConfig,
                 answerers: list[Answerer] | None = None, share_vision: bool = True) -> None:
        self.vlm = vlm
        self.cfg = cfg
        self.share_vision = share_vision
        self.answerers = answerers if answerers is not None else make_answerers(vlm, cfg)
        self._shared: Counter[str] = Counter()

    def answer(self, crops: Sequence[Crop], questions: Sequence[str] | None = None
               ) -> list[list[Answer]]:
        """Per ROI, its answer to every question (or to those whose text is in
        ``questions``, in the stage's order), ``batch_size`` crops per forward pass."""
        crops = list(crops)
        asked = [a for a in self.answerers
                 if questions is None or a.question.question in questions]
        share = self.share_vision and sum(a.question.answer == "yesno" for a in asked) > 1
        per_crop: list[list[Answer]] = [[] for _ in crops]
        for start in range(0, len(crops), self.cfg.batch_size):
            chunk = crops[start:start + self.cfg.batch_size]
            shared = SharedVision(self.vlm, chunk) if share else None
            for answerer in asked:
                answers = answerer.answer(chunk) if shared is None else \
                    answerer.answer(chunk, shared)
                for offset, answer in enumerate(answers):
                    per_crop[start + offset].append(answer)  # answerers keep the ROIs' order
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

    def summary(self) -> dict[str, Any]:
        """Per question its summary (and, for adaptive ones, the accounting verdict logged)."""
        for answerer in self.answerers:
            if hasattr(answerer, "verdict"):
                logger.info(answerer.verdict())
        return {"model": self.vlm.info.name, "standin": self.vlm.info.standin,
                "encode_s": round(self.vlm.encode_seconds, 3),
                "weight_bytes": self.vlm.weight_bytes(),
                "cuda_graphs": self.vlm.graphs.summary() if self.vlm.graphs else None,
                "vision_reuse": {"features_computed": self._shared["computed"],
                                 "features_reused": self._shared["reused"]},
                "questions": [answerer.summary() for answerer in self.answerers]}
