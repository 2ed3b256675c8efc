"""Score a run's yes/no answers (``events.jsonl``) against hand labels.

Matching an answer to a labelled person (labels with ``people``):

1. **frame** — the person whose box at the answer's frame overlaps the answer's ``bbox`` most,
   if that IoU is at least the labels' ``match_iou``;
2. **track** — otherwise, when the run folder has ``mot.txt`` and the run has one stream, the
   person the answer's *track* is matched to: the person whose boxes the track overlaps
   (IoU >= ``match_iou``) on the most frames. This reaches answers given on frames where the
   person has no labelled box;
3. otherwise the answer is unmatched.

With the short ``tracks`` form the answer's (stream, track id) is looked up directly. Answers are
mapped to questions by text (ignoring case and spacing); free-text answers (``p_yes`` null) are
skipped. A matched answer whose label is ``unknown`` is counted but not scored.

Metrics come from scikit-learn (``balanced_accuracy_score`` — the attribute-recognition mA —
``precision_recall_fscore_support``, ``roc_auc_score``, ``confusion_matrix``): the standard,
tested definitions, including their edge cases, rather than hand-written ones. Balanced accuracy
and AUROC are None unless both true classes are present; precision/recall are None when
undefined (no predicted / no true "yes").
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sklearn
from loguru import logger
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

from vidqa.errors import ConfigError, SourceError
from vidqa.evaluation.labels import DEFAULT_STREAM, Box, Labels, Person
from vidqa.evaluation.mot import read_mot

LIBRARY = f"scikit-learn {sklearn.__version__}"
_REQUIRED = ("frame", "track_id", "question", "answer", "bbox")


@dataclass(frozen=True)
class Event:
    """One yes/no answer of ``events.jsonl``, mapped to a question key."""

    line: int
    stream: str
    track: int
    frame: int
    key: str
    answer: bool  # True for "yes"
    p_yes: float
    bbox: Box
    compressed: bool
    phase: str
    audit_agree: bool | None = None
    compressed_answer: bool | None = None  # audits: what the compressed model said
    compressed_p_yes: float | None = None


@dataclass(frozen=True)
class Scored:
    """An event and what it was matched to: ``label`` None when unmatched."""

    event: Event
    label: str | None  # "yes" | "no" | "unknown"
    method: str  # "frame", "track", "track_id" or "none"


def score_answers(labels: Labels, run_dir: Path, stream: str | None = None) -> dict[str, Any]:
    """Per-question accuracy of the run's yes/no answers against ``labels`` (see the module doc).

    ``stream`` keeps only that stream's answers; labels with ``people`` need it for a
    multi-stream run (their boxes belong to one video). The result has, per question key:
    answers / matched (unknown included) / unknown / unmatched counts and ``matched_by``
    method; ``all`` (every answer), ``per_track`` (each track's last answer), ``by_model``
    (``full`` and ``compressed``) metrics — n, accuracy, balanced_accuracy, precision, recall,
    auroc, tp/fp/tn/fn — and ``agreement`` of compressed with full answers. Raises
    :class:`SourceError` for an unreadable run folder, :class:`ConfigError` for a stream
    choice that is needed or wrong.
    """
    run_dir = Path(run_dir)
    events, counts = read_events(run_dir / "events.jsonl", labels)
    streams = sorted({event.stream for event in events})
    if labels.people or stream is not None:
        chosen = _pick_stream(streams, stream, labels)
        events = [event for event in events if event.stream == chosen]
    track_people = _track_people(run_dir, labels, streams) if labels.people else {}
    scored = [_match(event, labels, track_people) for event in events]
    return {"run_dir": str(run_dir), "labels": labels.source,
            "form": "people" if labels.people else "tracks", "match_iou": labels.match_iou,
            "streams": streams, "mot_txt_used": bool(track_people), "events": counts,
            "questions": {key: _question_report(text, [s for s in scored if s.event.key == key])
                          for key, text in labels.questions.items()},
            "library": LIBRARY}


def read_events(path: Path, labels: Labels) -> tuple[list[Event], dict[str, Any]]:
    """The yes/no answers to labelled questions, and counts of everything else."""
    if not path.is_file():
        raise SourceError(f"{path} not found: expected the events.jsonl of a vidqa run; pass "
                          f"the run folder (runs/<name>) that holds it")
    events, counts = [], Counter()
    other: Counter[str] = Counter()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        record = _record(path, number, line)
        counts["lines"] += 1
        if "question" not in record:
            counts["not_answers"] += 1
        elif record.get("p_yes") is None:
            counts["text_skipped"] += 1
        elif (key := labels.key_for(str(record["question"]))) is None:
            other[str(record["question"])] += 1
        else:
            events.append(_event(path, number, record, key))
    summary = {"lines": counts["lines"], "yesno_answers": len(events),
               "text_skipped": counts["text_skipped"], "not_answers": counts["not_answers"],
               "unlabelled_questions": dict(other)}
    return events, summary


def _record(path: Path, number: int, line: str) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise SourceError(f"{path} line {number} is not JSON ({err}): events.jsonl has one "
                          f"JSON object per line; was the run cut off while writing?") from None
    if not isinstance(record, dict):
        raise SourceError(f"{path} line {number}: expected a JSON object, got {line:.60}")
    return record


def _event(path: Path, number: int, record: dict[str, Any], key: str) -> Event:
    missing = [name for name in _REQUIRED if name not in record]
    answer = str(record.get("answer", "")).strip().lower()
    if missing or answer not in ("yes", "no"):
        raise SourceError(f"{path} line {number}: a yes/no answer needs {', '.join(_REQUIRED)} "
                          f"and answer 'yes' or 'no'; missing {missing}, answer "
                          f"{record.get('answer')!r}")
    try:
        return _parse_event(number, record, key, answer == "yes")
    except (TypeError, ValueError) as err:
        raise SourceError(f"{path} line {number}: {err}; expected integer frame and track_id, "
                          f"a number p_yes and bbox [x1, y1, x2, y2]") from None


def _parse_event(number: int, record: dict[str, Any], key: str, answer: bool) -> Event:
    bbox = tuple(float(v) for v in record["bbox"])
    if len(bbox) != 4:
        raise ValueError(f"bbox has {len(bbox)} numbers")
    compressed_answer, compressed_p_yes = (record.get("compressed_answer"),
                                           record.get("compressed_p_yes"))
    return Event(line=number, stream=str(record.get("stream_id", DEFAULT_STREAM)),
                 track=int(record["track_id"]), frame=int(record["frame"]), key=key,
                 answer=answer, p_yes=float(record["p_yes"]), bbox=bbox,
                 compressed=bool(record.get("compressed", False)),
                 phase=str(record.get("phase", "")), audit_agree=record.get("audit_agree"),
                 compressed_answer=None if compressed_answer is None
                 else str(compressed_answer).lower() == "yes",
                 compressed_p_yes=None if compressed_p_yes is None else float(compressed_p_yes))


def _pick_stream(streams: list[str], wanted: str | None, labels: Labels) -> str | None:
    if wanted is not None and streams and wanted not in streams:
        raise ConfigError(f"stream {wanted!r} is not in the run: its streams are "
                          f"{', '.join(streams)}")
    if wanted is None and len(streams) > 1:
        raise ConfigError(f"the run has {len(streams)} streams ({', '.join(streams)}) but "
                          f"{labels.source} labels one video ({labels.video or 'unnamed'}): "
                          f"choose the stream it shows")
    return wanted if wanted is not None else (streams[0] if streams else None)


# ---- matching ---------------------------------------------------------------------------------

def box_iou(box: Sequence[float], other: Sequence[float]) -> float:
    """Intersection over union of two x1, y1, x2, y2 boxes (0 when both are empty)."""
    width = max(0.0, min(box[2], other[2]) - max(box[0], other[0]))
    height = max(0.0, min(box[3], other[3]) - max(box[1], other[1]))
    inter = width * height
    union = ((box[2] - box[0]) * (box[3] - box[1]) + (other[2] - other[0]) * (other[3] - other[1])
             - inter)
    return inter / union if union > 0 else 0.0


def best_person(people: Iterable[Person], frame: int, box: Box, min_iou: float) -> str | None:
    """The id of the person whose box at ``frame`` overlaps ``box`` most, if >= ``min_iou``."""
    scores = [(box_iou(box, person.boxes[frame]), person.id) for person in people
              if frame in person.boxes]
    best = max(scores, default=(0.0, None), key=lambda pair: pair[0])
    return best[1] if best[0] >= min_iou else None


def _track_people(run_dir: Path, labels: Labels, streams: list[str]) -> dict[int, str]:
    """track id -> person id from ``mot.txt``: the person the track overlaps on most frames."""
    path = run_dir / "mot.txt"
    if not path.is_file():
        return {}
    if len(streams) > 1:
        logger.warning("{}: ignored, the run has {} streams and mot.txt does not say which "
                       "one its tracks belong to", path, len(streams))
        return {}
    votes: dict[int, Counter[str]] = defaultdict(Counter)
    for frame, track, left, top, width, height in read_mot(path)[:, :6].tolist():
        box = (left, top, left + width, top + height)
        person = best_person(labels.people, int(frame) - 1, box, labels.match_iou)  # 1-based
        if person is not None:
            votes[int(track)][person] += 1
    return {track: counter.most_common(1)[0][0] for track, counter in votes.items()}


def _match(event: Event, labels: Labels, track_people: dict[int, str]) -> Scored:
    if not labels.people:
        found = labels.tracks.get((event.stream, event.track))
        return Scored(event, found[event.key] if found else None,
                      "track_id" if found else "none")
    person = best_person(labels.people, event.frame, event.bbox, labels.match_iou)
    method = "frame"
    if person is None and event.track in track_people:
        person, method = track_people[event.track], "track"
    if person is None:
        return Scored(event, None, "none")
    return Scored(event, labels.person(person).labels[event.key], method)


# ---- metrics ----------------------------------------------------------------------------------

def binary_metrics(y_true: Sequence[bool], y_pred: Sequence[bool],
                   p_yes: Sequence[float]) -> dict[str, Any]:
    """Accuracy, balanced accuracy, precision, recall, AUROC and confusion counts ("yes" = 1)."""
    if not y_true:
        return {"n": 0, "accuracy": None, "balanced_accuracy": None, "precision": None,
                "recall": None, "auroc": None, "tp": 0, "fp": 0, "tn": 0, "fn": 0}
    truth, pred = np.asarray(y_true, int), np.asarray(y_pred, int)
    both = len(set(truth.tolist())) == 2
    tn, fp, fn, tp = confusion_matrix(truth, pred, labels=[0, 1]).ravel().tolist()
    precision, recall, _, _ = precision_recall_fscore_support(
        truth, pred, labels=[0, 1], pos_label=1, average="binary", zero_division=np.nan)
    return {"n": len(truth), "accuracy": float(accuracy_score(truth, pred)),
            "balanced_accuracy": float(balanced_accuracy_score(truth, pred)) if both else None,
            "precision": _number(precision), "recall": _number(recall),
            "auroc": float(roc_auc_score(truth, np.asarray(p_yes, float))) if both else None,
            "tp": tp, "fp": fp, "tn": tn, "fn": fn}


def _number(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


def _scored_metrics(items: Sequence[tuple[str | None, bool, float]]) -> dict[str, Any]:
    """Metrics over (label, answer, p_yes) triples whose label is yes or no."""
    known = [(label == "yes", answer, p) for label, answer, p in items if label in ("yes", "no")]
    return binary_metrics([k[0] for k in known], [k[1] for k in known], [k[2] for k in known])


def _counts(scored: Sequence[Scored]) -> dict[str, Any]:
    methods = Counter(s.method for s in scored if s.label is not None)
    return {"answers": len(scored), "matched": sum(methods.values()),
            "unknown": sum(s.label == "unknown" for s in scored),
            "unmatched": sum(s.label is None for s in scored), "matched_by": dict(methods)}


def _last_per_track(scored: Sequence[Scored]) -> list[Scored]:
    last: dict[tuple[str, int], Scored] = {}
    for item in sorted(scored, key=lambda s: (s.event.frame, s.event.line)):
        last[(item.event.stream, item.event.track)] = item
    return list(last.values())


def _by_model(scored: Sequence[Scored]) -> dict[str, Any]:
    """Full-model answers (profile, audit, full) and compressed ones, audited crops included."""
    full = [(s.label, s.event.answer, s.event.p_yes) for s in scored if not s.event.compressed]
    compressed = [(s.label, s.event.answer, s.event.p_yes) for s in scored if s.event.compressed]
    compressed += [(s.label, s.event.compressed_answer, s.event.compressed_p_yes) for s in scored
                   if s.event.phase == "audit" and s.event.compressed_answer is not None
                   and s.event.compressed_p_yes is not None]
    return {"full": _scored_metrics(full), "compressed": _scored_metrics(compressed)}


def _agreement(scored: Sequence[Scored]) -> dict[str, Any]:
    """Compressed vs full: audits (same crop), and last answers of tracks that got both."""
    audits = [s.event.audit_agree for s in scored
              if s.event.phase == "audit" and s.event.audit_agree is not None]
    last: dict[tuple[str, int], dict[bool, bool]] = defaultdict(dict)
    for item in sorted(scored, key=lambda s: (s.event.frame, s.event.line)):
        last[(item.event.stream, item.event.track)][item.event.compressed] = item.event.answer
    pairs = [answers[True] == answers[False] for answers in last.values() if len(answers) == 2]
    return {"audits": len(audits),
            "audit_agreement": float(np.mean(audits)) if audits else None,
            "tracks_with_both": len(pairs),
            "track_agreement": float(np.mean(pairs)) if pairs else None}


def _question_report(text: str, scored: list[Scored]) -> dict[str, Any]:
    per_track = _last_per_track(scored)
    return {"question": text, **_counts(scored),
            "all": _scored_metrics([(s.label, s.event.answer, s.event.p_yes) for s in scored]),
            "per_track": {**_counts(per_track), **_scored_metrics(
                [(s.label, s.event.answer, s.event.p_yes) for s in per_track])},
            "by_model": _by_model(scored), "agreement": _agreement(scored)}


# ---- terminal report --------------------------------------------------------------------------

_METRICS = ("accuracy", "balanced_accuracy", "precision", "recall", "auroc")
_HEADER = ("acc", "bal.acc", "prec", "recall", "AUROC")


def _fmt(value: float | None) -> str:
    return f"{'-':>7}" if value is None else f"{value:>7.3f}"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _row(name: str, m: dict[str, Any], counts: dict[str, Any] | None = None) -> str:
    matched, unknown, unmatched = ((counts["matched"], counts["unknown"], counts["unmatched"])
                                   if counts else ("", "", ""))
    return (f"{name:<22.22} {m['n']:>5} {matched:>7} {unknown:>7} {unmatched:>9} "
            + " ".join(_fmt(m[key]) for key in _METRICS)
            + f"  {m['tp']}/{m['fp']}/{m['tn']}/{m['fn']}")


def format_report(report: dict[str, Any]) -> str:
    """A plain-text table of :func:`score_answers`' result, for the terminal."""
    lines = _header(report)
    for key, q in report["questions"].items():
        lines.append(_row(key, q["all"], q))
        lines.append(_row("  per track (last)", q["per_track"], q["per_track"]))
        lines += [_row(f"  {model} model", m) for model, m in q["by_model"].items() if m["n"]]
        a = q["agreement"]
        if a["audits"] or a["tracks_with_both"]:
            lines.append(f"  compressed vs full: {_share(a['audit_agreement'])} of "
                         f"{a['audits']} audits agree; {_share(a['track_agreement'])} of "
                         f"{a['tracks_with_both']} tracks with both agree")
    return "\n".join(lines)


def _header(report: dict[str, Any]) -> list[str]:
    events = report["events"]
    mot = "used" if report["mot_txt_used"] else "not used"
    columns = (f"{'question':<22} {'n':>5} {'matched':>7} {'unknown':>7} {'unmatched':>9} "
               + " ".join(f"{name:>7}" for name in _HEADER) + "  tp/fp/tn/fn")
    title = (f"answers of {report['run_dir']} against {report['labels']} ({report['form']}, "
             f"match IoU {report['match_iou']}, mot.txt {mot})")
    totals = (f"{events['yesno_answers']} yes/no answers read, {events['text_skipped']} text "
              f"answers skipped, {sum(events['unlabelled_questions'].values())} on unlabelled "
              f"questions; metrics by {report['library']}")
    return [title, totals, "", columns]
