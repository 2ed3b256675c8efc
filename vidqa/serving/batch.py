"""The one batch function of every service: group the crops by the questions they ask, answer
each group in one call, hand each crop its answers back (or its group's error)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from loguru import logger

from vidqa.messages import Answer, Crop

# (crops, questions) -> per crop, its answer to each question: BatchAnswerer.answer
AnswerFn = Callable[[Sequence[Crop], Sequence[str]], list[list[Answer]]]


def answer_grouped(answer: AnswerFn, crops: Sequence[Crop],
                   questions: Sequence[tuple[str, ...]]) -> list[list[Answer] | Exception]:
    """Per crop (``questions[i]`` is what crop ``i`` asks), its answers; a group whose call
    raised gets the error instead, so one bad group fails its own crops, not the batch."""
    groups: dict[tuple[str, ...], list[int]] = {}
    for index, asked in enumerate(questions):
        groups.setdefault(asked, []).append(index)
    results: list[list[Answer] | Exception] = [[] for _ in crops]
    for asked, indices in groups.items():
        try:
            per_crop = answer([crops[i] for i in indices], asked)
        except Exception as err:
            logger.opt(exception=True).error("VLM batch of {} crops failed: {}", len(indices),
                                             err)
            for i in indices:
                results[i] = err
            continue
        for i, answers in zip(indices, per_crop, strict=True):
            results[i] = answers
    return results
