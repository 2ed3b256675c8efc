"""Drawing answers on frames: the latest answer per track, and boxes coloured by it."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

import cv2
import numpy as np

from vidqa.messages import Answer, FrameResult, LatestAnswers

YES_COLOUR = (80, 200, 60)  # BGR green
NO_COLOUR = (60, 60, 230)  # BGR red
TEXT_COLOUR = (230, 160, 40)  # BGR blue: free-form answers
PENDING_COLOUR = (170, 170, 170)  # not answered yet
ALERT_COLOUR = (0, 0, 255)  # BGR red frame around a track that raised an alert
ASKING = "asking..."


class AnswerBoard(LatestAnswers):
    """What the overlay shows per track: its latest answer to each question, or that it is being
    asked, and the rules it raised. Forgotten when the cropper ends the track; an answer that
    arrives after its track ended is not kept (it is still an event), so the board never grows
    with dead tracks."""

    def __init__(self, asking: Callable[[], Collection[int]] = frozenset,
                 zones: Any = None) -> None:
        super().__init__()
        self.asking = asking  # tracks whose crop is with the VLM now
        self.zones = zones  # a vidqa.zones.ZoneMap to draw, or None
        self.alerts: dict[int, list[str]] = {}  # track -> the rules it raised
        self.drawn: tuple[FrameResult, np.ndarray] | None = None  # the last frame's overlay

    def update(self, result: FrameResult) -> None:
        super().update(result)
        for alert in result.alerts:
            self.alerts.setdefault(alert.track_id, []).append(alert.rule)
        for track_id in result.ended_tracks:
            self.alerts.pop(track_id, None)


def annotate(result: FrameResult, board: AnswerBoard) -> np.ndarray:
    """Boxes coloured by answer, with track id, answer and confidence: a new image, drawn once
    per frame and board (the video, the clips and the live view of a frame share it, so no
    one may draw on it)."""
    if board.drawn is not None and board.drawn[0] is result:
        return board.drawn[1]
    image = _draw(result, board)
    board.drawn = (result, image)
    return image


def _draw(result: FrameResult, board: AnswerBoard) -> np.ndarray:
    image = result.frame.image.copy()
    if board.zones is not None:
        board.zones.draw(image)
    detections = result.detections
    asking = board.asking()
    for row, track_id in enumerate(detections.track_id.tolist()):
        x1, y1, x2, y2 = (int(v) for v in detections.xyxy[row])
        answers = list(board.latest.get(track_id, {}).values())
        colour = _colour(answers[0]) if answers else PENDING_COLOUR
        cv2.rectangle(image, (x1, y1), (x2, y2), colour, 2)
        lines = [f"#{track_id}"] + [_label(a) for a in answers]
        if not answers and track_id in asking:
            lines.append(ASKING)
        if track_id in board.alerts:
            cv2.rectangle(image, (x1 - 3, y1 - 3), (x2 + 3, y2 + 3), ALERT_COLOUR, 2)
            lines.append("ALERT " + ", ".join(board.alerts[track_id]))
        for i, line in enumerate(lines):
            _put_label(image, line, (x1, y1 - 4 - 14 * (len(lines) - 1 - i)), colour)
    return image


def _colour(answer: Answer) -> tuple[int, int, int]:
    if answer.p_yes is None:
        return TEXT_COLOUR
    return YES_COLOUR if answer.answer == "yes" else NO_COLOUR


def _label(answer: Answer) -> str:
    if answer.p_yes is None:
        return answer.answer[:32]
    confidence = answer.p_yes if answer.answer == "yes" else 1 - answer.p_yes
    return f"{answer.answer} {confidence:.2f}"


def _put_label(image: np.ndarray, text: str, origin: tuple[int, int], colour) -> None:
    x, y = origin[0], max(origin[1], 12)
    (w, h), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)
    cv2.rectangle(image, (x, y - h - 2), (x + w + 2, y + 2), colour, -1)
    cv2.putText(image, text, (x + 1, y), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1,
                cv2.LINE_AA)
