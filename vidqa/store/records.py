"""What a stream hands the store: picklable records (they cross to the run's process, or to
a Ray actor), each stamped with the wall time it happened."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vidqa.messages import Answer


@dataclass(frozen=True)
class StreamRecord:
    """A stream of the run, and where its JSONL export goes."""

    stream_id: str
    source: str
    folder: Path
    segmented: bool  # its JSONL rotates with its video segments
    events: bool  # sinks.events: write its events JSONL
    alerts: bool  # it has rules: write its alerts JSONL


@dataclass(frozen=True)
class TrackSeen:
    """A track's life so far: sent when it first appears, when it ends, and at the stream's
    end for those still alive."""

    stream_id: str
    track_id: int
    first_frame: int
    first_s: float
    first_seen_at: float
    last_frame: int
    last_s: float
    last_seen_at: float
    best_box: tuple[int, int, int, int]  # its largest box
    best_frame: int
    ended: bool


@dataclass(frozen=True)
class AnswerRecord:
    answer: Answer
    answered_at: float  # epoch seconds the stream received it
    snapshot: bytes | None  # the crop, JPEG


@dataclass(frozen=True)
class AlertRecord:
    alert: Any  # a vidqa.zones.Alert
    raised_at: float
    snapshot: bytes | None  # the full frame with the track's box, JPEG
