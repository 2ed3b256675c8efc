"""``vidqa eval tracks`` and ``vidqa eval answers`` through the real CLI, on inputs whose scores
are known by hand (the constructions of test_tracks.py and test_answers.py)."""

import json
from pathlib import Path

import pytest
import yaml

from vidqa.cli import main

FRAMES = range(1, 11)
MOT_BOXES = {1: (10, 10, 50, 100), 2: (200, 10, 50, 100)}  # gt id -> left, top, width, height
RED = "Is this person wearing something red?"
BOXES = {"A": [0, 0, 100, 200], "B": [300, 0, 400, 200], "C": [600, 0, 700, 200],
         "far": [1000, 0, 1100, 200]}


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def write_mot(folder: Path, switch: bool = False) -> tuple[Path, Path]:
    """Two still pedestrians for 10 frames; the prediction copies them (ids 7, 8), and with
    ``switch`` person 1's prediction changes id from 7 to 9 after frame 5."""
    gt = [f"{f},{i},{','.join(map(str, MOT_BOXES[i]))},1,1,1" for f in FRAMES for i in (1, 2)]
    pred = [f"{f},{(9 if switch and i == 1 and f > 5 else i + 6)},"
            f"{','.join(map(str, MOT_BOXES[i]))},0.9,-1,-1,-1" for f in FRAMES for i in (1, 2)]
    (folder / "gt.txt").write_text("\n".join(gt) + "\n")
    (folder / "mot.txt").write_text("\n".join(pred) + "\n")
    return folder / "mot.txt", folder / "gt.txt"


def write_labels(folder: Path, people: list | None = None) -> Path:
    people = people if people is not None else [
        {"id": "A", "note": "red coat", "labels": {"red": "yes"}, "boxes": [[10, *BOXES["A"]]]},
        {"id": "B", "note": "grey coat", "labels": {"red": "no"}, "boxes": [[10, *BOXES["B"]]]},
        {"id": "C", "labels": {"red": "unknown"}, "boxes": [[10, *BOXES["C"]]]}]
    path = folder / "labels.yaml"
    path.write_text(yaml.safe_dump({"video": "clip.avi", "match_iou": 0.5,
                                    "questions": {"red": RED}, "people": people}))
    return path


def answer(track: int, box: str, p_yes: float) -> dict:
    return {"frame": 10, "time_s": 1.0, "track_id": track, "question": RED,
            "answer": "yes" if p_yes > 0.5 else "no", "p_yes": p_yes, "margin": 0.0,
            "bbox": BOXES[box], "latency_ms": 1.0, "model": "m", "compressed": False,
            "plan_id": None, "phase": "profile"}


def write_run(folder: Path) -> Path:
    """A run folder whose red answers are: A yes (TP), B yes (FP), C (unknown), far (unmatched)."""
    run = folder / "run"
    run.mkdir()
    events = [answer(1, "A", 0.9), answer(2, "B", 0.7), answer(3, "C", 0.2),
              answer(4, "far", 0.8)]
    (run / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    return run


def test_eval_tracks_when_prediction_equals_gt_then_text_shows_full_scores(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "eval", "tracks", *map(str, write_mot(tmp_path)))

    assert code == 0
    assert "HOTA 100.0" in out and "MOTA 100.0" in out and "IDF1 100.0" in out
    assert "IDSW 0  FP 0  FN 0  TP 20" in out
    assert "evaluator: trackeval" in out and "pedestrians only" in out


@pytest.mark.parametrize("switch, expected", [
    (False, {"HOTA": 1.0, "MOTA": 1.0, "IDF1": 1.0, "IDSW": 0, "TP": 20}),
    # one identity switch in 20 boxes: MOTA 19/20, IDF1 30/40, AssA 0.75 -> HOTA sqrt(0.75)
    (True, {"HOTA": 0.75 ** 0.5, "MOTA": 0.95, "IDF1": 0.75, "IDSW": 1, "TP": 20}),
])
def test_eval_tracks_when_json_then_scores_known_by_hand(capsys, tmp_path, switch, expected):
    code, out, _ = run_cli(capsys, "eval", "tracks", *map(str, write_mot(tmp_path, switch)),
                           "--json")

    scores = json.loads(out)
    assert code == 0
    assert {key: scores[key] for key in expected} == pytest.approx(expected)
    assert scores["evaluator"].startswith("trackeval ")


def test_eval_tracks_when_seqinfo_given_then_its_length_is_used(capsys, tmp_path):
    (tmp_path / "seqinfo.ini").write_text("[Sequence]\nname=seq\nframeRate=30\nseqLength=12\n")

    code, out, _ = run_cli(capsys, "eval", "tracks", *map(str, write_mot(tmp_path)),
                           "--seqinfo", str(tmp_path), "--json")

    assert code == 0
    assert json.loads(out)["frames"] == 12


def test_eval_answers_when_run_folder_given_then_text_table_per_question(capsys, tmp_path):
    run = write_run(tmp_path)

    code, out, _ = run_cli(capsys, "eval", "answers", str(run), "--labels",
                           str(write_labels(tmp_path)))

    row = next(line for line in out.splitlines() if line.startswith("red "))
    # n 2 (A, B), matched 3 (C is unknown), unmatched 1; acc 1/2, balanced (1 + 0)/2,
    # precision 1/2, recall 1/1, AUROC 1 (.9 for A ranks above .7 for B).
    assert row.split()[:10] == ["red", "2", "3", "1", "1", "0.500", "0.500", "0.500", "1.000",
                                "1.000"]
    assert row.endswith("1/1/0/0")
    assert "scikit-learn" in out


def test_eval_answers_when_json_then_counts_and_metrics_known_by_hand(capsys, tmp_path):
    run = write_run(tmp_path)

    code, out, _ = run_cli(capsys, "eval", "answers", str(run), "--labels",
                           str(write_labels(tmp_path)), "--json")

    red = json.loads(out)["questions"]["red"]
    assert code == 0
    assert (red["answers"], red["matched"], red["unknown"], red["unmatched"]) == (4, 3, 1, 1)
    metrics = red["all"]
    assert (metrics["tp"], metrics["fp"], metrics["tn"], metrics["fn"]) == (1, 1, 0, 0)
    assert (metrics["accuracy"], metrics["precision"], metrics["recall"]) == pytest.approx(
        (0.5, 0.5, 1.0))
    assert (metrics["balanced_accuracy"], metrics["auroc"]) == pytest.approx((0.5, 1.0))


@pytest.mark.parametrize("c_label, expected", [
    # C says no (.2): a TN. TPR 1, TNR 1/2; .9 ranks above .7 and .2.
    ("no", {"n": 3, "balanced_accuracy": 0.75, "auroc": 1.0, "tn": 1, "fn": 0}),
    # C is red but said no: an FN. TPR 1/2, TNR 0; of the pairs (.9, .7), (.2, .7) one is right.
    ("yes", {"n": 3, "balanced_accuracy": 0.25, "auroc": 0.5, "tn": 0, "fn": 1}),
])
def test_eval_answers_when_unknown_person_labelled_then_scores_change_as_expected(
        capsys, tmp_path, c_label, expected):
    run = write_run(tmp_path)
    labels = write_labels(tmp_path, [
        {"id": "A", "labels": {"red": "yes"}, "boxes": [[10, *BOXES["A"]]]},
        {"id": "B", "labels": {"red": "no"}, "boxes": [[10, *BOXES["B"]]]},
        {"id": "C", "labels": {"red": c_label}, "boxes": [[10, *BOXES["C"]]]}])

    code, out, _ = run_cli(capsys, "eval", "answers", str(run), "--labels", str(labels),
                           "--json")

    metrics = json.loads(out)["questions"]["red"]["all"]
    assert code == 0
    assert {key: metrics[key] for key in expected} == pytest.approx(expected)


@pytest.mark.parametrize("what, message", [
    ("missing-pred", "not found"),
    ("missing-gt", "not found"),
    ("bad-gt", "expected at least 9 columns"),
])
def test_eval_tracks_when_input_is_wrong_then_one_line_error_and_exit_2(capsys, tmp_path, what,
                                                                       message):
    pred, gt = write_mot(tmp_path)
    if what == "missing-pred":
        pred = tmp_path / "no-such-mot.txt"
    elif what == "missing-gt":
        gt = tmp_path / "no-such-gt.txt"
    else:
        gt.write_text("1,1,10,10,50,100,1\n")

    code, out, err = run_cli(capsys, "eval", "tracks", str(pred), str(gt))

    assert code == 2
    assert out == ""
    assert_one_line_error(err, message)


@pytest.mark.parametrize("labels_text, message", [
    (None, "not found"),
    ("questions: [unclosed", "is not valid YAML"),
    ("questions: {red: 'Is it red?'}\npeople:\n  - {id: A, labels: {red: maybe}, "
     "boxes: [[10, 0, 0, 100, 200]]}\n", "expected yes, no or"),
    ("questions: {red: 'Is it red?'}\npeople:\n  - {id: A, labels: {red: 'yes'}, "
     "boxes: [[10, 100, 0, 0, 200]]}\n", "expected x2 > x1"),
    ("questions: {red: 'Is it red?'}\n", "expected exactly one of 'people'"),
])
def test_eval_answers_when_labels_are_wrong_then_one_line_error_and_exit_2(
        capsys, tmp_path, labels_text, message):
    run = write_run(tmp_path)
    labels = tmp_path / "labels.yaml"
    if labels_text is not None:
        labels.write_text(labels_text)

    code, out, err = run_cli(capsys, "eval", "answers", str(run), "--labels", str(labels))

    assert code == 2
    assert out == ""
    assert_one_line_error(err, message)


@pytest.mark.parametrize("events_text, message", [
    (None, "events.jsonl not found"),
    ('{"frame": 1\n', "line 1 is not JSON"),
])
def test_eval_answers_when_run_folder_is_wrong_then_one_line_error_and_exit_2(
        capsys, tmp_path, events_text, message):
    run = tmp_path / "run"
    run.mkdir()
    if events_text is not None:
        (run / "events.jsonl").write_text(events_text)

    code, _, err = run_cli(capsys, "eval", "answers", str(run), "--labels",
                           str(write_labels(tmp_path)))

    assert code == 2
    assert_one_line_error(err, message)


def assert_one_line_error(err: str, message: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("vidqa: error: ") and message in lines[0], err
    assert "Traceback" not in err
