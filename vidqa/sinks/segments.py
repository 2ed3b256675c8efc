"""Recording in segments: the annotated video and its MOT rows cut into pieces of a few seconds
of stream time, each file complete and playable on its own, so that retention can delete the
oldest while a camera runs for weeks.

Files are ``<folder>/segments/<name>.mp4`` and ``<name>.mot.txt``; ``<name>`` is the UTC wall
time of the segment's first frame and a counter (``20261203T231500Z-0001``), so names sort by
time and a restarted run writing into the same folder takes the next free counter.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import cv2
from loguru import logger

from vidqa.messages import FrameResult, Segment, VideoFrame
from vidqa.sinks.annotation import AnswerBoard, annotate
from vidqa.sinks.mot import mot_rows
from vidqa.sinks.video import open_writer, reserve_name, utc_stamp

OUTAGE_S = 2.0  # a camera silence longer than this ends the segment: its time would be a lie


@dataclass
class _Piece:
    """The segment being written."""

    name: str
    video: Path | None
    mot: Path | None
    writer: cv2.VideoWriter | None
    mot_file: TextIO | None
    size: tuple[int, int]
    first_frame: int
    started_s: float
    wall_started: float
    last_frame: int = -1
    ended_s: float = 0.0
    frames: int = 0

    def files(self) -> list[Path]:
        return [path for path in (self.video, self.mot) if path is not None]

    def release(self) -> None:
        if self.writer is not None:
            self.writer.release()  # writes the index: the file is playable from here on
        if self.mot_file is not None:
            self.mot_file.close()


class SegmentSink:
    """Annotated video and ``mot.txt`` rows in segments of ``segment_s`` seconds of stream time.

    A segment also ends when the frame size changes, after an outage longer than ``outage_s``
    or when the stream time goes back (a looped file). Each closed segment is released and
    reported to ``on_segment``; an exception there is logged and the recording goes on.
    ``board`` None draws the boxes without answers.
    """

    def __init__(self, folder: Path, stream_id: str, segment_s: float,
                 on_segment: Callable[[Segment], None], board: AnswerBoard | None = None,
                 codec: str = "mp4v", video: bool = True, mot: bool = True, *,
                 outage_s: float = OUTAGE_S, clock: Callable[[], float] = time.time) -> None:
        if segment_s <= 0:
            raise ValueError(f"segment_s must be > 0 seconds, got {segment_s}; record one "
                             f"unbounded file with VideoSink and MotSink instead")
        if not (video or mot):
            raise ValueError("SegmentSink needs video=True or mot=True: nothing to record")
        self.folder = folder / "segments"  # created with the first segment
        self.stream_id = stream_id
        self.segment_s = segment_s
        self.on_segment = on_segment
        self.board = board if board is not None else AnswerBoard()
        self.codec = codec
        self.video = video
        self.mot = mot
        self.outage_s = outage_s
        self.clock = clock  # epoch seconds: names and wall times
        self.segments = 0  # segments closed and reported
        self.callback_errors = 0
        self._piece: _Piece | None = None
        self._logged_errors: set[str] = set()

    def write(self, result: FrameResult) -> None:
        frame = result.frame
        if self._piece is not None and self._ends_before(self._piece, frame):
            self._finish()
        if self._piece is None:
            self._piece = self._start(frame)
        self._add(self._piece, result)

    def close(self) -> None:
        if self._piece is not None:
            self._finish()

    def __enter__(self) -> SegmentSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ends_before(self, piece: _Piece, frame: VideoFrame) -> bool:
        """Whether ``frame`` belongs in a new segment."""
        return (frame.timestamp - piece.started_s >= self.segment_s
                or frame.timestamp < piece.ended_s
                or frame.gap_s > self.outage_s
                or frame.size != piece.size)

    def _start(self, frame: VideoFrame) -> _Piece:
        wall = self.clock()
        name = self._reserve_name(wall)
        video = self.folder / f"{name}.mp4" if self.video else None
        mot = self.folder / f"{name}.mot.txt" if self.mot else None
        try:
            writer = open_writer(video, frame.fps, frame.size, self.codec) if video else None
        except Exception:
            video.unlink(missing_ok=True)  # the name was reserved with an empty file
            raise
        mot_file = mot.open("w", encoding="utf-8") if mot else None
        return _Piece(name, video, mot, writer, mot_file, frame.size, frame.frame_index,
                      frame.timestamp, wall)

    def _reserve_name(self, wall: float) -> str:
        """The first free ``<UTC time>-<counter>``, taken by creating its first file."""
        suffixes = [".mp4", ".mot.txt"] if self.video else [".mot.txt", ".mp4"]
        return reserve_name(self.folder, utc_stamp(wall), suffixes)

    def _add(self, piece: _Piece, result: FrameResult) -> None:
        frame = result.frame
        if piece.writer is not None:
            piece.writer.write(annotate(result, self.board))
        if piece.mot_file is not None:
            rows = mot_rows(frame.frame_index, result.detections)
            if rows:
                piece.mot_file.write("\n".join(rows) + "\n")
                piece.mot_file.flush()
        piece.last_frame, piece.ended_s = frame.frame_index, frame.timestamp
        piece.frames += 1

    def _finish(self) -> None:
        piece, self._piece = self._piece, None
        piece.release()
        if piece.frames == 0:  # opened by a frame that failed to write: nothing worth keeping
            for path in piece.files():
                path.unlink(missing_ok=True)
            return
        files = piece.files()
        segment = Segment(
            stream_id=self.stream_id, video=str(piece.video) if piece.video else "",
            files=tuple(str(path) for path in files), first_frame=piece.first_frame,
            last_frame=piece.last_frame, frames=piece.frames, started_s=piece.started_s,
            ended_s=piece.ended_s, wall_started=piece.wall_started, wall_ended=self.clock(),
            bytes=sum(path.stat().st_size for path in files))
        self.segments += 1
        logger.debug("{}: segment {} closed, {} frames", self.stream_id, piece.name, piece.frames)
        self._report(segment)

    def _report(self, segment: Segment) -> None:
        try:
            self.on_segment(segment)
        except Exception as err:  # the index is the store's business: recording goes on
            self.callback_errors += 1
            kind = type(err).__name__
            if kind not in self._logged_errors:  # once per kind: it may fail every segment
                self._logged_errors.add(kind)
                logger.opt(exception=err).error("{}: on_segment failed for {} ({}); recording "
                                                "goes on, later {} are not logged",
                                                self.stream_id, segment.video or segment.files[0],
                                                err, kind)
