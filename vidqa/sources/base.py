"""What every source shares: the `Source` protocol, its stats, and frame conversion."""

from __future__ import annotations

import queue
import threading
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import cv2
import numpy as np
from loguru import logger

from vidqa.errors import SourceError
from vidqa.messages import VideoFrame

DEFAULT_FPS = 30.0  # assumed when a file or stream reports no usable frame rate
READ_AHEAD = 4  # frames a recording decodes ahead of its consumer, on its own thread
T = TypeVar("T")


@dataclass
class SourceStats:
    """What a source saw; :meth:`Source.stats` turns it into the summary's ``source`` entry."""

    source_id: str
    kind: str
    is_live: bool
    fps: float = 0.0
    size: tuple[int, int] | None = None  # (width, height) of the first frame
    frame_count: int | None = None  # frames the file/sequence announces; None for live
    frames_read: int = 0  # decoded from the source
    frames_yielded: int = 0  # handed to the consumer
    last_good_frame: int | None = None  # index of the last frame decoded without error
    reconnects: int = 0  # live: times the stream came back after a loss or a failed first open
    reconnect_attempts: int = 0  # live: open attempts after the first one
    reconnect_reasons: Counter = field(default_factory=Counter)  # why the stream was lost
    stalls: int = 0  # live: losses because no frame came for stall_timeout_s
    stall_s: float = 0.0  # live: seconds without frames during outages (stalls, reconnects)
    outages_s: list[float] = field(default_factory=list)  # live: each outage, newest 100
    loops: int = 0  # replay with loop: times the file or sequence restarted from its start
    decode_s: float = 0.0  # seconds spent reading and decoding frames (on the source's thread)
    end_reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "source_id": self.source_id, "kind": self.kind, "is_live": self.is_live,
            "fps": round(self.fps, 3), "size": list(self.size) if self.size else None,
            "frame_count": self.frame_count, "frames_read": self.frames_read,
            "frames_yielded": self.frames_yielded,
            # live: frames never handed over, because newer ones replaced them or max_fps
            "frames_dropped": max(0, self.frames_read - self.frames_yielded)
            if self.is_live else 0,
            "last_good_frame": self.last_good_frame, "reconnects": self.reconnects,
            "reconnect_attempts": self.reconnect_attempts,
            "reconnect_reasons": dict(self.reconnect_reasons), "stalls": self.stalls,
            "stall_s": round(self.stall_s, 3), "outages_s": [round(s, 3) for s in self.outages_s],
            "loops": self.loops, "decode_s": round(self.decode_s, 3),
            "end_reason": self.end_reason,
        }


class Source(ABC):
    """A context manager and single-pass iterator of :class:`VideoFrame`."""

    def __init__(self, source_id: str, kind: str, is_live: bool) -> None:
        self._stats = SourceStats(source_id=source_id, kind=kind, is_live=is_live)
        self._stats_lock = threading.Lock()  # live sources update stats on the reader thread
        self._closed = False
        self._reading: Iterator[VideoFrame] | None = None  # the frames being iterated
        self._warned: set[str] = set()

    @property
    def source_id(self) -> str:
        return self._stats.source_id

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[VideoFrame]:
        self._reading = frames = self._frames()
        try:
            for frame in frames:
                self._stats.frames_yielded += 1
                yield frame
        finally:  # also runs when the consumer breaks out early and the generator is closed
            if self._stats.end_reason is None:
                self._stats.end_reason = "stopped by the consumer"
            self.close()

    def open(self) -> None:  # noqa: B027 - most sources have nothing to acquire up front
        """Acquire what the source reads from; called by :func:`open_source`."""

    def close(self) -> None:
        """Release everything; safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        if self._stats.end_reason is None:
            self._stats.end_reason = "closed before the end"
        reading, self._reading = self._reading, None
        if reading is not None and hasattr(reading, "close"):
            try:
                reading.close()  # a decoding thread ends before the decoder is released
            except ValueError:  # being iterated on another thread: it ends at its next frame
                logger.debug("{}: closed while its frames are read elsewhere", self.source_id)
        self._release()

    def stats(self) -> dict[str, Any]:
        with self._stats_lock:
            return self._stats.as_dict()

    @abstractmethod
    def _frames(self) -> Iterator[VideoFrame]:
        """Yield frames until the source ends; set ``end_reason`` before returning."""

    @abstractmethod
    def _release(self) -> None: ...

    def _warn_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message, *args)

    def _bgr(self, image: np.ndarray) -> np.ndarray:
        """``image`` as (H, W, 3) uint8 BGR, warning once per source if it had to convert."""
        converted = to_bgr(image)
        if converted is not image:
            self._warn_once("convert", "{}: frames are {} {}, converting to 8-bit BGR",
                            self.source_id, image.shape, image.dtype)
        return converted


def timed(stats: SourceStats, read: Callable[[], T]) -> T:
    """``read()``, its seconds added to ``stats.decode_s``."""
    started = time.perf_counter()
    try:
        return read()
    finally:
        stats.decode_s += time.perf_counter() - started


def read_ahead(items: Iterator[T], depth: int, name: str) -> Iterator[T]:
    """``items`` produced on a thread of their own, at most ``depth`` ahead of the consumer:
    a recording decodes its next frames while the tracker works on this one, and waits (never
    drops) when the consumer is slower. An error of the producer is raised to the consumer in
    order; a consumer that stops early stops the producer and waits for it, so the source
    releases its decoder only after the last read has returned."""
    ahead: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry: tuple[str, Any]) -> bool:
        while not stop.is_set():
            try:
                ahead.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(("item", item)):
                    return
            put(("end", None))
        except BaseException as err:  # noqa: BLE001 - handed to the consumer, raised there
            put(("error", err))

    thread = threading.Thread(target=produce, name=name, daemon=True)
    thread.start()
    try:
        while True:
            kind, item = ahead.get()
            if kind == "end":
                return
            if kind == "error":
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


def to_bgr(image: np.ndarray) -> np.ndarray:
    """Grayscale, BGRA or 16-bit frames as (H, W, 3) uint8 BGR; BGR uint8 passes unchanged."""
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        image = cv2.normalize(image, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    if image.ndim == 3 and image.shape[2] == 3:
        return image
    raise SourceError(f"cannot use a frame of shape {image.shape}: expected (H, W) grayscale, "
                      f"(H, W, 3) BGR or (H, W, 4) BGRA")


def usable_fps(fps: float) -> bool:
    return bool(np.isfinite(fps)) and 0.5 <= fps <= 1000


