"""ROI cropper and the per-track policy: which person crops go to the VLM, and when.

A track is asked once, when it is confirmed (seen in ``min_hits`` frames) and its box is big
enough; optionally again every ``reask_every`` frames or when its crop grows by
``reask_growth``. Per-track state lives in a dict keyed by track id and is evicted when a track
has not been seen for ``max_age`` frames, so memory stays bounded on endless streams.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from vidqa.config import RoiConfig

if TYPE_CHECKING:
    from vidqa.zones import ZoneMap
from vidqa.messages import Crop, FrameResult

Box = tuple[int, int, int, int]


def clip_box(xyxy: np.ndarray, width: int, height: int) -> Box:
    """Round a float box outward to pixels and clip it to the frame (may come out empty)."""
    x1, y1, x2, y2 = np.floor(xyxy[:2]).tolist() + np.ceil(xyxy[2:]).tolist()
    return (int(min(max(x1, 0), width)), int(min(max(y1, 0), height)),
            int(min(max(x2, 0), width)), int(min(max(y2, 0), height)))


def pad_box(box: Box, padding: float, width: int, height: int) -> Box:
    """Grow a box by ``padding`` of its size on every side, clipped to the frame."""
    x1, y1, x2, y2 = box
    dx, dy = round((x2 - x1) * padding), round((y2 - y1) * padding)
    return max(x1 - dx, 0), max(y1 - dy, 0), min(x2 + dx, width), min(y2 + dy, height)


def box_area(box: Box) -> int:
    return max(box[2] - box[0], 0) * max(box[3] - box[1], 0)


def distinct_tracks(crops: Iterable[Crop], count: int) -> list[Crop]:
    """The first ROI of each track, for the first ``count`` tracks (stops consuming there)."""
    chosen: dict[int, Crop] = {}
    for crop in crops:
        chosen.setdefault(crop.track_id, crop)
        if len(chosen) >= count:
            break
    return list(chosen.values())


@dataclass
class _Track:
    hits: int = 0
    last_seen: int = 0  # the policy's own frame counter, immune to gaps in frame.frame_index
    asked_at: int | None = None
    asked_area: int = 0


class RoiPolicy:
    """Turns tracked boxes into the crops worth asking about; ``update`` handles one frame."""

    def __init__(self, cfg: RoiConfig, zones: ZoneMap | None = None) -> None:
        self.cfg = cfg
        self.zones = zones  # with cfg.zones: only tracks standing in them are asked
        self.tracks: dict[int, _Track] = {}
        self.tick = 0
        self.tracks_seen = 0
        self.crops_emitted = 0

    def update(self, result: FrameResult) -> FrameResult:
        self.tick += 1
        width, height = result.frame.size
        crops = []
        for row, track_id in enumerate(result.detections.track_id.tolist()):
            box = clip_box(result.detections.xyxy[row], width, height)
            crop = self._consider(track_id, box, result)
            if crop is not None:
                crops.append(crop)
        self.crops_emitted += len(crops)
        return dataclasses.replace(result, crops=result.crops + tuple(crops),
                                   ended_tracks=self._evict())

    def __call__(self, results: Iterable[FrameResult]) -> Iterator[FrameResult]:
        for result in results:
            yield self.update(result)

    def _consider(self, track_id: int, box: Box, result: FrameResult) -> Crop | None:
        track = self.tracks.get(track_id)
        if track is None:
            track = self.tracks[track_id] = _Track()
            self.tracks_seen += 1
        track.hits += 1
        track.last_seen = self.tick
        big_enough = (box[2] - box[0] >= self.cfg.min_width
                      and box[3] - box[1] >= self.cfg.min_height)
        if track.hits < self.cfg.min_hits:
            return None
        if not big_enough or not self._in_zone(box):
            return None
        reason = self._reason(track, box_area(box))
        if reason is None:
            return None
        track.asked_at, track.asked_area = self.tick, box_area(box)
        return self._crop(track_id, box, result, reason)

    def _in_zone(self, box: Box) -> bool:
        return not self.cfg.zones or self.zones is None or self.zones.allows(box, self.cfg.zones)

    def _reason(self, track: _Track, area: int) -> str | None:
        if track.asked_at is None:
            return "new"
        if self.cfg.reask_every and self.tick - track.asked_at >= self.cfg.reask_every:
            return "periodic"
        if self.cfg.reask_growth and area >= self.cfg.reask_growth * track.asked_area:
            return "larger"
        return None

    def _crop(self, track_id: int, box: Box, result: FrameResult, reason: str) -> Crop:
        frame = result.frame
        width, height = frame.size
        crop_box = pad_box(box, self.cfg.padding, width, height)
        x1, y1, x2, y2 = crop_box
        image = frame.image[y1:y2, x1:x2].copy()  # a copy: the frame buffer may be reused
        return Crop(track_id=track_id, frame_index=frame.frame_index, time_s=frame.timestamp,
                   bbox=box, crop_box=crop_box, image=image, reason=reason,
                   stream_id=frame.stream_id)

    def _evict(self) -> tuple[int, ...]:
        dead = [tid for tid, t in self.tracks.items()
                if self.tick - t.last_seen >= self.cfg.max_age]
        for track_id in dead:
            del self.tracks[track_id]
        return tuple(dead)
