"""Person tracker: ultralytics YOLO detects, ultralytics' ByteTrack or BoT-SORT tracks, person
classes only.

Detection and tracking are split so that the streams of one process share one detector: a
:class:`Detector` answers every stream's frame, and frames that arrive while a batch runs form
the next batch (one forward pass for several cameras). Each stream keeps its own ultralytics
tracker object, exactly what ``model.track(persist=True)`` keeps inside its predictor.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from loguru import logger

from vidqa import assets
from vidqa.config import TrackerConfig
from vidqa.errors import ConfigError, ModelError
from vidqa.messages import Detections, FrameResult, VideoFrame

TRACKER_TYPES = ("bytetrack", "botsort")  # the ultralytics trackers that need no predictor hooks


class Detector:
    """One YOLO model answering the frames of every stream in this process, batched.

    A caller's frame waits while a batch runs; everything that arrived meanwhile (up to
    ``tracker.batch`` frames, by image size) is detected in the next call, which the first of
    those callers runs on its own thread. One stream alone therefore detects inline at batch 1;
    several streams share each forward pass without a timer or an extra thread.
    """

    def __init__(self, cfg: TrackerConfig) -> None:
        assets.configure_offline_ultralytics()
        import ultralytics  # imported late: the offline settings must come first
        from ultralytics import YOLO
        from ultralytics.utils import SETTINGS

        self.cfg = cfg
        self.info = assets.resolve_detector(cfg.weights)
        try:
            self.model = YOLO(self.info.path, task="detect")
        except Exception as err:  # ultralytics raises many kinds for a bad checkpoint
            raise ModelError(f"cannot load detector {self.info.path!r}: {err} — check "
                             f"tracker.weights (a .pt path or 'auto')") from None
        names = self.model.names
        self.classes = list(cfg.classes) if cfg.classes is not None else \
            assets.person_classes(names)
        unknown = [c for c in self.classes if c not in names]
        if unknown:
            raise ConfigError(f"tracker.classes {unknown} not in the detector's classes {names}")
        self.device = None if cfg.device == "auto" else cfg.device
        self.max_batch = max(1, cfg.batch)
        self.batches: Counter[int] = Counter()  # frames per forward pass -> passes
        self._pending: list[_Frame] = []
        self._busy = False
        self._turn = threading.Condition()
        logger.info("detector {} ({}) on classes {}, batches of up to {} frames; ultralytics {} "
                    "(settings {}, sync {})", self.info.name, self.info.note or self.info.path,
                    {c: names[c] for c in self.classes}, self.max_batch, ultralytics.__version__,
                    SETTINGS.file, SETTINGS.get("sync"))

    def __call__(self, image: np.ndarray) -> Any:
        """The person boxes of one frame (ultralytics ``Boxes`` on the CPU, as numpy)."""
        frame = _Frame(image)
        with self._turn:
            self._pending.append(frame)
            while not frame.done:
                if self._busy:
                    self._turn.wait()
                    continue
                batch = self._take()
                self._busy = True
                self._turn.release()
                try:
                    self._detect(batch)
                finally:
                    self._turn.acquire()
                    self._busy = False
                    self._turn.notify_all()
        if frame.error is not None:
            raise frame.error
        return frame.boxes

    def summary(self) -> dict[str, Any]:
        passes = sum(self.batches.values())
        frames = sum(size * count for size, count in self.batches.items())
        return {"max_batch": self.max_batch, "passes": passes,
                "mean_batch": round(frames / passes, 2) if passes else None,
                "batch_histogram": {str(k): v for k, v in sorted(self.batches.items())}}

    def _take(self) -> list[_Frame]:
        """The oldest frame and the waiting frames of its size, up to ``max_batch``."""
        shape = self._pending[0].image.shape
        batch = [f for f in self._pending if f.image.shape == shape][:self.max_batch]
        taken = {id(f) for f in batch}
        self._pending = [f for f in self._pending if id(f) not in taken]
        return batch

    def _detect(self, batch: list[_Frame]) -> None:
        try:
            results = self.model.predict([f.image for f in batch], conf=self.cfg.conf,
                                         iou=self.cfg.iou, imgsz=self.cfg.imgsz,
                                         classes=self.classes, device=self.device,
                                         verbose=False)
            for frame, result in zip(batch, results, strict=True):
                frame.boxes = result.boxes.cpu().numpy()
        except Exception as err:  # every frame of the batch fails, the next batch may not
            for frame in batch:
                frame.error = err
        for frame in batch:
            frame.done = True
        self.batches[len(batch)] += 1


@dataclasses.dataclass(eq=False)
class _Frame:
    image: np.ndarray
    boxes: Any = None
    error: Exception | None = None
    done: bool = False


def detector_key(cfg: TrackerConfig) -> tuple:
    """Streams whose tracker configs share this key can share one :class:`Detector`."""
    return (cfg.weights, cfg.conf, cfg.iou, cfg.imgsz, cfg.classes, cfg.device, cfg.batch)


class PersonTracker:
    """Detect and track persons frame by frame; ``update`` returns tracked boxes of one frame.

    Track ids persist across frames. A live source that jumps forward in time by more than
    ``reset_after_s`` (a reconnect, a long stall) restarts the tracker: motion models cannot
    bridge such a gap, and a stale track would hand its id to a different person.
    ``detector``: one shared with other streams of the process (else the tracker loads its own).
    """

    def __init__(self, cfg: TrackerConfig, reset_after_s: float = 2.0,
                 threads: int | None = None, detector: Detector | None = None) -> None:
        self.cfg = cfg
        self.reset_after_s = reset_after_s
        self.detect = detector or Detector(cfg)
        self.detector = self.detect.info
        self.tracker = _ultralytics_tracker(cfg.tracker)
        self._threads = threads  # torch threads once running; None = every core
        self._threads_set = False
        self.ids = TrackIds()
        self.resets = 0

    def update(self, frame: VideoFrame) -> Detections:
        if self._gap_too_long(frame):
            self.reset()
        boxes = self.detect(frame.image)
        self._use_all_threads()
        tracks = self.tracker.update(boxes, frame.image)
        detections = _to_detections(tracks)
        return dataclasses.replace(detections, track_id=self.ids(detections.track_id))

    def reset(self) -> None:
        """Forget every track. Ids keep counting up, so old and new ids never collide."""
        self.tracker.reset()  # restarts ultralytics' id counter at 1 ...
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
