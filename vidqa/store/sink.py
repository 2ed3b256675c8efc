"""A stream's side of the store: frames in, records out, in fixed memory.

The sink keeps what a record will need and nothing more: the life of each live track (evicted
when the cropper ends it) and the crops asked and not answered yet (at most
:data:`MAX_CROPS`, the oldest forgotten first), so an answer can carry its crop's JPEG.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from vidqa.messages import Answer, Clip, FrameResult, Segment
from vidqa.store.records import AlertRecord, AnswerRecord, TrackSeen

MAX_CROPS = 256  # crops waiting for their answers, per stream
JPEG_QUALITY = 85
ALERT_COLOUR = (0, 0, 255)  # BGR red


@dataclass
class _Track:
    first_frame: int
    first_s: float
    first_seen_at: float
    last_frame: int = 0
    last_s: float = 0.0
    last_seen_at: float = 0.0
    best_box: tuple[int, int, int, int] = (0, 0, 0, 0)
    best_area: float = -1.0
    best_frame: int = 0


class StoreSink:
    """Turns a stream's frames into store records handed to ``send`` (the run's
    :meth:`~vidqa.store.writer.EventStore.put`, or a queue to the process that holds it)."""

    def __init__(self, stream_id: str, send: Callable[[list[Any]], None], snapshots: bool = True
                 ) -> None:
        self.stream_id = stream_id
        self._send = send
        self._records: list[Any] = []  # this frame's, sent together
        self.snapshots = snapshots
        self.tracks: dict[int, _Track] = {}
        self.crops: OrderedDict[tuple[int, int], np.ndarray | bytes] = OrderedDict()

    def write(self, result: FrameResult) -> None:
        now = time.time()
        self._see(result, now)
        if self.snapshots:
            for crop in result.crops:
                self.crops[crop.track_id, crop.frame_index] = crop.image
                while len(self.crops) > MAX_CROPS:
                    self.crops.popitem(last=False)
        self.write_answers(result.answers, now)
        for alert in result.alerts:
            self.send(AlertRecord(alert, now, self._frame_jpeg(result, alert.bbox)))
        for track_id in result.ended_tracks:
            track = self.tracks.pop(track_id, None)
            if track is not None:
                self.send(self._record(track_id, track, ended=True))
        self._ship()

    def write_answers(self, answers: Sequence[Answer], now: float | None = None) -> None:
        now = time.time() if now is None else now
        for answer in answers:
            self.send(AnswerRecord(answer, now, self._crop_jpeg(answer)))
        self._ship()

    def on_segment(self, segment: Segment) -> None:
        self.send(segment)
        self._ship()

    def on_clip(self, clip: Clip) -> None:
        self.send(clip)
        self._ship()

    def close(self) -> None:
        """The tracks still alive, as they stand."""
        for track_id, track in self.tracks.items():
            self.send(self._record(track_id, track, ended=False))
        self.tracks.clear()
        self.crops.clear()
        self._ship()

    def send(self, record: Any) -> None:
        self._records.append(record)

    def _ship(self) -> None:
        if self._records:
            records, self._records = self._records, []
            self._send(records)

    def _see(self, result: FrameResult, now: float) -> None:
        frame = result.frame
        detections = result.detections
        for row, track_id in enumerate(detections.track_id.tolist()):
            box = tuple(int(v) for v in detections.xyxy[row])
            track = self.tracks.get(track_id)
            if track is None:
                track = self.tracks[track_id] = _Track(frame.frame_index, frame.timestamp, now)
                first = True
            else:
                first = False
            track.last_frame, track.last_s, track.last_seen_at = (frame.frame_index,
                                                                  frame.timestamp, now)
            area = float((box[2] - box[0]) * (box[3] - box[1]))
            if area > track.best_area:
                track.best_box, track.best_area, track.best_frame = box, area, frame.frame_index
            if first:  # queries see a track as soon as it appears
                self.send(self._record(track_id, track, ended=False))

    def _record(self, track_id: int, t: _Track, ended: bool) -> TrackSeen:
        return TrackSeen(self.stream_id, track_id, t.first_frame, t.first_s, t.first_seen_at,
                         t.last_frame, t.last_s, t.last_seen_at, t.best_box, t.best_frame, ended)

    def _crop_jpeg(self, answer: Answer) -> bytes | None:
        """The answer's crop as JPEG, encoded once for all the questions asked of it."""
        key = (answer.track_id, answer.frame_index)
        image = self.crops.get(key)
        if image is None or isinstance(image, bytes):
            return image
        encoded = _jpeg(image)
        self.crops[key] = encoded
        return encoded

    def _frame_jpeg(self, result: FrameResult, bbox: Sequence[int]) -> bytes | None:
        if not self.snapshots:
            return None
        image = result.frame.image.copy()
        x1, y1, x2, y2 = (int(v) for v in bbox)
        cv2.rectangle(image, (x1, y1), (x2, y2), ALERT_COLOUR, 3)
        return _jpeg(image)


def _jpeg(image: np.ndarray) -> bytes | None:
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    return data.tobytes() if ok else None
