"""Person tracker: a detector finds the persons of a frame, ultralytics' ByteTrack or BoT-SORT
tracks them, and ids never repeat within a run.

Each stream keeps its own ultralytics tracker object, exactly what
``model.track(persist=True)`` keeps inside its predictor; its detector may be shared with the
other streams of the process (:class:`~vidqa.detection.detector.Detector`) or live in a
detection worker (:class:`~vidqa.detection.transport.RemoteDetector`).
"""

from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger

from vidqa.config import TrackerConfig
from vidqa.detection.detector import Detector
from vidqa.errors import ConfigError
from vidqa.messages import Detections, FrameResult, VideoFrame

TRACKER_TYPES = ("bytetrack", "botsort")  # the ultralytics trackers that need no predictor hooks


class PersonTracker:
    """Detect and track persons frame by frame; ``update`` returns tracked boxes of one frame.

    Track ids persist across frames. A live source that jumps forward in time by more than
    ``reset_after_s`` (a reconnect, a long stall) restarts the tracker: motion models cannot
    bridge such a gap, and a stale track would hand its id to a different person.
    ``detector``: one shared with other streams of the process, or a
    :class:`~vidqa.detection.transport.RemoteDetector` (else the tracker loads its own).
    """

    def __init__(self, cfg: TrackerConfig, reset_after_s: float = 2.0,
                 threads: int | None = None, detector: Any = None
                 ) -> None:
        self.cfg = cfg
        self.reset_after_s = reset_after_s
        self.detector = detector or Detector(cfg, threads)
        self.tracker = _ultralytics_tracker(cfg.tracker)
        self.ids = TrackIds()
        self.resets = 0
        self.detect_s = 0.0  # seconds waiting for boxes: letterbox, forward pass, NMS, batching
        # (with frames in flight, only what the stream still waited: sending, the boxes' wait)
        self.track_s = 0.0  # seconds in the tracker's association and motion model

    def update(self, frame: VideoFrame) -> Detections:
        started = time.perf_counter()
        boxes = self.detector(frame.image)
        self.detect_s += time.perf_counter() - started
        return self._track(frame, boxes)

    def _track(self, frame: VideoFrame, boxes: Any) -> Detections:
        if self._gap_too_long(frame):
            self.reset()
        started = time.perf_counter()
        tracks = self.tracker.update(boxes, frame.image)
        self.track_s += time.perf_counter() - started
        detections = _to_detections(tracks)
        return dataclasses.replace(detections, track_id=self.ids(detections.track_id))

    def frame_path(self) -> dict[str, float]:
        """Seconds of this stream's frames in each stage of the tracker: ``detect`` (all of
        it, as the stream waited for its boxes), ``letterbox`` (part of ``detect``: this
        stream's own when it letterboxes for a detection worker, else its detector's, shared
        with the process's other streams) and ``track``."""
        letterbox = getattr(self.detector, "letterbox_s", None)
        if letterbox is None:
            letterbox = getattr(self.detector, "stage_s", {}).get("letterbox", 0.0)
        return {"letterbox_s": round(letterbox, 3), "detect_s": round(self.detect_s, 3),
                "track_s": round(self.track_s, 3)}

    def close(self) -> None:
        """Release the detector's shared frame buffer, if it has one (a remote detector)."""
        close = getattr(self.detector, "close", None)
        if close is not None:
            close()

    def reset(self) -> None:
        """Forget every track. Ids keep counting up, so old and new ids never collide."""
        self.tracker.reset()  # restarts ultralytics' id counter at 1 ...
        self.ids.restart()  # ... so later ids are shifted past every id handed out
        self.resets += 1

    def __call__(self, frames: Iterable[VideoFrame]) -> Iterator[FrameResult]:
        if self.cfg.in_flight < 2 or not hasattr(self.detector, "send"):
            for frame in frames:
                yield FrameResult(frame=frame, detections=self.update(frame))
            return
        yield from self._overlapped(frames)

    def _overlapped(self, frames: Iterable[VideoFrame]) -> Iterator[FrameResult]:
        """With a detection worker: the next frames (up to ``tracker.in_flight`` in all) are
        sent before the oldest one's boxes are awaited, tracked and passed on, so a stream no
        longer sits out each frame's round trip. Frames are tracked in order, with the same
        boxes: the tracks are those of :meth:`update`, frame by frame."""
        out: collections.deque = collections.deque()  # (frame, its pending boxes), oldest first
        try:
            for frame in frames:
                out.append((frame, self._timed(self.detector.send, frame.image)))
                if len(out) >= self.cfg.in_flight:
                    yield self._taken(*out.popleft())
            while out:
                yield self._taken(*out.popleft())
        finally:  # stopped early: the worker may still be reading these frames' buffers
            for _, pending in out:
                pending.settle()

    def _taken(self, frame: VideoFrame, pending: Any) -> FrameResult:
        boxes = self._timed(pending.result)
        return FrameResult(frame=frame, detections=self._track(frame, boxes))

    def _timed(self, step: Callable[..., Any], *args: Any) -> Any:
        started = time.perf_counter()
        try:
            return step(*args)
        finally:
            self.detect_s += time.perf_counter() - started

    def _gap_too_long(self, frame: VideoFrame) -> bool:
        # The source measures outages itself: a slow consumer skipping frames is not a gap.
        if frame.gap_s > self.reset_after_s:
            logger.warning("{:.1f} s outage of the live stream before frame {}: restarting "
                           "tracks", frame.gap_s, frame.frame_index)
            return True
        return False


class TrackIds:
    """Ids that never repeat within a run: ultralytics' counter restarts at 1 after a tracker
    reset, so ids handed out after one are shifted past every id handed out before it."""

    def __init__(self) -> None:
        self.offset = 0
        self.max_id = 0

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        shifted = ids + self.offset
        if len(shifted):
            self.max_id = max(self.max_id, int(shifted.max()))
        return shifted

    def restart(self) -> None:
        self.offset = self.max_id


def _ultralytics_tracker(name: str) -> Any:
    """A fresh ByteTrack or BoT-SORT object from an ultralytics tracker YAML."""
    from ultralytics.trackers.track import TRACKER_MAP
    from ultralytics.utils import YAML, IterableSimpleNamespace
    from ultralytics.utils.checks import check_yaml

    if not (Path(name).is_file() or name in ("bytetrack.yaml", "botsort.yaml")):
        raise ConfigError(f"tracker.tracker = {name!r}: use bytetrack.yaml, botsort.yaml or the "
                          f"path of an ultralytics tracker YAML")
    args = IterableSimpleNamespace(**YAML.load(check_yaml(name)))
    if args.tracker_type not in TRACKER_TYPES:
        raise ConfigError(f"tracker.tracker {name!r} has tracker_type {args.tracker_type!r}: "
                          f"vidqa runs {' and '.join(TRACKER_TYPES)}")
    if getattr(args, "with_reid", False) and getattr(args, "model", "auto") == "auto":
        raise ConfigError(f"tracker.tracker {name!r}: with_reid needs a ReID model path in "
                          f"'model' (auto takes features from inside ultralytics' predictor)")
    return TRACKER_MAP[args.tracker_type](args=args)


def _to_detections(tracks: np.ndarray) -> Detections:
    """Rows ``[x1, y1, x2, y2, track_id, score, cls, idx]`` of the confirmed tracks."""
    if len(tracks) == 0:
        return Detections.empty()
    return Detections(
        xyxy=tracks[:, :4].astype(np.float32),
        confidence=tracks[:, 5].astype(np.float32),
        class_id=tracks[:, 6].astype(np.int64),
        track_id=tracks[:, 4].astype(np.int64),
    )
