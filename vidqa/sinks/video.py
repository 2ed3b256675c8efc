"""The annotated video, written as frames arrive and finalised into a playable file on close."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
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


def open_writer(path: Path, fps: float, size: tuple[int, int], codec: str,
                fix: str = "try sinks.codec: MJPG with an .avi name") -> cv2.VideoWriter:
    """A video writer for frames of ``size`` (width, height); raises OutputError if it fails."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec),
                             fps if fps > 0 else 25.0, size)
    if not writer.isOpened():
        raise OutputError(f"cannot open a {codec} video writer for {path}: {fix}")
    return writer


def utc_stamp(wall: float) -> str:
    """Epoch seconds as a UTC time that sorts as text: ``20261203T231500Z``."""
    return datetime.fromtimestamp(wall, timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def reserve_name(folder: Path, stem: str, suffixes: Sequence[str]) -> str:
    """The first free ``<stem>-<counter>`` (no file of it with any of ``suffixes``), taken by
    creating its first file: exclusively, so another recorder in ``folder`` cannot take it
    too. A restarted run writing into the same folder takes the next counter."""
    folder.mkdir(parents=True, exist_ok=True)
    counter = 1
    while True:
        name = f"{stem}-{counter:04d}"
        paths = [folder / f"{name}{suffix}" for suffix in suffixes]
        if not any(path.exists() for path in paths):
            try:
                paths[0].open("x").close()
                return name
            except FileExistsError:
                pass
        counter += 1
