"""Replay as live: a video file or MOT sequence played at its own frame rate, like a camera.

A reader thread decodes the recording with :class:`FileSource` or :class:`MotSource` (so every
check and warning of those sources applies) and publishes each frame when the wall clock
reaches its place in the recording. Playback starts when the consumer first asks for a frame,
so a pipeline that loads its models after opening the source still sees the recording's start.
The consumer takes the newest frame through the same machinery as a webcam or stream
(:class:`NewestFrameSource`): a slow consumer misses frames, which are dropped and counted,
never queued. Timestamps are seconds of recording played since playback started (wall-clock
seconds, or ``source.replay_speed`` times them), and frame indices count the frames
published, so they keep increasing across loops.

With ``source.loop`` the recording restarts at its end (``stats()["loops"]`` counts restarts);
without it the source ends once its last frame has been taken.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

from loguru import logger

from vidqa.config import SourceConfig
from vidqa.errors import SourceError
from vidqa.messages import VideoFrame
from vidqa.sources.base import Source
from vidqa.sources.files import FileSource, MotSource
from vidqa.sources.live import NewestFrameSource


class ReplaySource(NewestFrameSource):
    """A file (``kind: file``) or MOT sequence (``kind: mot``) replayed in real time."""

    def __init__(self, cfg: SourceConfig, path: Path) -> None:
        if cfg.kind not in ("file", "mot"):
            raise SourceError(f"source.replay needs source.kind file or mot, got {cfg.kind!r}")
        super().__init__(cfg, source_id=path.name, kind=cfg.kind)
        self.path = path
        self._recording = self._recorded()

    def open(self) -> None:
        """Open the first pass now, so a missing file or bad sequence raises here."""
        self._recording.open()
        recorded = self._recording.stats()
        self._nominal_fps = recorded["fps"]
        self._stats.size = tuple(recorded["size"]) if recorded["size"] else None
        self._stats.frame_count = None if self.cfg.loop else recorded["frame_count"]
        self._stats.fps = self._fps()

    def _frames(self) -> Iterator[VideoFrame]:
        # Playback starts here, not in open(): see the module docstring.
        self._t0 = time.monotonic()
        self._start_reader(self._read_forever)
        yield from super()._frames()

    def stats(self) -> dict:
        """As every source's, ``decode_s`` with the pass being played."""
        stats = super().stats()
        stats["decode_s"] = round(stats["decode_s"] + self._recording.stats()["decode_s"], 3)
        return stats

    def now(self) -> float:
        """Seconds of recording played since playback started (``source.replay_speed`` of them
        per wall second)."""
        return super().now() * self.cfg.replay_speed

    def _recorded(self) -> Source:
        return FileSource(self.path) if self.cfg.kind == "file" else MotSource(self.path)

    # -- reader thread --

    def _read_forever(self) -> None:
        error = None
        try:
            self._play_passes()
        except Exception as err:  # noqa: BLE001 - a bug here must still end the consumer's wait
            logger.opt(exception=not isinstance(err, SourceError)).error(
                "{}: replay failed: {}", self.source_id, err)
            self._stats.end_reason = f"reader error: {type(err).__name__}: {err}"
            error = err if isinstance(err, SourceError) else SourceError(
                f"{self.source_id}: replay reader failed: {err}")
        finally:
            self._recording.close()
            self._latest.finish(error)

    def _play_passes(self) -> None:
        start = 0.0  # when the current pass began, seconds since open
        while True:
            played, seconds = self._play(start)
            if self._stop.is_set():
                return
            if not self.cfg.loop or played == 0:
                self._stats.end_reason = self._recording.stats()["end_reason"]
                return
            self._recording.close()
            decoded = self._recording.stats()["decode_s"]
            self._recording = self._recorded()
            self._recording.open()
            with self._stats_lock:
                self._stats.loops += 1
                self._stats.decode_s += decoded
            start += seconds

    def _play(self, start: float) -> tuple[int, float]:
        """Publish one pass, each frame at ``start`` + its offset in the recording.

        Returns the frames published and the pass's length in seconds. A reader slower than
        the recording plays late rather than skipping frames.
        """
        played, first, offset = 0, None, 0.0
        for frame in self._recording:
            first = frame.timestamp if first is None else first
            offset = frame.timestamp - first
            if self._stop.wait(max(0.0, (start + offset - self.now()) / self.cfg.replay_speed)):
                break
            self._publish(frame.image)
            played += 1
        return played, offset + 1.0 / self._nominal_fps
