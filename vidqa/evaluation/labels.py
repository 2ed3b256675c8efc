"""Hand labels for scoring answers: who is in the video and the true answer per question.

Two forms, in YAML or JSON. The main one labels people by their boxes, independent of any run::

    video: vtest.avi
    match_iou: 0.5                  # an answer's box must overlap a person's this much
    questions: {red_jacket: Is this person wearing a red jacket?}
    people:
      - id: p01
        note: free text
        labels: {red_jacket: "yes"}  # yes | no | unknown; a question left out is unknown
        boxes: [[12, 301, 120, 340, 230]]  # [frame (0-based), x1, y1, x2, y2] per frame seen

The short form labels the track ids of one run: ``{"questions": {...}, "tracks": {"17":
{"red_jacket": "yes"}}}``; a key ``"cam2:17"`` names track 17 of stream ``cam2`` (a bare id
means stream ``"0"``, the single-stream default).

YAML reads unquoted ``yes``/``no`` as booleans: true and false are taken as "yes" and "no".
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vidqa.errors import ConfigError

ANSWERS = ("yes", "no", "unknown")
TOP_KEYS = ("video", "match_iou", "questions", "people", "tracks")
PERSON_KEYS = ("id", "note", "labels", "boxes")
DEFAULT_STREAM = "0"

Box = tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels


@dataclass(frozen=True)
class Person:
    """One labelled person: the true answers and where they are, frame by frame."""

    id: str
    labels: dict[str, str]  # question key -> "yes" | "no" | "unknown", every key present
    boxes: dict[int, Box]  # 0-based frame -> box
    note: str = ""


@dataclass(frozen=True)
class Labels:
    """A validated labels file: questions, and either people (by box) or tracks (by id)."""

    questions: dict[str, str]  # key -> question text
    people: tuple[Person, ...] = ()
    tracks: dict[tuple[str, int], dict[str, str]] = field(default_factory=dict)  # (stream, id)
    match_iou: float = 0.5
    video: str | None = None
    source: str = "labels"

    def key_for(self, question: str) -> str | None:
        """The question key whose text matches ``question`` (ignoring case and spacing)."""
        wanted = normalise_question(question)
        return next((key for key, text in self.questions.items()
                     if normalise_question(text) == wanted), None)

    def person(self, person_id: str) -> Person:
        return next(person for person in self.people if person.id == person_id)


def normalise_question(text: str) -> str:
    return " ".join(text.split()).casefold()


def load_labels(path: Path) -> Labels:
    """Read and validate a labels file (``.json`` as JSON, anything else as YAML)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"labels file {path} not found: expected a YAML or JSON file with "
                          f"questions and people (or tracks); check the path")
    text = path.read_text(encoding="utf-8")
    is_json = path.suffix.lower() == ".json"
    try:
        data = json.loads(text) if is_json else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        hint = "" if is_json else (" (inside {...} a question ending in '?' must be quoted, "
                                   "or write one 'key: question' per line)")
        raise ConfigError(f"{path} is not valid {'JSON' if is_json else 'YAML'}{hint}: "
                          f"{' '.join(str(err).split())}") from None
    return parse_labels(data, source=str(path))


def parse_labels(data: Any, source: str = "labels") -> Labels:
    """Validate already-parsed labels; errors name ``source`` and the offending key."""
    top = _mapping(data, source, "the top level")
    _no_unknown_keys(top, TOP_KEYS, source, "the top level")
    if ("people" in top) == ("tracks" in top):
        raise ConfigError(f"{source}: expected exactly one of 'people' (boxes per person) or "
                          f"'tracks' (labels per track id of one run), got "
                          f"{'both' if 'people' in top else 'neither'}")
    questions = _questions(top.get("questions"), source)
    match_iou = _match_iou(top.get("match_iou", 0.5), source)
    video = top.get("video")
    if video is not None and not isinstance(video, str):
        raise ConfigError(f"{source}: video must be a file name, got {video!r}")
    if "people" in top:
        return Labels(questions, people=_people(top["people"], questions, source),
                      match_iou=match_iou, video=video, source=source)
    return Labels(questions, tracks=_tracks(top["tracks"], questions, source),
                  match_iou=match_iou, video=video, source=source)


def _mapping(value: Any, source: str, where: str) -> dict:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{source}: {where} must be a mapping (key: value), got "
                          f"{type(value).__name__} {value!r:.60}")
    return dict(value)


def _no_unknown_keys(value: dict, valid: tuple[str, ...], source: str, where: str) -> None:
    unknown = [key for key in value if key not in valid]
    if unknown:
        raise ConfigError(f"{source}: unknown key {unknown[0]!r} in {where}; valid keys: "
                          f"{', '.join(valid)}")


def _key(key: Any, source: str, where: str) -> str:
    if isinstance(key, bool) or not isinstance(key, str) or not key.strip():
        hint = " (YAML reads an unquoted yes/no/on/off as a boolean: quote it)" \
            if isinstance(key, bool) else ""
        raise ConfigError(f"{source}: {where} has the key {key!r}; expected a non-empty "
                          f"string{hint}")
    return key


def _questions(value: Any, source: str) -> dict[str, str]:
    if value is None:
        raise ConfigError(f"{source}: 'questions' is missing: add e.g. questions: "
                          f"{{red_jacket: Is this person wearing a red jacket?}}")
    questions = {}
    seen: dict[str, str] = {}
    for key, text in _mapping(value, source, "questions").items():
        key = _key(key, source, "questions")
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(f"{source}: questions.{key} must be the question text as the "
                              f"run asked it, got {text!r}")
        if normalise_question(text) in seen:
            raise ConfigError(f"{source}: questions.{key} and questions."
                              f"{seen[normalise_question(text)]} have the same text; answers "
                              f"are matched to questions by text, so each must be distinct")
        seen[normalise_question(text)] = key
        questions[key] = text.strip()
    if not questions:
        raise ConfigError(f"{source}: 'questions' is empty: add at least one key: question")
    return questions


def _match_iou(value: Any, source: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ConfigError(f"{source}: match_iou = {value!r}: expected a number in (0, 1], "
                          f"e.g. 0.5")
    return float(value)


def _answers(value: Any, questions: dict[str, str], source: str, where: str) -> dict[str, str]:
    """Every question key -> yes/no/unknown; booleans from YAML become yes/no."""
    labels = dict.fromkeys(questions, "unknown")
    for key, answer in _mapping(value, source, where).items():
        key = _key(key, source, where)
        if key not in questions:
            raise ConfigError(f"{source}: {where}.{key} is not a question; questions are: "
                              f"{', '.join(questions)}")
        if isinstance(answer, bool):
            answer = "yes" if answer else "no"
        if not isinstance(answer, str) or answer.strip().lower() not in ANSWERS:
            raise ConfigError(f"{source}: {where}.{key} = {answer!r}: expected yes, no or "
                              f"unknown")
        labels[key] = answer.strip().lower()
    return labels


def _people(value: Any, questions: dict[str, str], source: str) -> tuple[Person, ...]:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{source}: people must be a non-empty list of "
                          f"{{id, labels, boxes}}, got {value!r:.60}")
    people = tuple(_person(item, i, questions, source) for i, item in enumerate(value))
    ids = [person.id for person in people]
    duplicate = next((pid for pid in ids if ids.count(pid) > 1), None)
    if duplicate is not None:
        raise ConfigError(f"{source}: person id {duplicate!r} is used twice; ids must be unique")
    return people


def _person(value: Any, index: int, questions: dict[str, str], source: str) -> Person:
    item = _mapping(value, source, f"people[{index}]")
    pid = item.get("id")
    if isinstance(pid, bool) or not isinstance(pid, (str, int)) or not str(pid).strip():
        raise ConfigError(f"{source}: people[{index}] needs an id (e.g. id: p01), got {pid!r}")
    where = f"person {pid} (people[{index}])"
    _no_unknown_keys(item, PERSON_KEYS, source, where)
    note = item.get("note") or ""
    if not isinstance(note, str):
        raise ConfigError(f"{source}: {where}: note must be text, got {note!r}")
    labels = _answers(item.get("labels", {}), questions, source, f"{where} labels")
    return Person(str(pid), labels, _boxes(item.get("boxes"), source, where), note)


def _boxes(value: Any, source: str, where: str) -> dict[int, Box]:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{source}: {where} needs boxes: a non-empty list of "
                          f"[frame, x1, y1, x2, y2], got {value!r:.60}")
    boxes: dict[int, Box] = {}
    for i, row in enumerate(value):
        frame, box = _box(row, source, f"{where} boxes[{i}]")
        if frame in boxes:
            raise ConfigError(f"{source}: {where} has two boxes at frame {frame}; keep one")
        boxes[frame] = box
    return boxes


def _box(row: Any, source: str, where: str) -> tuple[int, Box]:
    numbers = isinstance(row, list) and len(row) == 5 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        for v in row)
    if not numbers:
        raise ConfigError(f"{source}: {where} = {row!r:.60}: expected [frame, x1, y1, x2, y2] "
                          f"(five numbers)")
    frame, x1, y1, x2, y2 = row
    if not isinstance(frame, int) or frame < 0:
        raise ConfigError(f"{source}: {where}: frame {frame!r} must be an integer >= 0 (frames "
                          f"are 0-based, as in events.jsonl)")
    if x2 <= x1 or y2 <= y1:
        raise ConfigError(f"{source}: {where} = {row}: expected x2 > x1 and y2 > y1 (corners "
                          f"x1, y1, x2, y2, not a width and height)")
    return frame, (float(x1), float(y1), float(x2), float(y2))


def _tracks(value: Any, questions: dict[str, str], source: str) -> dict[tuple[str, int], dict]:
    tracks = {}
    for key, labels in _mapping(value, source, "tracks").items():
        track = _track_key(key, source)
        if track in tracks:
            raise ConfigError(f"{source}: tracks has track {key!r} twice")
        tracks[track] = _answers(labels, questions, source, f"tracks.{key}")
    if not tracks:
        raise ConfigError(f"{source}: tracks is empty: add e.g. tracks: {{'17': {{"
                          f"{next(iter(questions))}: 'yes'}}}}")
    return tracks


def _track_key(key: Any, source: str) -> tuple[str, int]:
    """``17`` or ``"17"`` -> (stream "0", 17); ``"cam2:17"`` -> ("cam2", 17)."""
    text = str(key) if isinstance(key, int) and not isinstance(key, bool) else key
    stream, _, track = text.rpartition(":") if isinstance(text, str) else ("", "", "")
    if not track.strip().isdigit():
        raise ConfigError(f"{source}: tracks key {key!r}: expected a track id such as '17', or "
                          f"'stream:17' for one stream of a multi-stream run")
    return (stream.strip() or DEFAULT_STREAM, int(track))
