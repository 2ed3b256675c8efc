"""The hand-labelled answer set for vtest.avi (samples/labels/vtest.yaml) keeps its shape."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
import yaml

LABELS = Path(__file__).resolve().parents[2] / "samples" / "labels" / "vtest.yaml"
WIDTH, HEIGHT, FRAMES = 768, 576, 795  # vtest.avi
VALUES = {"yes", "no", "unknown"}
MIN_PEOPLE = 40  # person tracks; the clip has only about a dozen people, seen again and again
MIN_GROUPS = 10  # distinct "[X]" look-alike tags, i.e. different-looking people
MIN_EACH_ANSWER = 3  # every attribute has at least this many "yes" and this many "no"
TAG = re.compile(r"^\[([A-Z][A-Z0-9]*)\] ")


@pytest.fixture(scope="module")
def labels() -> dict:
    return yaml.safe_load(LABELS.read_text())


def test_labels_when_loaded_then_header_fields_hold(labels):
    assert labels["video"] == "vtest.avi"
    assert 0 < labels["match_iou"] <= 1
    assert len(labels["questions"]) >= 4
    assert all(isinstance(q, str) and q.endswith("?") for q in labels["questions"].values())


def test_labels_when_loaded_then_enough_people_with_unique_ids(labels):
    ids = [person["id"] for person in labels["people"]]
    groups = {TAG.match(person["note"]).group(1) for person in labels["people"]}
    assert len(ids) >= MIN_PEOPLE
    assert len(set(ids)) == len(ids), [i for i, n in Counter(ids).items() if n > 1]
    assert len(groups) >= MIN_GROUPS


def test_labels_when_loaded_then_every_person_answers_every_question_in_words(labels):
    # A bare yes/no in YAML 1.1 loads as a bool: the values must stay strings.
    for person in labels["people"]:
        assert set(person["labels"]) == set(labels["questions"]), person["id"]
        assert set(person["labels"].values()) <= VALUES, (person["id"], person["labels"])
        assert TAG.match(person["note"]), f"{person['id']}: note must start with a [X] tag"


@pytest.mark.parametrize("answer", ["yes", "no"])
def test_labels_when_counted_then_each_attribute_has_both_answers(labels, answer):
    for attribute in labels["questions"]:
        count = sum(p["labels"][attribute] == answer for p in labels["people"])
        assert count >= MIN_EACH_ANSWER, f"{attribute}: {count} x {answer!r}"


def test_labels_when_boxes_read_then_well_formed_inside_the_frame(labels):
    for person in labels["people"]:
        frames = [box[0] for box in person["boxes"]]
        assert frames, person["id"]
        assert len(set(frames)) == len(frames), f"{person['id']}: two boxes in one frame"
        for box in person["boxes"]:
            assert len(box) == 5 and all(isinstance(v, int) for v in box), (person["id"], box)
            frame, x1, y1, x2, y2 = box
            assert 0 <= frame < FRAMES, (person["id"], box)
            assert 0 <= x1 < x2 <= WIDTH and 0 <= y1 < y2 <= HEIGHT, (person["id"], box)
