import json
from pathlib import Path

import pytest

from vidqa.errors import ConfigError
from vidqa.evaluation.labels import load_labels

PEOPLE_YAML = """\
video: vtest.avi
match_iou: 0.4
questions:
  red_jacket: Is this person wearing a red jacket?
  jeans: Is this person wearing jeans?
people:
  - id: p01
    note: walks left
    labels: {red_jacket: "yes", jeans: "no"}
    boxes: [[12, 301, 120, 340, 230], [13, 302, 121, 341, 231]]
  - id: p02
    labels: {red_jacket: no, jeans: Unknown}   # unquoted no: a YAML boolean
    boxes: [[12, 10, 10, 50, 90]]
  - id: p03
    labels: {jeans: yes}
    boxes: [[0, 0, 0, 5, 5]]
"""


def write(tmp_path: Path, text: str, name: str = "labels.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_load_labels_when_people_form_then_boxes_and_answers_are_normalised(tmp_path: Path):
    labels = load_labels(write(tmp_path, PEOPLE_YAML))

    assert labels.video == "vtest.avi" and labels.match_iou == 0.4
    assert [p.id for p in labels.people] == ["p01", "p02", "p03"]
    assert labels.people[0].boxes[13] == (302.0, 121.0, 341.0, 231.0)
    assert labels.people[0].note == "walks left"
    assert labels.people[1].labels == {"red_jacket": "no", "jeans": "unknown"}
    assert labels.people[2].labels == {"red_jacket": "unknown", "jeans": "yes"}


def test_load_labels_when_track_form_in_json_then_keyed_by_stream_and_track(tmp_path: Path):
    data = {"questions": {"red_jacket": "Is this person wearing a red jacket?"},
            "tracks": {"17": {"red_jacket": "yes"}, "cam2:4": {"red_jacket": "no"}}}

    labels = load_labels(write(tmp_path, json.dumps(data), "labels.json"))

    assert labels.people == ()
    assert labels.tracks == {("0", 17): {"red_jacket": "yes"}, ("cam2", 4): {"red_jacket": "no"}}


@pytest.mark.parametrize("question, key", [
    ("Is this person wearing a red jacket?", "red_jacket"),
    ("  is this person   WEARING a red jacket? ", "red_jacket"),
    ("Is this person running?", None),
])
def test_labels_key_for_when_question_text_then_matched_ignoring_case_and_spacing(
        tmp_path: Path, question, key):
    assert load_labels(write(tmp_path, PEOPLE_YAML)).key_for(question) == key


Q = "questions: {red: 'Is it red?'}\n"
P = "people:\n  - id: p01\n    labels: {red: 'yes'}\n    boxes: [[0, 0, 0, 5, 5]]\n"


@pytest.mark.parametrize("text, message", [
    ("[1, 2]", "the top level must be a mapping"),
    (Q + P + "vidoe: x.avi\n", "unknown key 'vidoe' in the top level; valid keys: video"),
    (Q, "expected exactly one of 'people'"),
    (Q + P + "tracks: {'1': {red: 'yes'}}\n", "got both"),
    (P, "'questions' is missing"),
    ("questions: {}\n" + P, "'questions' is empty"),
    ("questions: {red: Is it red, crimson: is it  RED}\n" + P, "have the same text"),
    ("questions: {yes: Is it red}\n" + P, "quote it"),
    ("questions: {red: ''}\n" + P, "questions.red must be the question text"),
    (Q + P + "match_iou: 1.5\n", r"match_iou = 1.5: expected a number in \(0, 1\]"),
    (Q + "people: []\n", "people must be a non-empty list"),
    (Q + "people:\n  - labels: {red: 'yes'}\n    boxes: [[0, 0, 0, 5, 5]]\n",
     r"people\[0\] needs an id"),
    (Q + P + P[len("people:\n"):], "person id 'p01' is used twice"),
    (Q + "people:\n  - id: p02\n    labels: {red: maybe}\n    boxes: [[0, 0, 0, 5, 5]]\n",
     r"person p02 \(people\[0\]\) labels.red = 'maybe': expected yes, no or unknown"),
    (Q + "people:\n  - id: p02\n    labels: {blue: 'yes'}\n    boxes: [[0, 0, 0, 5, 5]]\n",
     "labels.blue is not a question; questions are: red"),
    (Q + "people:\n  - id: p02\n    labels: {red: }\n    boxes: [[0, 0, 0, 5, 5]]\n",
     "labels.red = None"),
    (Q + "people:\n  - id: p02\n    boxes: [[0, 0, 0, 5, 5]]\n    colour: red\n",
     "unknown key 'colour' in person p02"),
    (Q + "people:\n  - id: p02\n    labels: {red: 'yes'}\n", "person p02 .* needs boxes"),
    (Q + "people:\n  - id: p02\n    boxes: [[0, 0, 0, 5]]\n", r"boxes\[0\] = \[0, 0, 0, 5\]"),
    (Q + "people:\n  - id: p02\n    boxes: [[-1, 0, 0, 5, 5]]\n", "integer >= 0"),
    (Q + "people:\n  - id: p02\n    boxes: [[1.5, 0, 0, 5, 5]]\n", "frame 1.5 must be"),
    (Q + "people:\n  - id: p02\n    boxes: [[3, 0, 0, 40, 0]]\n", "expected x2 > x1 and y2 > y1"),
    (Q + "people:\n  - id: p02\n    boxes: [[3, 0, 0, 5, 5], [3, 1, 1, 5, 5]]\n",
     "two boxes at frame 3"),
    (Q + "tracks: {abc: {red: 'yes'}}\n", "tracks key 'abc': expected a track id"),
    (Q + "tracks: {}\n", "tracks is empty"),
    (Q + "tracks: {'5': {red: 'perhaps'}}\n", "tracks.5.red = 'perhaps'"),
    ("questions: {red: Is it red?}\n" + P, "a question ending in '.' must be quoted"),
])
def test_load_labels_when_invalid_then_config_error_names_the_key(tmp_path: Path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_labels(write(tmp_path, text))


def test_load_labels_when_json_is_malformed_or_missing_then_config_error(tmp_path: Path):
    with pytest.raises(ConfigError, match="is not valid JSON"):
        load_labels(write(tmp_path, "{'questions': 1}", "labels.json"))
    with pytest.raises(ConfigError, match="not found"):
        load_labels(tmp_path / "missing.yaml")
