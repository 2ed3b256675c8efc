"""Zones and rules: named image regions, and alerts when an answer holds inside one.

A track is in a zone when its foot point (the bottom centre of its box, where the person
stands) lies inside or on the zone's polygon. A rule fires when a track whose latest answer to
the rule's question is the rule's answer has stayed in the rule's zone for ``dwell_s`` seconds
of frame time; it fires once per (rule, track). Leaving the zone, or the answer changing,
resets the dwell. Per-track state is evicted when the track ends, so memory stays bounded on
endless streams.

    zones = ZoneMap(cfg.zones)
    engine = RuleEngine.from_config(cfg)
    for result in results:
        board.update(result)
        result = engine.update(result, board.latest)  # result.alerts: the rules it raised

The event store records the alerts and exports ``alerts.jsonl`` (:mod:`vidqa.store`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from vidqa.config import PipelineConfig, RuleConfig, ZoneConfig
from vidqa.messages import Answer, FrameResult, LatestAnswers

BBox = tuple[float, float, float, float]  # x1, y1, x2, y2 in frame pixels
ZONE_COLOURS = ((255, 180, 0), (0, 200, 255), (200, 0, 200), (0, 220, 120), (120, 120, 255))
ZONE_ALPHA = 0.25  # opacity of the zone fill on the overlay
DWELL_TOLERANCE_S = 1e-6  # frame times are index / fps: 1.9 - 0.9 must count as 1.0 s


def foot_point(bbox: BBox) -> tuple[float, float]:
    """The bottom centre of a box: where a standing person touches the ground."""
    x1, _, x2, y2 = bbox
    return (x1 + x2) / 2.0, y2


class ZoneMap:
    """Named polygons in frame pixels; which ones a box stands in."""

    def __init__(self, zones: Sequence[ZoneConfig]) -> None:
        self.names = tuple(zone.name for zone in zones)
        self._polygons = {zone.name: np.asarray(zone.polygon, np.float32).reshape(-1, 1, 2)
                          for zone in zones}  # (N, 1, 2): the contour layout OpenCV expects

    def __len__(self) -> int:
        return len(self.names)

    def zones_of(self, bbox: BBox) -> tuple[str, ...]:
        """The zones the box's foot point is inside of (or on the edge of), in config order."""
        point = tuple(float(v) for v in foot_point(bbox))
        return tuple(name for name, polygon in self._polygons.items()
                     if cv2.pointPolygonTest(polygon, point, False) >= 0)

    def allows(self, bbox: BBox, zones: Sequence[str]) -> bool:
        """True when the box stands in one of ``zones``; an empty ``zones`` allows everywhere."""
        return not zones or any(name in zones for name in self.zones_of(bbox))

    def draw(self, image: np.ndarray) -> np.ndarray:
        """Draw every zone semi-transparent with its name onto ``image`` (the overlay) and
        return it."""
        if not self._polygons:
            return image
        fill = image.copy()
        for i, polygon in enumerate(self._polygons.values()):
            cv2.fillPoly(fill, [polygon.astype(np.int32)], ZONE_COLOURS[i % len(ZONE_COLOURS)])
        cv2.addWeighted(fill, ZONE_ALPHA, image, 1 - ZONE_ALPHA, 0, dst=image)
        for i, (name, polygon) in enumerate(self._polygons.items()):
            colour = ZONE_COLOURS[i % len(ZONE_COLOURS)]
            corners = polygon.astype(np.int32)
            cv2.polylines(image, [corners], True, colour, 2)
            x, y = corners[:, 0, 0].min(), corners[:, 0, 1].min()
            _outlined_text(image, name, (int(x), max(12, int(y) - 5)), colour)
        return image


def _outlined_text(image: np.ndarray, text: str, origin: tuple[int, int],
                   colour: tuple[int, int, int]) -> None:
    """Text in ``colour`` with a dark outline, readable on grass and asphalt alike."""
    for thickness, ink in ((3, (0, 0, 0)), (1, colour)):
        cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, 0.5, ink, thickness,
                    cv2.LINE_AA)


@dataclass(frozen=True)
class Alert:
    """A rule fired for a track: one line of ``alerts.jsonl``."""

    rule: str
    track_id: int
    zone: str
    question: str
    answer: str
    frame_index: int
    time_s: float
    dwell_s: float  # seconds the answer had held inside the zone when the rule fired
    bbox: tuple[int, int, int, int]
    stream_id: str = "0"

    def to_event(self) -> dict[str, Any]:
        """The JSON-ready event; ``frame`` and ``time_s`` line up with ``events.jsonl``."""
        return {
            "event": "alert", "rule": self.rule, "stream_id": self.stream_id,
            "frame": self.frame_index, "time_s": round(self.time_s, 4),
            "track_id": self.track_id, "zone": self.zone, "question": self.question,
            "answer": self.answer, "dwell_s": round(self.dwell_s, 4), "bbox": list(self.bbox),
        }


@dataclass
class _TrackState:
    since: dict[str, float] = field(default_factory=dict)  # rule -> when its condition began
    alerted: list[str] = field(default_factory=list)  # rules that fired, in firing order


class RuleEngine:
    """Turns tracked frames and the latest answers into :class:`Alert`s.

    ``questions`` maps a question's name to its text, so a rule may name its question either
    way; answers are looked up by text (``Answer.question``).
    """

    def __init__(self, rules: Sequence[RuleConfig], zone_map: ZoneMap,
                 questions: Mapping[str, str] | None = None, stream_id: str = "0") -> None:
        self.rules = tuple(rules)
        self.zone_map = zone_map
        self.stream_id = stream_id
        names = questions or {}
        self._texts = {rule.name: names.get(rule.question, rule.question) for rule in rules}
        self._tracks: dict[int, _TrackState] = {}

    @classmethod
    def from_config(cls, cfg: PipelineConfig, stream_id: str = "0") -> RuleEngine:
        """The engine for ``cfg.rules`` over ``cfg.zones``, naming questions as ``cfg.vlm``."""
        questions = {q.name: q.question for q in cfg.vlm.questions if q.name}
        return cls(cfg.rules, ZoneMap(cfg.zones), questions, stream_id)

    @property
    def tracks(self) -> int:
        """Tracks with state held (for tests and the summary)."""
        return len(self._tracks)

    def update(self, result: FrameResult, latest: Mapping[int, Mapping[str, Answer]]
               ) -> list[Alert]:
        """Advance the dwell of every track in ``result``; the alerts that fire at this frame.

        ``latest`` is the newest answer per track and question text (``LatestAnswers.latest``),
        already updated with ``result``'s answers.
        """
        alerts: list[Alert] = []
        if self.rules:
            detections = result.detections
            for row, track_id in enumerate(detections.track_id.tolist()):
                bbox = tuple(float(v) for v in detections.xyxy[row])
                answers = latest.get(track_id, {})
                alerts += self._update_track(result, track_id, bbox, answers)
        for track_id in result.ended_tracks:
            self._tracks.pop(track_id, None)
        return alerts

    def _update_track(self, result: FrameResult, track_id: int, bbox: BBox,
                      answers: Mapping[str, Answer]) -> list[Alert]:
        state = self._tracks.setdefault(track_id, _TrackState())
        zones = self.zone_map.zones_of(bbox)
        now = result.frame.timestamp
        alerts = []
        for rule in self.rules:
            answer = answers.get(self._texts[rule.name]) or answers.get(rule.question)
            if rule.zone not in zones or answer is None or answer.answer != rule.answer:
                state.since.pop(rule.name, None)  # left the zone or changed its answer
                continue
            dwell = now - state.since.setdefault(rule.name, now)
            if dwell >= rule.dwell_s - DWELL_TOLERANCE_S and rule.name not in state.alerted:
                state.alerted.append(rule.name)
                alerts.append(self._alert(rule, result, track_id, bbox, answer, dwell))
        return alerts

    def _alert(self, rule: RuleConfig, result: FrameResult, track_id: int, bbox: BBox,
               answer: Answer, dwell: float) -> Alert:
        return Alert(rule=rule.name, track_id=track_id, zone=rule.zone, question=answer.question,
                     answer=answer.answer, frame_index=result.frame.frame_index,
                     time_s=result.frame.timestamp, dwell_s=dwell,
                     bbox=tuple(round(v) for v in bbox), stream_id=self.stream_id)


class RuleStage:
    """The rules as a pipeline stage: each frame leaves with the alerts it raised."""

    def __init__(self, engine: RuleEngine) -> None:
        self.engine = engine
        self.answers = LatestAnswers()  # the latest answer of each live track, for the rules

    def update(self, result: FrameResult) -> FrameResult:
        self.answers.update(result)
        alerts = self.engine.update(result, self.answers.latest)
        return dataclasses.replace(result, alerts=result.alerts + tuple(alerts))

    def __call__(self, results: Iterable[FrameResult]) -> Iterator[FrameResult]:
        for result in results:
            yield self.update(result)
