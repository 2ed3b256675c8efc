"""Person tracker: ultralytics YOLO with its ByteTrack or BoT-SORT, person classes only."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from loguru import logger

from vidqa import assets
from vidqa.config import TrackerConfig
from vidqa.errors import ConfigError, ModelError
from vidqa.messages import Detections, FrameResult, VideoFrame


class PersonTracker:
    """Detect and track persons frame by frame; ``update`` returns tracked boxes of one frame.

    Track ids persist across frames. A live source that jumps forward in time by more than
    ``reset_after_s`` (a reconnect, a long stall) restarts the tracker: motion models cannot
    bridge such a gap, and a stale track would hand its id to a different person.
    """

    def __init__(self, cfg: TrackerConfig, reset_after_s: float = 2.0,
                 threads: int | None = None) -> None:
        assets.configure_offline_ultralytics()
        import ultralytics  # imported late: the offline settings must come first
        from ultralytics import YOLO
        from ultralytics.utils import SETTINGS

        self.cfg = cfg
        self.reset_after_s = reset_after_s
        self.detector = assets.resolve_detector(cfg.weights)
        self.tracker_yaml = _tracker_yaml(cfg.tracker)
        try:
            self.model = YOLO(self.detector.path, task="detect")
        except Exception as err:  # ultralytics raises many kinds for a bad checkpoint
            raise ModelError(f"cannot load detector {self.detector.path!r}: {err} — check "
                             f"tracker.weights (a .pt path or 'auto')") from None
        names = self.model.names
        self.classes = list(cfg.classes) if cfg.classes is not None else \
            assets.person_classes(names)
        unknown = [c for c in self.classes if c not in names]
        if unknown:
            raise ConfigError(f"tracker.classes {unknown} not in the detector's classes {names}")
        self.device = None if cfg.device == "auto" else cfg.device
        self._threads = threads  # torch threads once running; None = every core
        self._threads_set = False
        self.ids = TrackIds()
        self.resets = 0
        logger.info("tracker {} ({}) with {} on classes {}; ultralytics {} (settings {}, sync {})",
                    self.detector.name, self.detector.note or self.detector.path, cfg.tracker,
                    {c: names[c] for c in self.classes}, ultralytics.__version__,
                    SETTINGS.file, SETTINGS.get("sync"))

    def update(self, frame: VideoFrame) -> Detections:
        if self._gap_too_long(frame):
            self.reset()
        result = self.model.track(frame.image, persist=True, tracker=self.tracker_yaml,
                                  conf=self.cfg.conf, iou=self.cfg.iou, imgsz=self.cfg.imgsz,
                                  classes=self.classes, device=self.device, verbose=False)[0]
        self._use_all_threads()
        detections = _to_detections(result.boxes)
        return dataclasses.replace(detections, track_id=self.ids(detections.track_id))

    def reset(self) -> None:
        """Forget every track. Ids keep counting up, so old and new ids never collide."""
        predictor = self.model.predictor
        for tracker in getattr(predictor, "trackers", None) or []:
            tracker.reset()  # restarts ultralytics' id counter at 1 ...
        self.ids.restart()  # ... so later ids are shifted past every id handed out
        self.resets += 1

    def __call__(self, frames: Iterable[VideoFrame]) -> Iterator[FrameResult]:
        for frame in frames:
            yield FrameResult(frame=frame, detections=self.update(frame))

    def _gap_too_long(self, frame: VideoFrame) -> bool:
        # The source measures outages itself: a slow consumer skipping frames is not a gap.
        if frame.gap_s > self.reset_after_s:
            logger.warning("{:.1f} s outage of the live stream before frame {}: restarting "
                           "tracks", frame.gap_s, frame.frame_index)
            return True
        return False

    def _use_all_threads(self) -> None:
        # ultralytics pins torch to cpu_count - 1 threads on its first call; take them all back
        # (or the share this process was given, e.g. a Ray actor's CPUs).
        if not self._threads_set:
            torch.set_num_threads(self._threads or os.cpu_count() or 1)
            self._threads_set = True


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


def _tracker_yaml(name: str) -> str:
    if Path(name).is_file() or name in ("bytetrack.yaml", "botsort.yaml"):
        return name
    raise ConfigError(f"tracker.tracker = {name!r}: use bytetrack.yaml, botsort.yaml or the "
                      f"path of an ultralytics tracker YAML")


def _to_detections(boxes) -> Detections:
    if boxes is None or boxes.id is None or len(boxes) == 0:
        return Detections.empty()
    return Detections(
        xyxy=boxes.xyxy.cpu().numpy().astype(np.float32),
        confidence=boxes.conf.cpu().numpy().astype(np.float32),
        class_id=boxes.cls.cpu().numpy().astype(np.int64),
        track_id=boxes.id.cpu().numpy().astype(np.int64),
    )
