"""Sinks: the annotated video, events.jsonl, an optional live window, and summary.json.

Sinks are context managers so that a crash or Ctrl-C still closes them: the video is
finalised into a playable file and every event already produced is on disk (JSONL is flushed
line by line). :class:`SinkSet` isolates them: one failing sink is logged and dropped, the
others keep going.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
from loguru import logger

from vidqa.errors import OutputError
from vidqa.messages import Answer, FrameResult

YES_COLOUR = (80, 200, 60)  # BGR green
NO_COLOUR = (60, 60, 230)  # BGR red
TEXT_COLOUR = (230, 160, 40)  # BGR blue: free-form answers
PENDING_COLOUR = (170, 170, 170)  # not answered yet


class Sink(Protocol):
    def write(self, result: FrameResult) -> None: ...

    def close(self) -> None: ...


class StopRequested(Exception):
    """A sink asks the pipeline to stop (the user closed the live window)."""


class AnswerBoard:
    """The latest answer per track and question, forgotten when the cropper ends the track."""

    def __init__(self) -> None:
        self.latest: dict[int, dict[str, Answer]] = {}

    def update(self, result: FrameResult) -> None:
        for answer in result.answers:
            self.latest.setdefault(answer.track_id, {})[answer.question] = answer
        for track_id in result.ended_tracks:
            self.latest.pop(track_id, None)


def annotate(result: FrameResult, board: AnswerBoard) -> np.ndarray:
    """Boxes coloured by answer, with track id, answer and confidence; returns a new image."""
    image = result.frame.image.copy()
    detections = result.detections
    for row, track_id in enumerate(detections.track_id.tolist()):
        x1, y1, x2, y2 = (int(v) for v in detections.xyxy[row])
        answers = list(board.latest.get(track_id, {}).values())
        colour = _colour(answers[0]) if answers else PENDING_COLOUR
        cv2.rectangle(image, (x1, y1), (x2, y2), colour, 2)
        lines = [f"#{track_id}"] + [_label(a) for a in answers]
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


class VideoSink:
    """Annotated video; the writer is created on the first frame so it has the real size."""

    def __init__(self, path: Path, board: AnswerBoard, codec: str = "mp4v") -> None:
        self.path = path
        self.board = board
        self.codec = codec
        self.writer: cv2.VideoWriter | None = None
        self.frames = 0

    def write(self, result: FrameResult) -> None:
        image = annotate(result, self.board)
        if self.writer is None:
            self.writer = self._open(result.frame.fps, result.frame.size)
        self.writer.write(image)
        self.frames += 1

    def _open(self, fps: float, size: tuple[int, int]) -> cv2.VideoWriter:
        writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*self.codec),
                                 fps if fps > 0 else 25.0, size)
        if not writer.isOpened():
            raise OutputError(f"cannot open a {self.codec} video writer for {self.path}: "
                              f"try sinks.codec: MJPG with an .avi name")
        return writer

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
            self.writer = None


class EventsSink:
    """One JSON line per answer, flushed as written, so a crash loses nothing produced."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file = path.open("w", encoding="utf-8")
        self.count = 0

    def write(self, result: FrameResult) -> None:
        for answer in result.answers:
            self.file.write(json.dumps(answer.to_event()) + "\n")
            self.count += 1
        if result.answers:
            self.file.flush()

    def close(self) -> None:
        if not self.file.closed:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()


class WindowSink:
    """A live preview window; press q or Esc to stop the run."""

    def __init__(self, board: AnswerBoard, title: str = "vidqa") -> None:
        self.board = board
        self.title = title

    def write(self, result: FrameResult) -> None:
        cv2.imshow(self.title, annotate(result, self.board))
        if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
            raise StopRequested("live window closed by the user")

    def close(self) -> None:
        cv2.destroyWindow(self.title)


class SinkSet:
    """Feeds every sink; a sink that raises is logged, closed and dropped (the run goes on)."""

    def __init__(self, sinks: Sequence[Sink], board: AnswerBoard) -> None:
        self.sinks = list(sinks)
        self.board = board
        self.failed: dict[str, str] = {}

    def write(self, result: FrameResult) -> None:
        self.board.update(result)
        for sink in list(self.sinks):
            try:
                sink.write(result)
            except StopRequested:
                raise
            except Exception as err:  # one broken sink must not stop the others
                name = type(sink).__name__
                logger.error("{} failed at frame {} and is disabled: {}", name,
                             result.frame.index, err)
                self.failed[name] = str(err)
                self._close(sink)
                self.sinks.remove(sink)

    def close(self) -> None:
        for sink in reversed(self.sinks):
            self._close(sink)

    def __enter__(self) -> SinkSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _close(sink: Sink) -> None:
        try:
            sink.close()
        except Exception as err:
            logger.error("closing {} failed: {}", type(sink).__name__, err)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write JSON atomically: a reader never sees half a summary."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_jsonable) + "\n", encoding="utf-8")
    tmp.replace(path)


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
