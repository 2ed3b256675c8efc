"""The annotated video, written as frames arrive and finalised into a playable file on close."""

from __future__ import annotations

from pathlib import Path

import cv2

from vidqa.errors import OutputError
from vidqa.messages import FrameResult
from vidqa.sinks.annotation import AnswerBoard, annotate


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
            self.writer = open_writer(self.path, result.frame.fps, result.frame.size, self.codec)
        self.writer.write(image)
        self.frames += 1

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
            self.writer = None


def open_writer(path: Path, fps: float, size: tuple[int, int], codec: str) -> cv2.VideoWriter:
    """A video writer for frames of ``size`` (width, height); raises OutputError if it fails."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec),
                             fps if fps > 0 else 25.0, size)
    if not writer.isOpened():
        raise OutputError(f"cannot open a {codec} video writer for {path}: "
                          f"try sinks.codec: MJPG with an .avi name")
    return writer
