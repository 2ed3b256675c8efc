"""Clips around alerts: a few seconds of annotated video before and after each alert, written
as a WebM file that a browser plays, so a person sees what happened, not only a snapshot.

Only a stream with rules keeps them. Its thread draws the overlay (shared with the other sinks
of the frame), scales it down to ``alerts.clip_width`` and encodes it as JPEG; a clip thread per
stream takes it from a bounded queue. While no clip is being written the thread keeps the
frames in a ring buffer of ``clip_pre_s`` seconds, never more than ``clip_buffer_mb`` (the
oldest go first). An alert starts a clip with the buffered frames of the ``clip_pre_s`` before
it, and the clip goes on until ``clip_post_s`` after it; an alert while a clip is being written
extends that clip (both alerts show it; no frame is written twice), up to ``clip_max_s``.

A file's frames wait for the queue (nothing is lost); a live stream's are dropped when the
queue is full, counted, and an alert on a dropped frame starts its clip at the next frame that
gets through. A stop finishes the clip in progress: the file is closed, so it plays.

The finished clip is reported to ``on_clip`` (the store indexes it and points its alerts at
it) from the stream's thread, at its next frame or when the sink closes.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from loguru import logger

from vidqa.config import AlertsConfig
from vidqa.errors import OutputError
from vidqa.messages import Clip, FrameResult
from vidqa.sinks.annotation import AnswerBoard, annotate
from vidqa.sinks.video import open_writer, reserve_name, utc_stamp

# VP8 in WebM: this OpenCV's FFmpeg writes it and every browser plays it (it has no H.264
# encoder). Opening the writer prints "tag 0x30385056/'VP80' is not supported with codec id 139
# and format 'webm / WebM'" once per file: harmless, the muxer uses WebM's own codec id.
CODEC = "VP80"
SUFFIX = ".webm"
JPEG_QUALITY = 80  # frames in the queue and the ring buffer
DEFAULT_FPS = 25.0  # a source that does not say its frame rate
TOLERANCE_S = 1e-6  # frame times are index / fps: 5.0 - 0.1 * 50 must count as 0
HAND_OVER_S = 0.5  # how often a waiting put checks that the clip thread still lives
JOIN_S = 60.0  # a stop waits this long for the clip thread to close its file

AlertKey = tuple[str, int, int]  # (rule, track id, frame): names an alert's row


@dataclass(frozen=True)
class Buffered:
    """One annotated frame on its way to a clip: JPEG bytes and where it was in the stream."""

    jpeg: bytes
    frame_index: int
    time_s: float
    fps: float
    wall: float  # epoch seconds the stream had it
    alerts: tuple[AlertKey, ...] = ()  # the alerts raised at this frame


class RingBuffer:
    """The newest ``seconds`` of frames, never more than ``max_bytes`` of JPEG: when either
    bound is passed the oldest frames go first."""

    def __init__(self, seconds: float, max_bytes: int) -> None:
        self.seconds = seconds
        self.max_bytes = max_bytes
        self.frames: deque[Buffered] = deque()
        self.bytes = 0
        self.peak_bytes = 0  # the most it ever held
        self.evicted_for_size = 0  # frames dropped by the cap, not by age

    def push(self, frame: Buffered) -> None:
        self.frames.append(frame)
        self.bytes += len(frame.jpeg)
        oldest_kept = frame.time_s - self.seconds - TOLERANCE_S
        while self.frames and (self.bytes > self.max_bytes
                               or self.frames[0].time_s < oldest_kept):
            if self.bytes > self.max_bytes:
                self.evicted_for_size += 1
            self.bytes -= len(self.frames.popleft().jpeg)
        self.peak_bytes = max(self.peak_bytes, self.bytes)

    def take(self, since_s: float) -> list[Buffered]:
        """The frames from ``since_s`` on; the buffer is emptied (they go into a clip)."""
        frames = [f for f in self.frames if f.time_s >= since_s - TOLERANCE_S]
        self.clear()
        return frames

    def clear(self) -> None:
        self.frames.clear()
        self.bytes = 0


@dataclass
class _Recording:
    """The clip being written."""

    path: Path
    relative: str
    writer: cv2.VideoWriter
    size: tuple[int, int]  # (width, height) of every frame in it
    fps: float
    first_frame: int
    started_s: float
    wall_started: float
    end_s: float  # it ends with the first frame at or after this stream time
    limit_s: float  # clip_max_s after its first frame
    alerts: list[AlertKey] = field(default_factory=list)
    capped: bool = False  # an alert wanted it longer than clip_max_s
    frames: int = 0
    last_frame: int = -1
    ended_s: float = 0.0


class ClipSink:
    """A stream's alert clips, under ``<folder>/clips/<stream>/`` (``folder``: the store's);
    see the module doc. ``summary()`` counts what it wrote and dropped."""

    def __init__(self, folder: Path, stream_id: str, cfg: AlertsConfig,
                 on_clip: Callable[[Clip], None], board: AnswerBoard | None = None,
                 live: bool = False) -> None:
        self.folder = folder
        self.relative_folder = f"clips/{stream_id}"
        self.stream_id = stream_id
        self.cfg = cfg
        self.on_clip = on_clip
        self.board = board if board is not None else AnswerBoard()
        self.live = live  # a full queue drops the frame (a file's frame waits)
        self.ring = RingBuffer(cfg.clip_pre_s, int(cfg.clip_buffer_mb * 1e6))
        self.counts = {"clips": 0, "bytes": 0, "frames": 0, "dropped_frames": 0, "failed": 0}
        self._queue: queue.Queue[Buffered | None] = queue.Queue(cfg.clip_queue)
        self._finished: deque[Clip] = deque()  # from the clip thread to the stream's
        self._carry: tuple[AlertKey, ...] = ()  # alerts of a dropped frame
        self._kept_s: float | None = None  # stream time of the last frame kept (clip_fps)
        self._recording: _Recording | None = None
        self._last_s: float | None = None
        self._closed = False
        self._logged: set[str] = set()
        self._thread = threading.Thread(target=self._run, name=f"clips-{stream_id}",
                                        daemon=True)
        self._thread.start()

    # ----------------------------------------------------------------------- stream's thread

    def write(self, result: FrameResult) -> None:
        self._report()
        frame = result.frame
        alerts = self._carry + tuple((a.rule, a.track_id, a.frame_index) for a in result.alerts)
        self._carry = ()
        if not self._due(frame.timestamp, alerts):
            return
        jpeg = encode(scaled(annotate(result, self.board), self.cfg.clip_width))
        item = Buffered(jpeg, frame.frame_index, frame.timestamp, frame.fps, time.time(), alerts)
        if not self._put(item):
            self.counts["dropped_frames"] += 1
            self._carry = alerts

    def close(self) -> None:
        """Finish the clip in progress (its file closed: it plays) and report it; idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._hand_over(None):
            self._thread.join(JOIN_S)
        if self._thread.is_alive():
            logger.error("stream {}: the clip writer did not finish within {:.0f} s; its clip "
                         "may not play", self.stream_id, JOIN_S)
        self._report()

    def summary(self) -> dict[str, Any]:
        return {**self.counts, "buffer_peak_bytes": self.ring.peak_bytes,
                "buffer_cap_bytes": self.ring.max_bytes,
                "buffer_evicted_for_size": self.ring.evicted_for_size}

    def _due(self, time_s: float, alerts: tuple[AlertKey, ...]) -> bool:
        """Whether ``clip_fps`` keeps the frame at ``time_s`` (always, when it has alerts)."""
        if self.cfg.clip_fps <= 0:
            return True
        kept = self._kept_s
        if alerts or kept is None or time_s < kept or \
                time_s - kept >= 1 / self.cfg.clip_fps - TOLERANCE_S:
            self._kept_s = time_s
            return True
        return False

    def _put(self, item: Buffered) -> bool:
        if self._closed:
            return True
        if not self.live:
            return self._hand_over(item)
        try:
            self._queue.put_nowait(item)
            return True
        except queue.Full:
            return False

    def _hand_over(self, item: Buffered | None) -> bool:
        """Wait for room in the queue, as long as the clip thread lives (False: it died)."""
        while self._thread.is_alive():
            try:
                self._queue.put(item, timeout=HAND_OVER_S)
                return True
            except queue.Full:
                continue
        if item is not None:
            raise OutputError(f"stream {self.stream_id}: the clip writer thread has died (see "
                              f"the log); set alerts.clips: false to run without clips")
        return False

    def _report(self) -> None:
        while self._finished:
            clip = self._finished.popleft()
            try:
                self.on_clip(clip)
            except Exception as err:  # the index is the store's business: clips go on
                self._log_once(err, f"on_clip failed for {clip.path}")

    # -------------------------------------------------------------------------- clip thread

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            try:
                self._take(item)
            except Exception as err:  # one bad clip must not end the clips of the stream
                self.counts["failed"] += 1
                self._log_once(err, "a clip failed")
                self._abandon()
        self._finish("end")

    def _take(self, item: Buffered) -> None:
        if self._last_s is not None and item.time_s < self._last_s:  # a looped file
            self._finish("end")
            self.ring.clear()
        self._last_s = item.time_s
        if item.alerts:
            self._extend(item)
        recording = self._recording
        if recording is None:
            self.ring.push(item)
            return
        self._write(recording, item)
        if item.time_s >= recording.end_s - TOLERANCE_S:
            self._finish("max" if recording.capped else "after")

    def _extend(self, item: Buffered) -> None:
        """Start a clip at ``item`` (with the frames buffered before it) or extend the one
        being written; either way it now shows ``item``'s alerts."""
        recording = self._recording or self._start(item)
        wanted = item.time_s + self.cfg.clip_post_s
        recording.capped |= wanted > recording.limit_s + TOLERANCE_S
        recording.end_s = min(max(recording.end_s, wanted), recording.limit_s)
        recording.alerts.extend(item.alerts)

    def _start(self, item: Buffered) -> _Recording:
        before = self.ring.take(item.time_s - self.cfg.clip_pre_s)
        first = before[0] if before else item
        height, width = decode(first.jpeg).shape[:2]
        folder = self.folder / self.relative_folder
        name = reserve_name(folder, f"alert-{utc_stamp(first.wall)}", [SUFFIX])
        path = folder / f"{name}{SUFFIX}"
        fps = self._rate(before, item)
        try:
            writer = open_writer(path, fps, (width, height), CODEC,
                                 fix="this OpenCV cannot write VP8 WebM (FFmpeg with libvpx); "
                                     "install opencv-python from PyPI, or set alerts.clips: "
                                     "false")
        except Exception:
            path.unlink(missing_ok=True)  # the name was reserved with an empty file
            raise
        recording = self._recording = _Recording(
            path, f"{self.relative_folder}/{path.name}", writer, (width, height), fps,
            first.frame_index, first.time_s, first.wall, end_s=item.time_s,
            limit_s=first.time_s + self.cfg.clip_max_s)
        for frame in before:
            self._write(recording, frame)
        return recording

    def _rate(self, before: list[Buffered], item: Buffered) -> float:
        """The rate the clip plays at: the rate its buffered frames were taken (a live
        stream's, after drops and max_fps), else the stream's, at most ``clip_fps``."""
        span = before[-1].time_s - before[0].time_s if len(before) > 1 else 0.0
        rate = (len(before) - 1) / span if span >= 1.0 else (item.fps or DEFAULT_FPS)
        if self.cfg.clip_fps > 0:
            rate = min(rate, self.cfg.clip_fps)
        return round(rate, 3)

    def _write(self, recording: _Recording, item: Buffered) -> None:
        image = decode(item.jpeg)
        if (image.shape[1], image.shape[0]) != recording.size:  # the camera changed its size
            image = cv2.resize(image, recording.size, interpolation=cv2.INTER_LINEAR)
        recording.writer.write(image)
        recording.frames += 1
        recording.last_frame, recording.ended_s = item.frame_index, item.time_s

    def _finish(self, cut: str) -> None:
        recording, self._recording = self._recording, None
        if recording is None:
            return
        recording.writer.release()  # writes the cues: the file plays from here on
        size = recording.path.stat().st_size
        self._finished.append(Clip(
            stream_id=self.stream_id, path=recording.relative, alerts=tuple(recording.alerts),
            first_frame=recording.first_frame, last_frame=recording.last_frame,
            frames=recording.frames, started_s=recording.started_s, ended_s=recording.ended_s,
            fps=recording.fps, wall_started=recording.wall_started, wall_ended=time.time(),
            bytes=size, cut=cut))
        self.counts["clips"] += 1
        self.counts["bytes"] += size
        self.counts["frames"] += recording.frames
        logger.debug("stream {}: clip {} closed ({}), {} frames", self.stream_id,
                     recording.relative, cut, recording.frames)

    def _abandon(self) -> None:
        recording, self._recording = self._recording, None
        if recording is not None:
            recording.writer.release()
            recording.path.unlink(missing_ok=True)

    def _log_once(self, err: Exception, what: str) -> None:
        kind = type(err).__name__
        if kind not in self._logged:  # it may fail for every clip
            self._logged.add(kind)
            logger.opt(exception=err).error("stream {}: {} ({}); clips go on, later {} are not "
                                            "logged", self.stream_id, what, err, kind)


def scaled(image: np.ndarray, width: int) -> np.ndarray:
    """``image`` at most ``width`` wide (0: as it is), both sides even (VP8's 4:2:0 chroma
    halves them). Linear: a fifth of INTER_AREA's time on the stream's thread."""
    height, given = image.shape[:2]
    target = min(given, width) if width else given
    size = (target - target % 2, round(height * target / given) // 2 * 2)
    if size == (given, height):
        return image
    return cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)


def encode(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise OutputError(f"cannot encode a {image.shape} frame as JPEG for a clip")
    return data.tobytes()


def decode(jpeg: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
