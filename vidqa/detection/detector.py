"""The person detector: one ultralytics YOLO model answering the frames of every stream of a
process, batched, and one NMS for a whole batch."""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from loguru import logger

from vidqa import assets
from vidqa.config import TrackerConfig
from vidqa.detection.backends import exported_model, installed, resolve_backend, unpin_openvino
from vidqa.errors import ConfigError, ModelError


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
        self.backend = resolve_backend(cfg.backend, cfg.device)
        self.info = dataclasses.replace(assets.resolve_detector(cfg.weights), backend=self.backend)
        path = self.info.path if self.backend == "torch" else \
            str(exported_model(self.info.path, cfg.imgsz, self.backend))
        try:
            self.model = YOLO(path, task="detect")
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
        self.stage_s: Counter[str] = Counter()  # letterbox, inference, nms: seconds of each
        self._threads = threads  # torch threads once running; None = every core
        self._pending: list[_Frame] = []
        self._busy = False
        self._turn = threading.Condition()
        logger.info("detector {} ({}) on classes {}, batches of up to {} frames; ultralytics {} "
                    "(settings {}, sync {})", self.info.name, self.info.note or self.info.path,
                    {c: names[c] for c in self.classes}, self.max_batch, ultralytics.__version__,
                    SETTINGS.file, SETTINGS.get("sync"))
        if self.backend == "openvino":
            unpin_openvino(self._predictor().model, Path(path))
        _log_backend(self.backend, cfg, path)

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
        return {"backend": self.backend, "max_batch": self.max_batch, "passes": passes,
                "busy_s": round(self.busy_s, 3),
                "stage_s": {k: round(v, 3) for k, v in self.stage_s.items()},
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
        for result in results:  # the predictor's own clocks, per image, in ms
            for stage, name in (("preprocess", "letterbox"), ("inference", "inference"),
                                ("postprocess", "nms")):
                self.stage_s[name] += result.speed.get(stage, 0.0) / 1000
        return [result.boxes.data.cpu().numpy() for result in results]

    def predict_framed(self, frames: list[np.ndarray], letterbox: dict | None = None
                       ) -> list[np.ndarray]:
        """:meth:`predict` for frames already letterboxed as ultralytics' predictor does it
        (:class:`RemoteDetector`): the predictor's own tensor steps and model, without its
        per-image letterbox and result objects, and one NMS for the whole batch
        (:func:`batched_nms`); boxes in the letterboxed frames' pixels. With ``letterbox``
        (:func:`letterbox_params` of the frames' shape) the frames are whole and letterboxed
        here, on the model's device (``tracker.letterbox: worker``)."""
        started = time.perf_counter()
        predictor = self._predictor()
        args = predictor.args
        with torch.inference_mode():
            batch = self._upload(frames, predictor.device)
            batch = batch.permute(0, 3, 1, 2).flip(1)  # BHWC BGR -> BCHW RGB
            batch = batch.half() if predictor.model.fp16 else batch.float()
            if letterbox is not None:
                batch = letterbox_batch(batch, letterbox)
            batch = batch.div_(255)
            uploaded = time.perf_counter()
            prediction = predictor.inference(batch)
            inferred = time.perf_counter()
            if getattr(predictor.model, "end2end", False):  # no NMS to batch: ultralytics' own
                from ultralytics.utils.nms import non_max_suppression

                kept = non_max_suppression(prediction, args.conf, args.iou, args.classes,
                                           max_det=args.max_det, end2end=True)
                boxes = [k.float().cpu().numpy() for k in kept]
            else:
                boxes = batched_nms(prediction, args.conf, args.iou, args.classes,
                                    args.agnostic_nms, args.max_det)
        self._count(len(frames), started)
        self.stage_s["upload"] += uploaded - started
        self.stage_s["inference"] += inferred - uploaded
        self.stage_s["nms"] += time.perf_counter() - inferred
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
        model = self.model.model if self.backend == "torch" else self._predictor().model
        return max(int(torch.as_tensor(model.stride).max()), 32)

    def _detect(self, batch: list[_Frame]) -> None:
        try:
            for frame, data in zip(batch, self.predict([f.image for f in batch]), strict=True):
                frame.boxes = boxes_of(data, frame.image.shape)
        except Exception as err:  # every frame of the batch fails, the next batch may not
            for frame in batch:
                frame.error = err
        for frame in batch:
            frame.done = True


def _log_backend(backend: str, cfg: TrackerConfig, path: str) -> None:
    """One loud line on what runs the detector, and why (a slow CPU run starts here)."""
    logger.info("DETECTOR BACKEND: {} (tracker.backend: {}, device {}) running {}",
                backend.upper(), cfg.backend, cfg.device, path)
    if backend == "torch" and cfg.device in ("auto", "cpu") and not torch.cuda.is_available() \
            and not installed("openvino"):
        logger.warning("the detector runs PyTorch eager on the CPU, 3-5x slower than OpenVINO "
                       "here: {}", "pip install 'vidqa[cpu]' (then tracker.backend: auto picks it)")


@dataclasses.dataclass(eq=False)
class _Frame:
    image: np.ndarray
    boxes: Any = None
    error: Exception | None = None
    done: bool = False


def letterbox_params(shape: tuple, imgsz: int, stride: int) -> dict[str, Any]:
    """What ultralytics' predictor's letterbox does to a frame of ``shape`` (its own
    ``LetterBox.get_params``, minimum rectangle): ``new_unpad`` (w, h), padding ``top``,
    ``bottom``, ``left``, ``right``; ``framed`` is the letterboxed (h, w)."""
    from ultralytics.data.augment import LetterBox

    frame = np.broadcast_to(np.uint8(0), (*shape[:2], 3))  # only its shape is read
    params = LetterBox(new_shape=(imgsz, imgsz), auto=True, stride=stride).get_params(
        {"img": frame})
    width, height = params["new_unpad"]
    framed = (height + params["top"] + params["bottom"], width + params["left"] + params["right"])
    return {**params, "framed": framed}


def letterbox_batch(batch: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
    """A (B, 3, H, W) batch of frames (0-255, float) resized and padded with grey 114 as
    :func:`letterbox_params` says, on the batch's device (bilinear, as cv2's INTER_LINEAR)."""
    width, height = params["new_unpad"]
    if batch.shape[2:] != (height, width):
        batch = torch.nn.functional.interpolate(batch, size=(height, width), mode="bilinear",
                                                align_corners=False)
    pad = (params["left"], params["right"], params["top"], params["bottom"])
    return torch.nn.functional.pad(batch, pad, value=114.0)  # (B, 3, framed h, framed w)


def boxes_of(data: np.ndarray, shape: tuple) -> Any:
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
    return (cfg.weights, cfg.backend, cfg.conf, cfg.iou, cfg.imgsz, cfg.classes, cfg.device,
            cfg.batch, cfg.letterbox)
