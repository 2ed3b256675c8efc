"""The frozen messages that travel between stages.

One envelope per hop: a source yields :class:`VideoFrame`; the tracker wraps it in a
:class:`FrameResult` with :class:`Detections`; the cropper adds :class:`Roi` crops; the VLM adds
:class:`Answer` records. Stages add information with :func:`dataclasses.replace` and never mutate
what they received.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class VideoFrame:
    """One decoded frame and where it came from.

    ``timestamp`` is ``frame_index / fps`` for files and MOT sequences, and seconds of wall clock
    since the source opened for live sources (webcam, stream).
    """

    image: np.ndarray  # (H, W, 3) uint8, BGR as OpenCV decodes it
    frame_index: int  # 0-based position in the source (live: counts frames the camera sent)
    timestamp: float
    source_id: str
    fps: float
    is_live: bool = False
    gap_s: float = 0.0  # live: the camera's longest silence since the previous frame (an outage)
    stream_id: str = "0"  # the stream of a multi-stream run (its id in the config)

    def __post_init__(self) -> None:
        if self.image.ndim != 3 or self.image.shape[2] != 3 or self.image.dtype != np.uint8:
            raise ValueError(
                f"VideoFrame.image must be (H, W, 3) uint8 BGR, got shape {self.image.shape} "
                f"dtype {self.image.dtype}. Convert grayscale frames with cv2.cvtColor first."
            )

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return self.image.shape[1], self.image.shape[0]


def _check_rows(name: str, array: np.ndarray, rows: int, tail: tuple[int, ...] = ()) -> None:
    expected = (rows, *tail)
    if array.shape != expected:
        raise ValueError(f"Detections.{name} must have shape {expected}, got {array.shape}")


@dataclass(frozen=True)
class Detections:
    """Tracked boxes of one frame as parallel arrays (row i is one person)."""

    xyxy: np.ndarray  # (N, 4) float32 pixel corners x1, y1, x2, y2
    confidence: np.ndarray  # (N,) float32
    class_id: np.ndarray  # (N,) int64, the detector's class index
    track_id: np.ndarray  # (N,) int64, persistent across frames

    def __post_init__(self) -> None:
        rows = len(self.xyxy)
        _check_rows("xyxy", self.xyxy, rows, (4,))
        _check_rows("confidence", self.confidence, rows)
        _check_rows("class_id", self.class_id, rows)
        _check_rows("track_id", self.track_id, rows)

    def __len__(self) -> int:
        return len(self.xyxy)

    @classmethod
    def empty(cls) -> Detections:
        return cls(
            xyxy=np.zeros((0, 4), np.float32),
            confidence=np.zeros(0, np.float32),
            class_id=np.zeros(0, np.int64),
            track_id=np.zeros(0, np.int64),
        )


@dataclass(frozen=True)
class Crop:
    """A person crop chosen by the ROI policy, waiting for the VLM."""

    track_id: int
    frame_index: int
    time_s: float
    bbox: tuple[int, int, int, int]  # the tracked box, clipped to the frame
    crop_box: tuple[int, int, int, int]  # bbox plus padding, clipped: the pixels in `image`
    image: np.ndarray  # (h, w, 3) uint8 BGR crop
    reason: str  # why it is asked now: "new", "periodic" or "larger"
    stream_id: str = "0"
    # Its stored vision features, (image tokens, C), when asked later from the store
    # (vidqa ask): the vision tower does not run, and ``image`` may be empty.
    features: Any = None

    @property
    def key(self) -> tuple[str, int]:
        """Track ids are per stream; (stream, track) names one person across the run."""
        return self.stream_id, self.track_id


@dataclass(frozen=True)
class Answer:
    """The VLM's answer to one question about one track. One line of ``events.jsonl``."""

    frame_index: int  # the frame the crop was taken from
    time_s: float
    track_id: int
    question: str
    answer: str
    p_yes: float | None  # None for free-form (text) questions
    margin: float | None  # logit(yes) - logit(no); None for text questions
    bbox: tuple[int, int, int, int]
    vlm_ms: float  # the crop's share of the model time of the batch it was answered in
    model: str
    compressed: bool = False
    plan_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # stage-specific fields (audit, ...)
    stream_id: str = "0"
    queue_ms: float | None = None  # waiting for a batch (asynchronous service)
    latency_ms: float | None = None  # crop submitted -> answer back at its stream
    answered_frame_index: int | None = None  # the stream's frame when the answer arrived
    answered_time_s: float | None = None

    def to_event(self) -> dict[str, Any]:
        """The JSON-ready event, with stage-specific extras merged in."""
        event = {
            "stream_id": self.stream_id,
            "frame": self.frame_index,
            "time_s": round(self.time_s, 4),
            "track_id": self.track_id,
            "question": self.question,
            "answer": self.answer,
            "p_yes": None if self.p_yes is None else round(self.p_yes, 5),
            "margin": None if self.margin is None else round(self.margin, 4),
            "bbox": list(self.bbox),
            "vlm_ms": round(self.vlm_ms, 2),
            "queue_ms": _rounded(self.queue_ms, 2),
            "latency_ms": _rounded(self.latency_ms, 2),
            "answered_frame": self.answered_frame_index,
            "answered_time_s": _rounded(self.answered_time_s, 4),
            "model": self.model,
            "compressed": self.compressed,
            "plan_id": self.plan_id,
        }
        event.update(self.extra)
        return event


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


@dataclass(frozen=True)
class FrameResult:
    """Everything known about one frame after the stages it has passed through."""

    frame: VideoFrame
    detections: Detections
    crops: tuple[Crop, ...] = ()
    answers: tuple[Answer, ...] = ()
    ended_tracks: tuple[int, ...] = ()  # tracks the cropper declared dead at this frame
    alerts: tuple[Any, ...] = ()  # vidqa.zones.Alert raised at this frame by the rules


@dataclass(frozen=True)
class Segment:
    """A closed piece of a stream's recording: the annotated video of ``segment_s`` seconds,
    playable on its own, and the files written beside it for the same frames (``mot.txt``
    rows). The store indexes it, and retention deletes it by age and size."""

    stream_id: str
    video: str  # path of the video file
    files: tuple[str, ...]  # every file of the segment, the video first
    first_frame: int
    last_frame: int
    frames: int
    started_s: float  # stream time of the first frame
    ended_s: float  # stream time of the last frame
    wall_started: float  # epoch seconds when the first frame was written
    wall_ended: float  # epoch seconds when the segment was closed
    bytes: int  # on disk, every file together


@dataclass(frozen=True)
class Clip:
    """A finished alert clip: the annotated frames from ``alerts.clip_pre_s`` before its first
    alert to ``alerts.clip_post_s`` after its last, one WebM file that a browser plays. The
    store points the alerts it shows at it, and retention deletes it by age and size."""

    stream_id: str
    path: str  # relative to the store's folder: clips/<stream>/alert-<UTC time>-<n>.webm
    alerts: tuple[tuple[str, int, int], ...]  # (rule, track id, frame) of every alert it shows
    first_frame: int
    last_frame: int
    frames: int
    started_s: float  # stream time of the first frame
    ended_s: float  # stream time of the last frame
    fps: float  # the rate it plays at: the rate its frames were taken
    wall_started: float  # epoch seconds of the first frame
    wall_ended: float  # epoch seconds when the file was closed
    bytes: int
    cut: str  # why it ended: "after" (clip_post_s passed), "max" (clip_max_s), "end" (stream)


class LatestAnswers:
    """The newest answer of each live track to each question, forgotten when the track ends;
    an answer that arrives after its track ended is not kept (it is still an event)."""

    def __init__(self) -> None:
        self.latest: dict[int, dict[str, Answer]] = {}
        self.alive: set[int] = set()

    def update(self, result: FrameResult) -> None:
        self.alive.update(result.detections.track_id.tolist())
        for answer in result.answers:
            if answer.track_id in self.alive:
                self.latest.setdefault(answer.track_id, {})[answer.question] = answer
        for track_id in result.ended_tracks:
            self.latest.pop(track_id, None)
            self.alive.discard(track_id)
