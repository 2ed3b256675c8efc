"""Video sources: a file, a MOT16/17 sequence, a webcam or an RTSP/HTTP stream, as `VideoFrame`s.

Use a source as a context manager and iterate it once::

    with open_source(cfg.source, path) as source:
        for frame in source:
            ...
    source.stats()  # frames read/dropped, reconnects, end_reason, ... for the run summary

Files and MOT sequences are read in order and never drop a frame; ``timestamp = index / fps``.
With ``source.replay: realtime`` they play at their own frame rate as if live instead
(:class:`ReplaySource`, optionally looped), dropping what the consumer cannot take.
Live sources (webcam, stream) run a reader thread that keeps only the newest frame, so the
consumer never falls behind the camera: frames it could not take are dropped and counted.
Their timestamps are wall-clock seconds since the source opened; the reader measures camera
outages itself and reports the longest silence before each frame in ``VideoFrame.gap_s`` (the
tracker restarts its tracks after a long one).

Every source releases what it holds in ``try/finally``: on ``close()``, on leaving the ``with``
block, and when the consumer stops iterating early (the generator is closed).
"""

from __future__ import annotations

from pathlib import Path

from vidqa.config import SourceConfig
from vidqa.errors import SourceError
from vidqa.sources.base import Source, to_bgr
from vidqa.sources.files import FileSource, MotSource, read_seqinfo
from vidqa.sources.live import LiveSource, NewestFrameSource, StreamOpener, WebcamOpener, redact_url
from vidqa.sources.replay import ReplaySource

__all__ = ["FileSource", "LiveSource", "MotSource", "NewestFrameSource", "ReplaySource", "Source",
           "is_camera", "is_live", "open_source", "read_seqinfo", "redact_url", "source_path",
           "to_bgr"]


def open_source(cfg: SourceConfig, path: Path | None = None) -> Source:
    """Open the source ``cfg`` describes; ``path`` is the resolved file or MOT folder.

    Raises :class:`SourceError` at once for what can be checked up front: a missing or empty
    file, a folder that is not a MOT sequence, a malformed URL, a missing webcam.
    """
    if cfg.kind in ("file", "mot"):
        if path is None:
            if cfg.path == "auto":
                raise SourceError("source.path is 'auto' but no video was resolved: set "
                                  "source.path to a video file or MOT sequence folder")
            path = Path(cfg.path)
        source: Source = _recorded(cfg, Path(path))
    elif cfg.kind == "webcam":
        source = LiveSource(cfg, WebcamOpener(cfg.device))
    elif cfg.kind == "stream":
        source = LiveSource(cfg, StreamOpener(cfg.url, cfg.open_timeout_s, cfg.stall_timeout_s))
    else:
        raise SourceError(f"source.kind = {cfg.kind!r}: expected file, mot, webcam or stream")
    source.open()
    return source


def _recorded(cfg: SourceConfig, path: Path) -> Source:
    if cfg.replay == "realtime":
        return ReplaySource(cfg, path)
    return FileSource(path) if cfg.kind == "file" else MotSource(path)


def is_camera(cfg: SourceConfig) -> bool:
    """A webcam or a stream: nothing on disk to check before the models load."""
    return cfg.kind in ("webcam", "stream")


def is_live(cfg: SourceConfig) -> bool:
    """Cameras, and recordings replayed in real time, are live: wall-clock time, the newest
    frame wins, drops are counted."""
    return is_camera(cfg) or cfg.replay == "realtime"


def source_path(cfg: SourceConfig) -> Path | None:
    """The file or MOT folder to read (``auto`` = the sample video); None for live sources."""
    if is_camera(cfg):
        return None
    if cfg.path == "auto":
        from vidqa.assets import sample_video  # fetched on first use

        return sample_video()
    return Path(cfg.path).expanduser()
