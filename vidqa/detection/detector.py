"""Person tracker: ultralytics YOLO detects, ultralytics' ByteTrack or BoT-SORT tracks, person
classes only.

Detection and tracking are split so that the streams of one process share one detector: a
:class:`Detector` answers every stream's frame, and frames that arrive while a batch runs form
the next batch (one forward pass for several cameras). With stream processes on CUDA
(``run.processes``) a :class:`DetectionWorker` process detects for all of them: each stream's
:class:`RemoteDetector` letterboxes its frame and hands it over in shared memory, and the
worker's :class:`DetectionServer` batches the frames of every process. Each stream keeps its
own ultralytics tracker object, exactly what ``model.track(persist=True)`` keeps inside its
predictor.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from multiprocessing.shared_memory import SharedMemory
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

    def __init__(self, cfg: TrackerConfig, threads: int | None = None) -> None:
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
        self.busy_s = 0.0  # seconds inside the forward passes (with pre- and postprocessing)
        self._threads = threads  # torch threads once running; None = every core
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
        return {"max_batch": self.max_batch, "passes": passes, "busy_s": round(self.busy_s, 3),
                "mean_batch": round(frames / passes, 2) if passes else None,
                "batch_histogram": {str(k): v for k, v in sorted(self.batches.items())}}

    def _take(self) -> list[_Frame]:
        """The oldest frame and the waiting frames of its size, up to ``max_batch``."""
        shape = self._pending[0].image.shape
        batch = [f for f in self._pending if f.image.shape == shape][:self.max_batch]
        taken = {id(f) for f in batch}
        self._pending = [f for f in self._pending if id(f) not in taken]
        return batch

    def predict(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """One forward pass over same-sized images: per image its boxes, rows ``[x1, y1, x2,
        y2, conf, cls]`` in that image's pixels."""
        started = time.perf_counter()
        results = self.model.predict(images, **self._arguments())
        self._count(len(images), started)
        return [result.boxes.data.cpu().numpy() for result in results]

    def predict_framed(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        """:meth:`predict` for frames already letterboxed as ultralytics' predictor does it
        (:class:`RemoteDetector`): the predictor's own tensor steps and model, without its
        per-image letterbox and result objects, and one NMS for the whole batch
        (:func:`batched_nms`); boxes in the letterboxed frames' pixels."""
        started = time.perf_counter()
        predictor = self._predictor()
        args = predictor.args
        with torch.inference_mode():
            batch = self._upload(frames, predictor.device)
            batch = batch.permute(0, 3, 1, 2).flip(1)  # BHWC BGR -> BCHW RGB
            batch = (batch.half() if predictor.model.fp16 else batch.float()).div_(255)
            prediction = predictor.inference(batch)
            if getattr(predictor.model, "end2end", False):  # no NMS to batch: ultralytics' own
                from ultralytics.utils.nms import non_max_suppression

                kept = non_max_suppression(prediction, args.conf, args.iou, args.classes,
                                           max_det=args.max_det, end2end=True)
                boxes = [k.float().cpu().numpy() for k in kept]
            else:
                boxes = batched_nms(prediction, args.conf, args.iou, args.classes,
                                    args.agnostic_nms, args.max_det)
        self._count(len(frames), started)
        return boxes

    def _upload(self, frames: list[np.ndarray], device: torch.device) -> torch.Tensor:
        """The frames as one (B, H, W, 3) uint8 tensor on ``device``: on CUDA copied straight
        into pinned memory and sent in one asynchronous copy (no stacked intermediate)."""
        if device.type != "cuda":
            return torch.from_numpy(np.stack(frames)).to(device)
        host = torch.empty((len(frames), *frames[0].shape), dtype=torch.uint8, pin_memory=True)
        for row, frame in zip(host, frames, strict=True):
            row.numpy()[:] = frame
        return host.to(device, non_blocking=True)

    def _arguments(self) -> dict[str, Any]:
        from ultralytics.cfg import DEFAULT_CFG_DICT

        # fp16 on CUDA (ultralytics keeps fp32 on the CPU): `quantize` since 8.4.x, where the
        # older `half` warns on every call.
        fp16 = {"quantize": 16} if "quantize" in DEFAULT_CFG_DICT else {"half": True}
        return {"conf": self.cfg.conf, "iou": self.cfg.iou, "imgsz": self.cfg.imgsz,
                "classes": self.classes, "device": self.device, "verbose": False, **fp16}

    def _predictor(self) -> Any:
        """ultralytics' predictor, set up by a first (blank) frame if nothing ran yet."""
        if self.model.predictor is None:
            blank = np.zeros((self.cfg.imgsz, self.cfg.imgsz, 3), np.uint8)
            self.model.predict(blank, **self._arguments())
        return self.model.predictor

    def _count(self, frames: int, started: float) -> None:
        if not self.batches:
            # ultralytics pins torch to cpu_count - 1 threads on its first call; take them all
            # back (or this process's share, e.g. a Ray actor's CPUs).
            torch.set_num_threads(self._threads or os.cpu_count() or 1)
        self.batches[frames] += 1
        self.busy_s += time.perf_counter() - started

    @property
    def stride(self) -> int:
        """The detector's largest stride: letterboxed frames are padded to a multiple of it."""
        return max(int(self.model.model.stride.max()), 32)

    def _detect(self, batch: list[_Frame]) -> None:
        try:
            for frame, data in zip(batch, self.predict([f.image for f in batch]), strict=True):
                frame.boxes = _boxes(data, frame.image.shape)
        except Exception as err:  # every frame of the batch fails, the next batch may not
            for frame in batch:
                frame.error = err
        for frame in batch:
            frame.done = True


@dataclasses.dataclass(eq=False)
class _Frame:
    image: np.ndarray
    boxes: Any = None
    error: Exception | None = None
    done: bool = False


class RemoteDetector:
    """A stream's detector in another process (the model worker, which owns the GPU): the frame
    is letterboxed here, exactly as ultralytics' predictor does it, and handed over in shared
    memory; the worker batches the frames of every stream process into one forward pass and
    sends back the boxes, which are mapped back to the frame here.

    ``submit(index, buffer_name, shape)`` sends one request to detector ``index`` of the worker
    and returns a future of its boxes (in letterboxed pixels).
    """

    def __init__(self, submit: Callable[[int, str, tuple], Future], index: int,
                 cfg: TrackerConfig, stride: int, info: Any) -> None:
        from ultralytics.data.augment import LetterBox

        self.submit = submit
        self.index = index
        self.info = info
        self.letterbox = LetterBox(new_shape=(cfg.imgsz, cfg.imgsz), auto=True, stride=stride)
        # One frame in flight per stream: one buffer the size of the largest letterboxed frame.
        self.buffer = SharedMemory(create=True, size=3 * (cfg.imgsz + stride) ** 2)

    def __call__(self, image: np.ndarray) -> Any:
        framed = self.letterbox(image=image)
        np.ndarray(framed.shape, np.uint8, self.buffer.buf)[:] = framed
        data = self.submit(self.index, self.buffer.name, framed.shape).result()
        if len(data):
            from ultralytics.utils.ops import scale_boxes

            data[:, :4] = scale_boxes(framed.shape[:2], data[:, :4], image.shape[:2])
        return _boxes(data, image.shape)

    def close(self) -> None:
        self.buffer.close()
        self.buffer.unlink()


class DetectionServer:
    """The worker's side of :class:`RemoteDetector`: one thread takes every request waiting (up
    to ``tracker.batch``), groups them by detector and frame size, runs one forward pass per
    group and answers each stream process on its own queue (``reply(client, request_id,
    boxes_or_error)``)."""

    def __init__(self, configs: Sequence[TrackerConfig], requests: Any,
                 reply: Callable[[int, int, Any], None]) -> None:
        self.detectors = [Detector(cfg) for cfg in configs]
        for detector in self.detectors:
            detector._predictor()  # warm up before the first stream's frame
        self.requests = requests
        self.reply = reply
        self.max_batch = max(d.max_batch for d in self.detectors)
        self._buffers: dict[str, SharedMemory] = {}
        self._thread = threading.Thread(target=self.serve, name="detection", daemon=True)

    def start(self) -> DetectionServer:
        """Serve on a thread of this process (:meth:`serve` serves on the caller's)."""
        self._thread.start()
        return self

    def join(self) -> None:
        self._thread.join()

    def summary(self) -> list[dict[str, Any]]:
        return [d.summary() for d in self.detectors]

    def serve(self) -> None:
        """Answer requests until a None arrives."""
        while (first := self.requests.get()) is not None:
            batch, stop = [first], False
            while len(batch) < self.max_batch:
                try:
                    item = self.requests.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            groups: dict[tuple, list] = {}
            for request in batch:  # (client, request_id, detector index, buffer name, shape)
                groups.setdefault((request[2], tuple(request[4])), []).append(request)
            for (index, shape), requests in groups.items():
                self._detect(self.detectors[index], shape, requests)
            if stop:
                break
        for buffer in self._buffers.values():
            buffer.close()

    def _detect(self, detector: Detector, shape: tuple, requests: list) -> None:
        try:
            frames = [np.ndarray(shape, np.uint8, self._buffer(r[3]).buf) for r in requests]
            results: list[Any] = detector.predict_framed(frames)
        except Exception as err:  # these frames fail, the next batch may not
            results = [err] * len(requests)
        for request, result in zip(requests, results, strict=True):
            self.reply(request[0], request[1], result)

    def _buffer(self, name: str) -> SharedMemory:
        if name not in self._buffers:
            self._buffers[name] = _attach(name)
        return self._buffers[name]


class DetectionWorker:
    """The run's detectors in their own process, serving every stream process (see
    :class:`RemoteDetector`): one CUDA context for all their frames, and an interpreter of its
    own, apart from the VLM worker's (a detector's Python and the VLM's would take turns).

    ``frames``: the requests queue the stream processes' clients write; ``results``: each
    client's answer queue, where the boxes go."""

    def __init__(self, configs: Sequence[TrackerConfig], frames: Any, results: Sequence[Any],
                 log_path: Path | None = None) -> None:
        import multiprocessing

        context = multiprocessing.get_context("spawn")  # CUDA cannot be forked
        self.frames = frames
        self._control = context.Queue()
        self._process = context.Process(target=_detect_in_child, name="detection",
                                        daemon=True, args=(tuple(configs), frames,
                                                           list(results), self._control,
                                                           log_path))
        self.served: tuple = ()  # per detector: (its config, stride, info)
        self.summary: list[dict[str, Any]] = []

    def start(self, timeout_s: float = 600.0) -> DetectionWorker:
        """Start the process and wait until its detectors are loaded; a failure raises."""
        self._process.start()
        try:
            kind, payload = self._control.get(timeout=timeout_s)
        except queue.Empty:
            self._process.kill()
            raise ModelError(f"the detection worker did not load within {timeout_s:g} s") \
                from None
        if kind != "ready":
            self._process.join(timeout=10)
            raise payload
        self.served = payload
        return self

    def close(self) -> None:
        """Detect what is queued, then stop (idempotent)."""
        if not self._process.is_alive():
            return
        self.frames.put(None)
        try:
            _, self.summary = self._control.get(timeout=60)
        except queue.Empty:
            logger.warning("the detection worker did not report how it batched")
        self._process.join(timeout=30)
        if self._process.is_alive():
            self._process.kill()


def _detect_in_child(configs: tuple[TrackerConfig, ...], frames: Any, results: list[Any],
                     control: Any, log_path: Path | None) -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the run stops its streams, then us
    if log_path is not None:
        logger.add(log_path, level="INFO", enqueue=False)

    def reply(client: int, request_id: int, outcome: Any) -> None:
        if isinstance(outcome, BaseException):
            outcome = RuntimeError(f"{type(outcome).__name__}: {outcome}")  # always picklable
        results[client].put(("answer", request_id, outcome))

    try:
        server = DetectionServer(configs, frames, reply)
    except Exception as err:
        control.put(("failed", ModelError(f"{type(err).__name__}: {err}")))
        return
    control.put(("ready", tuple((d.cfg, d.stride, d.info) for d in server.detectors)))
    server.serve()
    control.put(("closed", server.summary()))


def _attach(name: str) -> SharedMemory:
    """A stream's buffer, for reading. Every process of a run shares the run's resource
    tracker (spawned children inherit it), which already holds the buffer from its owner: the
    owner's ``unlink`` removes it once, and a second registration here changes nothing (taking
    one back would make the owner's removal a KeyError in the tracker)."""
    try:
        return SharedMemory(name=name, track=False)  # Python >= 3.13
    except TypeError:
        return SharedMemory(name=name)


def _boxes(data: np.ndarray, shape: tuple) -> Any:
    from ultralytics.engine.results import Boxes

    return Boxes(data, shape[:2])


def batched_nms(prediction: Any, conf: float, iou: float, classes: Sequence[int] | None,
                agnostic: bool, max_det: int) -> list[np.ndarray]:
    """ultralytics' ``non_max_suppression`` (best class per box, no extra channels) for a whole
    batch at once: torchvision's ``batched_nms`` over every image's candidates, so the device
    syncs once per batch rather than several times per image (per image, that loop was most of
    a detection worker's time at 100 cameras). Per image, rows ``[x1, y1, x2, y2, conf, cls]``
    by falling confidence, at most ``max_det``."""
    from torchvision.ops import batched_nms as nms

    if isinstance(prediction, (list, tuple)):
        prediction = prediction[0]
    images = prediction.shape[0]
    scores, labels = prediction[:, 4:].max(1)  # (B, anchors): the best class of each box
    candidate = scores > conf
    if classes is not None:
        candidate &= torch.isin(labels, torch.as_tensor(classes, device=labels.device))
    image, anchor = candidate.nonzero(as_tuple=True)
    xywh = prediction[image, :4, anchor].float()
    boxes = torch.cat((xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2), 1)
    score, label = scores[image, anchor].float(), labels[image, anchor]
    groups = image if agnostic else image * (prediction.shape[1] - 4) + label
    keep = nms(boxes, score, groups, iou)  # by falling score, across the batch
    rows = torch.cat((boxes[keep], score[keep, None], label[keep, None].float()), 1).cpu()
    owner = image[keep].cpu().numpy()
    rows = rows.numpy()
    order = np.argsort(owner, kind="stable")  # by image, each by falling score
    starts = np.searchsorted(owner[order], np.arange(images + 1))
    return [rows[order[starts[i]:starts[i + 1]]][:max_det] for i in range(images)]


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
                 threads: int | None = None, detector: Detector | RemoteDetector | None = None
                 ) -> None:
        self.cfg = cfg
        self.reset_after_s = reset_after_s
        self.detect = detector or Detector(cfg, threads)
        self.detector = self.detect.info
        self.tracker = _ultralytics_tracker(cfg.tracker)
        self.ids = TrackIds()
        self.resets = 0

    def update(self, frame: VideoFrame) -> Detections:
        if self._gap_too_long(frame):
            self.reset()
        boxes = self.detect(frame.image)
        tracks = self.tracker.update(boxes, frame.image)
        detections = _to_detections(tracks)
        return dataclasses.replace(detections, track_id=self.ids(detections.track_id))

    def close(self) -> None:
        """Release the detector's shared frame buffer, if it has one (a remote detector)."""
        close = getattr(self.detect, "close", None)
        if close is not None:
            close()

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
