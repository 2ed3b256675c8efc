"""Live sources: a webcam or an RTSP/HTTP stream, read by a thread that keeps the newest frame.

The consumer never runs behind the camera: frames it could not take are dropped and counted,
never queued. Timestamps are wall-clock seconds since the source opened; the reader measures
the camera's silences itself and hands the longest one before each frame to the tracker as
``VideoFrame.gap_s`` (a slow consumer is not an outage). The thread reconnects with exponential
backoff.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import cv2
import numpy as np
from loguru import logger

from vidqa.config import SourceConfig
from vidqa.errors import SourceError
from vidqa.messages import VideoFrame
from vidqa.sources.base import DEFAULT_FPS, Source, usable_fps

LIVE_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "tcp", "srt", "rtp")
# Low-latency FFmpeg options for live streams (OpenCV's "key;value|key;value" syntax). TCP
# interleaving survives lossy networks and turns a dead server into an immediate end of stream.
FFMPEG_LIVE_OPTIONS = "rtsp_transport;tcp|fflags;nobuffer|flags;low_delay"
_ENV_LOCK = threading.Lock()  # OPENCV_FFMPEG_CAPTURE_OPTIONS is process-wide state


class Opener(ABC):
    """How a live source (re)opens its capture. Runs on the reader thread."""

    source_id: str
    fail_fast: bool  # a failed first open raises at once instead of retrying

    @abstractmethod
    def open(self) -> tuple[cv2.VideoCapture | None, str]:
        """The opened capture, or None and why it failed."""

    @abstractmethod
    def fix(self) -> str:
        """What the user can check when opening fails."""


class StreamOpener(Opener):
    """An rtsp:// or http(s):// URL through OpenCV's FFmpeg backend, with bounded open and
    read times so a dead server can never block the reader thread for good."""

    fail_fast = False

    def __init__(self, url: str, open_timeout_s: float, read_timeout_s: float) -> None:
        self.url = url
        self.source_id = redact_url(url)
        self._parts = _check_url(url)
        self._params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(open_timeout_s * 1000),
                        cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(read_timeout_s * 1000)]
        self._probe_timeout_s = min(open_timeout_s, 3.0)

    def open(self) -> tuple[cv2.VideoCapture | None, str]:
        with _ENV_LOCK:
            user_options = os.environ.get("OPENCV_FFMPEG_CAPTURE_OPTIONS")
            if user_options is None:  # the user's own options win
                os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = FFMPEG_LIVE_OPTIONS
            try:
                capture = cv2.VideoCapture(self.url, cv2.CAP_FFMPEG, self._params)
            finally:
                if user_options is None:
                    os.environ.pop("OPENCV_FFMPEG_CAPTURE_OPTIONS", None)
        if capture.isOpened():
            return capture, ""
        capture.release()
        return None, self._why_not()

    def _why_not(self) -> str:
        """OpenCV gives no reason; a plain TCP connect tells refused, unknown host, timeout."""
        host, port = self._parts
        if port is None:
            return "FFmpeg could not open it"
        try:
            with socket.create_connection((host, port), timeout=self._probe_timeout_s):
                pass
        except socket.gaierror:
            return f"host name {host!r} does not resolve"
        except ConnectionRefusedError:
            return f"connection refused: nothing listens on {host}:{port}"
        except TimeoutError:
            return f"no answer from {host}:{port} within {self._probe_timeout_s:g} s"
        except OSError as err:
            return f"{host}:{port} unreachable ({err.strerror or err})"
        return (f"{host}:{port} accepts connections but no video stream opened there "
                f"(wrong path or credentials, or an unsupported codec)")

    def fix(self) -> str:
        return (f"check that the camera/server is up and that source.url is right "
                f"(try `ffprobe {self.source_id}`)")


class WebcamOpener(Opener):
    """A local camera by device index (V4L2 on Linux). A missing or busy device at start is a
    configuration error, raised at once."""

    fail_fast = True

    def __init__(self, device: int) -> None:
        self.device = device
        self.source_id = f"webcam:{device}"

    def open(self) -> tuple[cv2.VideoCapture | None, str]:
        capture = cv2.VideoCapture(self.device)
        if capture.isOpened():
            capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the driver queue adds latency
            return capture, ""
        capture.release()
        return None, f"webcam device {self.device} is missing or busy"

    def fix(self) -> str:
        return (f"check that /dev/video{self.device} exists (`ls /dev/video*`), that no other "
                f"program uses it, or set source.device to another index")


def redact_url(url: str) -> str:
    """The URL without its password, for logs and summaries."""
    return re.sub(r"(//[^:/@]+):[^@/]*@", r"\1:***@", url)


def _check_url(url: str) -> tuple[str, int | None]:
    """(host, port) of a well-formed live URL; a typo fails here, before any retrying."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in LIVE_SCHEMES or not parts.hostname:
        raise SourceError(f"source.url = {redact_url(url)!r} is not a stream address: expected "
                          f"rtsp://host[:port]/path or http(s)://host/path")
    try:
        port = parts.port
    except ValueError:
        raise SourceError(f"source.url = {redact_url(url)!r} has an invalid port") from None
    default = {"rtsp": 554, "rtsps": 322, "http": 80, "https": 443, "rtmp": 1935}
    return parts.hostname, port or default.get(parts.scheme.lower())


class _Latest:
    """The newest frame, the reader's frame counter and its end: all the threads share."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.image: np.ndarray | None = None
        self.seq = 0  # frames published so far
        self.time_s = 0.0  # when the newest frame was read, seconds since open
        self.gap_s = 0.0  # longest pause between reads since the consumer last took a frame
        self.done = False
        self.error: SourceError | None = None

    def publish(self, image: np.ndarray, time_s: float) -> None:
        with self._cond:
            if self.seq:
                self.gap_s = max(self.gap_s, time_s - self.time_s)
            self.image, self.time_s = image, time_s
            self.seq += 1
            self._cond.notify_all()

    def finish(self, error: SourceError | None = None) -> None:
        with self._cond:
            self.done, self.error = True, error
            self._cond.notify_all()

    def newer_than(self, seq: int, stop: threading.Event
                   ) -> tuple[np.ndarray, int, float, float] | None:
        """Block until a frame after ``seq`` exists; None once the reader is done or stopped.

        Returns (image, seq, time_s, gap_s): ``gap_s`` is the camera's longest silence since
        the last call — an outage, not the consumer's own slowness.
        """
        with self._cond:
            while self.seq <= seq and not self.done and not stop.is_set():
                self._cond.wait(timeout=0.2)
            if self.seq <= seq or stop.is_set():
                return None
            assert self.image is not None
            gap_s, self.gap_s = self.gap_s, 0.0
            return self.image, self.seq, self.time_s, gap_s


class NewestFrameSource(Source):
    """A source whose reader thread publishes frames and whose consumer takes the newest.

    The consumer never runs behind the reader: frames it could not take are dropped and
    counted (``frames_read - frames_yielded``). Frame indices count the frames published, so
    a gap in indices is a dropped frame; timestamps are wall-clock seconds since open.
    Subclasses start the thread in :meth:`open` with :meth:`_start_reader` and publish each
    decoded frame with :meth:`_publish`.
    """

    def __init__(self, cfg: SourceConfig, source_id: str, kind: str) -> None:
        super().__init__(source_id=source_id, kind=kind, is_live=True)
        self.cfg = cfg
        self._latest = _Latest()
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self._nominal_fps = 0.0
        self._thread: threading.Thread | None = None

    def now(self) -> float:
        """Seconds since the source opened: the clock of live timestamps."""
        return time.monotonic() - self._t0

    def _start_reader(self, target: Callable[..., None], *args: object) -> None:
        self._thread = threading.Thread(target=target, args=args,
                                        name=f"vidqa-reader-{self.source_id}", daemon=True)
        self._thread.start()

    # -- consumer side --

    def _frames(self) -> Iterator[VideoFrame]:
        taken, last_yield = 0, -1e9
        min_interval = 1.0 / self.cfg.max_fps if self.cfg.max_fps > 0 else 0.0
        while True:
            wait = last_yield + min_interval - time.monotonic()
            if wait > 0 and self._stop.wait(wait):  # max_fps: frames are skipped, not queued
                return
            newest = self._latest.newer_than(taken, self._stop)
            if newest is None:
                break
            image, taken, time_s, gap_s = newest
            last_yield = time.monotonic()
            yield VideoFrame(image=image, frame_index=taken - 1, timestamp=time_s,
                             source_id=self.source_id, fps=self._fps(), is_live=True,
                             gap_s=gap_s)
        if self._latest.error is not None:
            raise self._latest.error

    def _fps(self) -> float:
        fps = self._nominal_fps if usable_fps(self._nominal_fps) else DEFAULT_FPS
        return min(fps, self.cfg.max_fps) if self.cfg.max_fps > 0 else fps

    def _release(self) -> None:
        self._stop.set()
        if self._thread is None:
            return
        # An open or read in progress returns within its timeout; the thread then releases.
        bound = self.cfg.open_timeout_s + self.cfg.stall_timeout_s + 1.0
        self._thread.join(timeout=bound)
        if self._thread.is_alive():
            logger.warning("{}: reader thread still blocked after {:.0f} s; it releases the "
                           "capture when its call returns", self.source_id, bound)

    # -- reader side --

    def _publish(self, image: np.ndarray) -> None:
        image = self._bgr(image)
        if self._stats.size is None:
            self._stats.size = (image.shape[1], image.shape[0])
        self._stats.frames_read += 1
        self._stats.last_good_frame = self._latest.seq
        self._stats.fps = self._fps()
        self._latest.publish(image, self.now())


class LiveSource(NewestFrameSource):
    """A webcam or stream read by a background thread that keeps only the newest frame.

    The thread reconnects on end of stream, read errors and stalls (no frame for
    ``stall_timeout_s``) with exponential backoff, and gives up after ``max_reconnects`` failed
    reconnect attempts in a row (-1 = never). A source that never produced a frame and gives up
    raises :class:`SourceError` from the iterator; one that played and then gave up ends
    normally, ``end_reason`` saying why.
    """

    def __init__(self, cfg: SourceConfig, opener: Opener) -> None:
        super().__init__(cfg, source_id=opener.source_id, kind=cfg.kind)
        self._opener = opener
        self._lost_at: float | None = None  # when the last frame before an outage came

    def open(self) -> None:
        self._t0 = time.monotonic()
        capture, first = None, None
        if self._opener.fail_fast:  # a missing webcam is a config error: say so right away
            capture, why = self._opener.open()
            first = _read_safely(capture) if capture is not None else None
            if first is None:
                if capture is not None:
                    capture.release()
                    why = f"{self.source_id} opens but gives no frame (busy or not a camera?)"
                raise SourceError(f"{why}. {self._opener.fix()}")
        self._start_reader(self._read_forever, capture, first)

    # -- reader thread --

    def _read_forever(self, capture: cv2.VideoCapture | None, first: np.ndarray | None) -> None:
        error = None
        try:
            self._connect_loop(capture, first)
            if self._latest.seq == 0 and not self._stop.is_set():  # never played: user error
                error = SourceError(f"{self.source_id}: {self._stats.end_reason}. "
                                    f"{self._opener.fix()}")
        except Exception as err:  # noqa: BLE001 - a bug here must still end the consumer's wait
            logger.exception("{}: reader thread failed", self.source_id)
            self._stats.end_reason = f"reader error: {type(err).__name__}: {err}"
            error = SourceError(f"{self.source_id}: reader thread failed: {err}")
        finally:
            if self._lost_at is not None:
                self._stats.stall_s += self.now() - self._lost_at
            self._latest.finish(error)

    def _connect_loop(self, capture: cv2.VideoCapture | None, first: np.ndarray | None) -> None:
        failed = 0  # failed reconnect attempts in a row
        reason = ""  # why the stream is being reconnected; empty before the first open
        while not self._stop.is_set():
            reconnecting = bool(reason)
            why = ""
            if capture is None:
                self._stats.reconnect_attempts += reconnecting
                capture, why = self._opener.open()
            if capture is not None and first is None:
                first = _read_safely(capture)
            if first is None:  # the attempt failed
                if capture is not None:
                    capture.release()
                    capture, why = None, "opened, but no frame came"
                failed += reconnecting
                self._lost_at = self._lost_at if self._lost_at is not None else self.now()
                reason = reason or "first open failed"
                if not self._backoff(f"open failed: {why}", failed):
                    return
                continue
            self._on_connected(capture, reason)
            failed = 0
            try:
                reason = self._pump(capture, first)
            finally:
                capture.release()
                capture, first = None, None
            if self._stop.is_set():
                return
            self._on_lost(reason)
            if not self._backoff(reason, failed):
                return

    def _backoff(self, reason: str, failed: int) -> bool:
        """Wait before the next attempt; False (``end_reason`` set) when it is time to give up."""
        limit = self.cfg.max_reconnects
        if limit != -1 and failed >= limit:
            plural = "s" if failed != 1 else ""
            self._stats.end_reason = (f"gave up after {failed} failed reconnect attempt{plural} "
                                      f"(max_reconnects={limit}; last: {reason})")
            logger.error("{}: {}. {}", self.source_id, self._stats.end_reason, self._opener.fix())
            return False
        delay = min(self.cfg.reconnect_initial_s * 2 ** failed, self.cfg.reconnect_max_s)
        of = "no limit" if limit == -1 else f"of {limit}"
        logger.warning("{}: {}; reconnect attempt {} ({}) in {:.2f} s. {}", self.source_id,
                       reason, failed + 1, of, delay, self._opener.fix())
        self._stop.wait(delay)
        return True

    def _on_connected(self, capture: cv2.VideoCapture, reason: str) -> None:
        self._nominal_fps = capture.get(cv2.CAP_PROP_FPS)
        if self._lost_at is None:
            logger.info("{}: connected", self.source_id)
            return
        outage = self.now() - self._lost_at
        self._lost_at = None
        with self._stats_lock:
            self._stats.reconnects += 1
            self._stats.stall_s += outage
            self._stats.outages_s = (self._stats.outages_s + [outage])[-100:]
        logger.info("{}: reconnected, {:.2f} s without frames ({})", self.source_id, outage,
                    reason)

    def _on_lost(self, reason: str) -> None:
        self._lost_at = self._latest.time_s  # the outage began with the last good frame
        with self._stats_lock:
            self._stats.reconnect_reasons[reason.split(" (")[0]] += 1
            self._stats.stalls += reason.startswith("stall")

    def _pump(self, capture: cv2.VideoCapture, image: np.ndarray) -> str:
        """Publish frames until the stream fails; returns why it stopped."""
        while True:
            self._publish(image)
            started = time.monotonic()
            next_image = _read_safely(capture)
            if self._stop.is_set():
                return "closed"
            if next_image is None:
                waited = time.monotonic() - started
                if waited >= 0.9 * self.cfg.stall_timeout_s:
                    return f"stall (no frame for {waited:.1f} s)"
                return "end of stream or read error"
            image = next_image

def _read_safely(capture: cv2.VideoCapture) -> np.ndarray | None:
    try:
        ok, image = capture.read()
    except cv2.error as err:
        logger.debug("read raised {}", err)
        return None
    return image if ok and image is not None else None
