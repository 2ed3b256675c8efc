"""Small synthetic inputs for the tests: a tiny random SmolVLM, videos, MOT folders, boxes."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from vidqa.assets.smolvlm import TINY_TEXT, TINY_VISION, build_random_smolvlm
from vidqa.messages import Answer, Detections


def build_tiny_vlm(directory: Path, seed: int = 0, text_layers: int = 4,
                   vision_layers: int = 2) -> Path:
    """Save a random-weight Idefics3 (64 px tiles, 4 image tokens) and its processor."""
    return build_random_smolvlm(directory, seed=seed,
                                vision={**TINY_VISION, "num_hidden_layers": vision_layers},
                                text={**TINY_TEXT, "num_hidden_layers": text_layers})


def person_crops(count: int, seed: int = 0) -> list[np.ndarray]:
    """Random BGR crops of person-like (tall) shapes."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (int(rng.integers(60, 140)), int(rng.integers(30, 60)), 3),
                         dtype=np.uint8) for _ in range(count)]


def detections(boxes: list[tuple[float, float, float, float]], track_ids: list[int]) -> Detections:
    n = len(boxes)
    return Detections(xyxy=np.asarray(boxes, np.float32).reshape(n, 4),
                      confidence=np.full(n, 0.9, np.float32), class_id=np.zeros(n, np.int64),
                      track_id=np.asarray(track_ids, np.int64))


def write_video(path: Path, frames: int, size: tuple[int, int] = (160, 120), fps: float = 10.0,
                codec: str = "MJPG") -> Path:
    """A synthetic clip: a bright rectangle moving over a gradient."""
    width, height = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), fps, size)
    assert writer.isOpened(), f"cannot write {path}"
    for i in range(frames):
        image = np.zeros((height, width, 3), np.uint8)
        image[:, :, 1] = np.linspace(0, 255, width, dtype=np.uint8)
        x = (i * 5) % max(1, width - 20)
        image[20:80, x:x + 20] = 255
        writer.write(image)
    writer.release()
    return path


def write_mot_sequence(root: Path, frames: int, size: tuple[int, int] = (160, 120),
                       fps: int = 30, name: str = "MOT16-00") -> Path:
    """A MOT16-style sequence directory: img1/000001.jpg ... and seqinfo.ini."""
    seq = root / name
    (seq / "img1").mkdir(parents=True)
    width, height = size
    for i in range(frames):
        image = np.full((height, width, 3), (i * 7) % 255, np.uint8)
        cv2.imwrite(str(seq / "img1" / f"{i + 1:06d}.jpg"), image)
    (seq / "seqinfo.ini").write_text(
        f"[Sequence]\nname={name}\nimDir=img1\nframeRate={fps}\nseqLength={frames}\n"
        f"imWidth={width}\nimHeight={height}\nimExt=.jpg\n")
    return seq


def make_identity_layer(model: torch.nn.Module, path: str) -> None:
    """Zero the projections that write into the residual stream of the layer at ``path``: it
    becomes x -> x (and still fills its KV cache, unlike a skipped layer)."""
    layer = model.get_submodule(path)
    attn, mlp = layer.self_attn, layer.mlp
    is_decoder = hasattr(attn, "o_proj")
    writers = [attn.o_proj, mlp.down_proj] if is_decoder else [attn.out_proj, mlp.fc2]
    with torch.no_grad():
        for linear in writers:
            linear.weight.zero_()
            if linear.bias is not None:
                linear.bias.zero_()


class ScriptedTracker:
    """Stands in for the detector in soak and failure tests: a new person every ``every``
    frames, each tracked for ``life`` frames, walking right. The rest of the pipeline is real."""

    def __init__(self, every: int = 5, life: int = 12) -> None:
        self.every = every
        self.life = life
        self.resets = 0

    def boxes(self, index: int, width: int, height: int) -> Detections:
        newest = index // self.every
        oldest = max(0, (index - self.life) // self.every + 1)
        ids = list(range(oldest, newest + 1))  # the people alive at this frame
        xs = [4 * (index - t * self.every) % max(width - 30, 1) for t in ids]
        boxes = [(x, 10, x + 30, min(80, height)) for x in xs]
        return detections(boxes, ids) if ids else Detections.empty()

    def __call__(self, frames):
        from vidqa.messages import FrameResult

        for frame in frames:
            width, height = frame.size
            yield FrameResult(frame=frame, detections=self.boxes(frame.frame_index, width, height))


@dataclass
class FakeProfile:
    """A profile whose ranking is the layer order, or its reverse for the metrics in
    ``reverse_for`` (planning and reporting are tested apart from the profiler)."""

    layers: list
    reverse_for: tuple[str, ...] = ()

    @classmethod
    def of(cls, paths: list[str], reverse_for: tuple[str, ...] = ()) -> FakeProfile:
        from vidqa.vlm.compression.layers import LayerRef

        refs = [LayerRef(p, "vision" if "vision" in p else "text", i) for i, p in enumerate(paths)]
        return cls(refs, reverse_for)

    def ranking(self, metric: str) -> list[int]:
        order = list(range(len(self.layers)))
        return order[::-1] if metric in self.reverse_for else order

    def to_dict(self) -> dict:
        return {"layers": [r.path for r in self.layers]}


def make_crops(track_ids: list[int], frame: int = 0) -> list:
    """One synthetic person ROI per track id, all from ``frame``."""
    from vidqa.messages import Crop

    crops = person_crops(len(track_ids), seed=frame)
    return [Crop(track_id=t, frame_index=frame, time_s=frame / 10, bbox=(0, 0, 10, 20),
                crop_box=(0, 0, 10, 20), image=crop, reason="new")
            for t, crop in zip(track_ids, crops, strict=True)]


def clip_frames(count: int) -> list:
    import cv2

    from vidqa import assets
    from vidqa.messages import VideoFrame

    capture, frames = cv2.VideoCapture(str(assets.sample_video())), []
    for index in range(count):
        ok, image = capture.read()
        assert ok
        frames.append(VideoFrame(image=image, frame_index=index, timestamp=index / 10,
                                 source_id="clip", fps=10.0))
    return frames


def scripted_answers(crops, questions, gate: threading.Event | None = None):
    """Per ROI one answer per question, "yes" for even tracks (no model needed)."""
    if gate is not None:
        gate.wait(timeout=10)
    return [[Answer(frame_index=r.frame_index, time_s=r.time_s, track_id=r.track_id,
                    question=q, answer="yes" if r.track_id % 2 == 0 else "no", p_yes=0.5,
                    margin=0.0, bbox=r.bbox, vlm_ms=1.0, model="scripted",
                    stream_id=r.stream_id) for q in questions] for r in crops]


def write_sample_clip(path: Path, frames: int, size: tuple[int, int]) -> Path:
    """The first ``frames`` frames of the sample video at ``size`` (MJPG, 10 fps)."""
    from vidqa import assets

    capture = cv2.VideoCapture(str(assets.sample_video()))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, size)
    try:
        for _ in range(frames):
            ok, image = capture.read()
            assert ok, "the sample clip is shorter than the frames asked for"
            writer.write(cv2.resize(image, size, interpolation=cv2.INTER_AREA))
    finally:
        writer.release()
        capture.release()
    return path
