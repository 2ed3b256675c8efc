"""Answer scores on synthetic runs whose metrics are worked out by hand in each test."""

import json
from pathlib import Path

import pytest

from vidqa.errors import ConfigError, SourceError
from vidqa.evaluation.answers import box_iou, format_report, score_answers
from vidqa.evaluation.labels import parse_labels

RED, JEANS = "Is this person wearing red?", "Is this person wearing jeans?"
BOX = {"A": [0, 0, 100, 200], "B": [300, 0, 400, 200], "C": [600, 0, 700, 200],
       "D": [800, 0, 900, 200], "far": [1000, 0, 1100, 200]}


def person(pid: str, labels: dict, frames=(10, 20), box: str | None = None) -> dict:
    return {"id": pid, "labels": labels, "boxes": [[f, *BOX[box or pid]] for f in frames]}


PEOPLE = {"questions": {"red": RED, "jeans": JEANS}, "match_iou": 0.5, "people": [
    person("A", {"red": "yes", "jeans": "no"}), person("B", {"red": "no"}),
    person("C", {"red": "yes"}, (10,)), person("D", {"red": "no"}, (10,))]}


def event(frame: int, track: int, box: str, p_yes: float | None, question: str = RED,
          **extra) -> dict:
    answer = "a red coat" if p_yes is None else ("yes" if p_yes > 0.5 else "no")
    return {"frame": frame, "time_s": frame / 10, "track_id": track, "question": question,
            "answer": answer, "p_yes": p_yes, "margin": 0.0, "bbox": BOX[box],
            "latency_ms": 1.0, "model": "m", "compressed": False, "plan_id": None,
            "phase": "profile", **extra}


def run_dir(tmp_path: Path, events: list[dict], mot: list[str] | None = None) -> Path:
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    if mot is not None:
        (tmp_path / "mot.txt").write_text("\n".join(mot) + "\n")
    return tmp_path


RED_EVENTS = [
    event(10, 1, "A", 0.9),  # truth yes, says yes: TP
    event(10, 2, "B", 0.6),  # truth no, says yes: FP
    event(10, 3, "C", 0.4),  # truth yes, says no: FN
    event(10, 4, "D", 0.2),  # truth no, says no: TN
    event(20, 1, "A", 0.8),  # truth yes, says yes: TP (track 1's last answer)
    event(10, 9, "far", 0.7),  # nobody labelled there: unmatched
    event(10, 1, "A", None),  # text answer: skipped
    event(10, 1, "A", 0.9, question="Is this person running?"),  # question not labelled
]


def test_score_answers_when_people_labels_then_metrics_known_by_hand(tmp_path: Path):
    report = score_answers(parse_labels(PEOPLE), run_dir(tmp_path, RED_EVENTS))
    red = report["questions"]["red"]

    assert (red["answers"], red["matched"], red["unknown"], red["unmatched"]) == (6, 5, 0, 1)
    assert red["matched_by"] == {"frame": 5}
    m = red["all"]
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (2, 1, 1, 1)
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2) / 2)  # (TPR + TNR) / 2
    assert (m["precision"], m["recall"]) == pytest.approx((2 / 3, 2 / 3))
    # positives p_yes {.9, .4, .8} vs negatives {.6, .2}: 5 of 6 pairs ranked right.
    assert m["auroc"] == pytest.approx(5 / 6)
    assert report["events"] == {"lines": 8, "yesno_answers": 6, "text_skipped": 1,
                                "not_answers": 0,
                                "unlabelled_questions": {"Is this person running?": 1}}


def test_score_answers_when_track_answered_twice_then_per_track_uses_the_last(tmp_path: Path):
    red = score_answers(parse_labels(PEOPLE), run_dir(tmp_path, RED_EVENTS))["questions"]["red"]
    t = red["per_track"]

    # tracks 1 (last: .8 yes, truth yes), 2 (.6 FP), 3 (.4 FN), 4 (.2 TN), 9 unmatched.
    assert (t["answers"], t["matched"], t["unmatched"], t["n"]) == (5, 4, 1, 4)
    assert t["accuracy"] == pytest.approx(2 / 4)
    assert t["balanced_accuracy"] == pytest.approx(0.5)
    assert t["auroc"] == pytest.approx(3 / 4)  # {.8, .4} vs {.6, .2}: .4 < .6 is the miss


def test_score_answers_when_labels_unknown_or_one_class_then_skipped_and_nulls(tmp_path: Path):
    events = [event(10, 1, "A", 0.3, JEANS), event(10, 2, "B", 0.7, JEANS)]

    jeans = score_answers(parse_labels(PEOPLE), run_dir(tmp_path, events))["questions"]["jeans"]

    assert (jeans["matched"], jeans["unknown"], jeans["all"]["n"]) == (2, 1, 1)
    assert jeans["all"]["accuracy"] == 1.0
    assert jeans["all"]["balanced_accuracy"] is None and jeans["all"]["auroc"] is None
    assert jeans["all"]["precision"] is None and jeans["all"]["recall"] is None


@pytest.mark.parametrize("mot, matched_by", [
    (None, {}),
    (["31,5,800,0,100,200,0.9,-1,-1,-1"], {"track": 1}),  # track 5 on D's box at frame 30
    (["31,5,0,0,100,200,0.9,-1,-1,-1"], {}),  # track 5 elsewhere
])
def test_score_answers_when_mot_txt_then_tracks_match_people_on_other_frames(
        tmp_path: Path, mot, matched_by):
    labels = dict(PEOPLE, people=[person("D", {"red": "no"}, (30,))])
    events = [event(35, 5, "far", 0.7)]  # frame 35: D has no labelled box there

    red = score_answers(parse_labels(labels), run_dir(tmp_path, events, mot))["questions"]["red"]

    assert red["matched_by"] == matched_by
    assert red["all"]["fp"] == (1 if matched_by else 0)


TRACKS = {"questions": {"red": RED}, "tracks": {"1": {"red": "yes"}, "2": {"red": "no"}}}
COMPRESSED_EVENTS = [
    event(0, 1, "A", 0.9),
    event(5, 1, "A", 0.7, compressed=True, phase="compressed"),
    event(0, 2, "B", 0.2),
    event(5, 2, "B", 0.6, compressed=True, phase="compressed"),
    event(8, 2, "B", 0.3, phase="audit", audit_agree=False, compressed_answer="yes",
          compressed_p_yes=0.55),
    event(1, 3, "C", 0.8, phase="audit", audit_agree=True, compressed_answer="yes",
          compressed_p_yes=0.7),  # track 3 is not labelled
]


def test_score_answers_when_compressed_and_audits_then_agreement_and_split(tmp_path: Path):
    red = score_answers(parse_labels(TRACKS),
                        run_dir(tmp_path, COMPRESSED_EVENTS))["questions"]["red"]

    # audits: one agrees, one not. Tracks with both: 1 (yes/yes) agrees, 2 (last full: the
    # audit's "no" at frame 8; last compressed: "yes" at 5) does not; 3 had no compressed event.
    assert red["agreement"] == {"audits": 2, "audit_agreement": 0.5, "tracks_with_both": 2,
                                "track_agreement": 0.5}
    full, compressed = red["by_model"]["full"], red["by_model"]["compressed"]
    assert (full["n"], full["accuracy"]) == (3, 1.0)
    # compressed: track 1 yes (truth yes), track 2 yes and the audit's compressed yes (truth no)
    assert (compressed["n"], compressed["tp"], compressed["fp"]) == (3, 1, 2)
    assert compressed["balanced_accuracy"] == pytest.approx(0.5)
    assert compressed["auroc"] == pytest.approx(1.0)  # .7 above .6 and .55
    assert red["matched_by"] == {"track_id": 5}


def test_score_answers_when_several_streams_then_people_labels_need_one(tmp_path: Path):
    events = [event(10, 1, "A", 0.9, stream_id="cam1"), event(10, 1, "A", 0.2, stream_id="cam2")]
    folder = run_dir(tmp_path, events)

    with pytest.raises(ConfigError, match="2 streams .cam1, cam2. .* choose the stream"):
        score_answers(parse_labels(PEOPLE), folder)
    with pytest.raises(ConfigError, match="stream 'cam3' is not in the run"):
        score_answers(parse_labels(PEOPLE), folder, stream="cam3")
    red = score_answers(parse_labels(PEOPLE), folder, stream="cam2")["questions"]["red"]
    assert (red["answers"], red["all"]["fn"]) == (1, 1)


@pytest.mark.parametrize("text, message", [
    ('{"frame": 1\n', "line 1 is not JSON"),
    ("[1, 2]\n", "line 1: expected a JSON object"),
    (json.dumps({"question": RED, "p_yes": 0.5, "answer": "yes"}) + "\n",
     "line 1: a yes/no answer needs frame"),
    ("\n" + json.dumps(event(1, 1, "A", 0.9) | {"answer": "maybe"}) + "\n", "line 2: .*'maybe'"),
    (json.dumps(event(1, 1, "A", 0.9) | {"bbox": [1, 2]}) + "\n", "line 1: bbox has 2 numbers"),
    (json.dumps(event(1, 1, "A", 0.9) | {"frame": "x"}) + "\n", "line 1: .*integer frame"),
])
def test_score_answers_when_events_malformed_then_source_error_names_line(tmp_path: Path, text,
                                                                          message):
    (tmp_path / "events.jsonl").write_text(text)

    with pytest.raises(SourceError, match=message):
        score_answers(parse_labels(PEOPLE), tmp_path)


def test_score_answers_when_no_events_file_then_source_error(tmp_path: Path):
    with pytest.raises(SourceError, match="events.jsonl not found"):
        score_answers(parse_labels(PEOPLE), tmp_path)


@pytest.mark.parametrize("a, b, expected", [
    ([0, 0, 10, 10], [0, 0, 10, 10], 1.0),
    ([0, 0, 10, 10], [5, 0, 15, 10], 50 / 150),
    ([0, 0, 10, 10], [20, 20, 30, 30], 0.0),
])
def test_box_iou_when_boxes_overlap_then_intersection_over_union(a, b, expected):
    assert box_iou(a, b) == pytest.approx(expected)


def test_format_report_when_scored_then_one_row_per_question_and_track_view(tmp_path: Path):
    report = score_answers(parse_labels(PEOPLE), run_dir(tmp_path, RED_EVENTS))

    text = format_report(report)

    assert "red" in text and "jeans" in text and "per track (last)" in text
    assert "  0.600   0.583   0.667   0.667   0.833  2/1/1/1" in text
