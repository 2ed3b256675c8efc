"""A live preview window (needs a display); q or Esc stops the run."""

from __future__ import annotations

import cv2

from vidqa.messages import FrameResult
from vidqa.sinks.annotation import AnswerBoard, annotate


class StopRequested(Exception):
    """A sink asks the pipeline to stop (the user closed the live window)."""


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
