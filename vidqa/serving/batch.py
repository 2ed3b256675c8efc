"""The one batch function of every service: group the crops by the questions they ask, answer
each group in one call, hand each crop its answers back (or its error).

A group whose call raises is asked again one crop at a time: one bad crop (or a passing fault)
then costs that crop, not the batch it shared with the other streams' crops.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from loguru import logger

from vidqa.messages import Answer, Crop

# (crops, questions) -> per crop, its answer to each question: BatchAnswerer.answer
AnswerFn = Callable[[Sequence[Crop], Sequence[str]], list[list[Answer]]]

MAX_REASONS = 20  # distinct failure reasons kept; the rest are counted under "other"
REASON_CHARS = 120


class Failures:
    """Crops asked again on their own and crops that failed, and why, in fixed memory (a run
    lasts weeks: the reasons are a Counter of at most :data:`MAX_REASONS` keys)."""

    def __init__(self) -> None:
        self.retried = 0
        self.failed = 0
        self.reasons: Counter[str] = Counter()

    def add(self, error: BaseException) -> None:
        self.failed += 1
        reason = f"{type(error).__name__}: {error}"[:REASON_CHARS]
        if reason not in self.reasons and len(self.reasons) >= MAX_REASONS:
            reason = "other"
        self.reasons[reason] += 1

    def summary(self) -> dict[str, Any]:
        return {"retried_crops": self.retried, "failed_crops": self.failed,
                "failure_reasons": dict(self.reasons.most_common())}


def answer_grouped(answer: AnswerFn, crops: Sequence[Crop], questions: Sequence[tuple[str, ...]],
                   failures: Failures | None = None) -> list[list[Answer] | Exception]:
    """Per crop (``questions[i]`` is what crop ``i`` asks), its answers. A group whose call
    raised is asked again crop by crop; a crop that fails on its own too gets its error."""
    failures = failures if failures is not None else Failures()
    groups: dict[tuple[str, ...], list[int]] = {}
    for index, asked in enumerate(questions):
        groups.setdefault(asked, []).append(index)
    results: list[list[Answer] | Exception] = [[] for _ in crops]
    for asked, indices in groups.items():
        try:
            per_crop = answer([crops[i] for i in indices], asked)
        except Exception as err:
            logger.opt(exception=True).error("VLM batch of {} crops failed ({}); asking each "
                                             "crop again on its own", len(indices), err)
            for i in indices:
                results[i] = _alone(answer, crops[i], asked, failures)
            continue
        for i, answers in zip(indices, per_crop, strict=True):
            results[i] = answers
    return results


def _alone(answer: AnswerFn, crop: Crop, asked: tuple[str, ...],
           failures: Failures) -> list[Answer] | Exception:
    failures.retried += 1
    try:
        return answer([crop], asked)[0]
    except Exception as err:
        logger.error("VLM crop of track {} (frame {}) failed on its own too: {}", crop.track_id,
                     crop.frame_index, err)
        failures.add(err)
        return err
