"""A small event store with a known history: two cameras, two questions, answers from two days
ago and from minutes ago, boxes inside and outside a zone, alerts of a rule with snapshots."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np

from vidqa.config import load_config
from vidqa.messages import Answer
from vidqa.store import EventStore, StreamRecord
from vidqa.store.records import AlertRecord, AnswerRecord, TrackSeen
from vidqa.zones import Alert

BACKPACK, HAT = "Is this person carrying a backpack?", "Is this person wearing a hard hat?"
DOOR = "[[0, 0], [100, 0], [100, 400], [0, 400]]"  # x < 100: the left of the frame
TRACKS = 12
OLD_S = 2 * 86400.0  # the older half of the answers was given two days ago


def inside(track_id: int) -> bool:
    """Odd tracks stand in the door zone."""
    return track_id % 2 == 1


def box(track_id: int) -> tuple[int, int, int, int]:
    x = 20 if inside(track_id) else 200
    return (x, 100, x + 40, 300)


def answer_of(track_id: int, question: str) -> str:
    """Backpack: yes for tracks 1-4 and 7-8; hard hat: yes for even tracks."""
    if question == BACKPACK:
        return "yes" if track_id in (1, 2, 3, 4, 7, 8) else "no"
    return "yes" if track_id % 2 == 0 else "no"


def jpeg(colour: int) -> bytes:
    image = np.full((80, 40, 3), colour, np.uint8)
    return cv2.imencode(".jpg", image)[1].tobytes()


def build_history(folder: Path) -> tuple[Path, float]:
    """The store (its path) and the epoch time the recent half was answered around."""
    cfg = load_config(None, [f"zones=[{{name: door, polygon: {DOOR}}}]",
                             f"vlm.questions=[{{question: '{BACKPACK}'}}, {{question: '{HAT}'}}]",
                             f"rules=[{{name: no_hat, question: '{HAT}', answer: 'no', "
                             f"zone: door}}]"])
    store = EventStore(cfg, folder).open()
    now = time.time()
    records: list = [StreamRecord(s, f"rtsp://{s}", folder / s, False, True, True)
                     for s in ("cam1", "cam2")]
    for track_id in range(1, TRACKS + 1):
        stream = "cam1" if track_id <= TRACKS // 2 else "cam2"
        at = now - (OLD_S if track_id in (1, 2, 3, 7, 8, 9) else 600) + track_id
        bbox = box(track_id)
        records.append(TrackSeen(stream, track_id, track_id, track_id / 10, at, track_id + 5,
                                 track_id / 10 + 0.5, at + 0.5, bbox, track_id + 1, True))
        for question in (BACKPACK, HAT):
            answer = Answer(frame_index=track_id, time_s=track_id / 10, track_id=track_id,
                            question=question, answer=answer_of(track_id, question),
                            p_yes=0.9 if answer_of(track_id, question) == "yes" else 0.1,
                            margin=1.0, bbox=bbox, vlm_ms=5.0, model="tiny", stream_id=stream)
            records.append(AnswerRecord(answer, at, jpeg(40 * (track_id % 6))))
        if inside(track_id) and answer_of(track_id, HAT) == "no":
            alert = Alert("no_hat", track_id, "door", HAT, "no", track_id + 2,
                          track_id / 10 + 0.2, 0.0, bbox, stream)
            records.append(AlertRecord(alert, at + 1, jpeg(200)))
    store.put_many(records)
    store.close("completed")
    return store.path, now
