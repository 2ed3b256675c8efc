"""Tracking scores on tiny MOT16-style sequences whose metrics follow by hand.

Every scene has two pedestrians (gt ids 1 and 2, class 1, consider 1) standing still for 10
frames, far apart; predictions copy their boxes exactly, so every match has IoU 1 and HOTA's
19 thresholds all agree (HOTA = its value at any one alpha).
"""

import math
from pathlib import Path

import pytest

from vidqa.errors import SourceError
from vidqa.evaluation.tracks import score_tracks

FRAMES = range(1, 11)
BOXES = {1: (10, 10, 50, 100), 2: (200, 10, 50, 100), 3: (400, 10, 50, 100)}  # left,top,w,h


def gt_line(frame: int, gt_id: int, consider: int = 1, cls: int = 1) -> str:
    return f"{frame},{gt_id},{','.join(map(str, BOXES[gt_id]))},{consider},{cls},1"


def pred_line(frame: int, box_of: int, pred_id: int) -> str:
    return f"{frame},{pred_id},{','.join(map(str, BOXES[box_of]))},0.9,-1,-1,-1"


def write(tmp_path: Path, gt: list[str], pred: list[str]) -> tuple[Path, Path]:
    (tmp_path / "gt.txt").write_text("\n".join(gt) + "\n")
    (tmp_path / "pred.txt").write_text("\n".join(pred) + ("\n" if pred else ""))
    return tmp_path / "pred.txt", tmp_path / "gt.txt"


def two_people() -> list[str]:
    return [gt_line(f, i) for f in FRAMES for i in (1, 2)]


def perfect() -> list[str]:
    return [pred_line(f, i, i + 6) for f in FRAMES for i in (1, 2)]  # ids 7, 8


def test_score_tracks_when_prediction_is_perfect_then_every_score_is_one(tmp_path: Path):
    scores = score_tracks(*write(tmp_path, two_people(), perfect()))

    for name in ("HOTA", "DetA", "AssA", "MOTA", "MOTP", "IDF1", "IDP", "IDR"):
        assert scores[name] == pytest.approx(1.0), name
    assert (scores["IDSW"], scores["FP"], scores["FN"], scores["TP"]) == (0, 0, 0, 20)
    assert (scores["gt_ids"], scores["pred_ids"], scores["frames"]) == (2, 2, 10)
    assert scores["evaluator"].startswith("trackeval ")


def test_score_tracks_when_every_other_frame_of_one_track_is_missing_then_known_scores(
        tmp_path: Path):
    pred = [pred_line(f, 1, 7) for f in FRAMES] + [pred_line(f, 2, 8) for f in FRAMES if f % 2]

    scores = score_tracks(*write(tmp_path, two_people(), pred))

    # 20 gt boxes, 15 found: TP 15, FN 5, FP 0, no switch (a gap is not a switch).
    assert (scores["TP"], scores["FN"], scores["FP"], scores["IDSW"]) == (15, 5, 0, 0)
    assert scores["MOTA"] == pytest.approx(1 - 5 / 20)
    # IDTP 15, IDFN 5, IDFP 0: IDF1 = 2*15 / (2*15 + 5) = 6/7, IDP 1, IDR 15/20.
    assert (scores["IDF1"], scores["IDP"], scores["IDR"]) == pytest.approx((6 / 7, 1.0, 0.75))
    # DetA = 15/20. AssA averages over the 15 TPs: person 1's 10 TPs have TPA/(TPA+FNA+FPA) =
    # 10/10, person 2's 5 TPs have 5/(5+5+0): (10*1 + 5*0.5)/15 = 5/6. HOTA = sqrt(DetA*AssA).
    assert scores["DetA"] == pytest.approx(0.75)
    assert scores["AssA"] == pytest.approx(5 / 6)
    assert scores["HOTA"] == pytest.approx(math.sqrt(0.75 * 5 / 6))


def test_score_tracks_when_one_identity_switch_then_known_scores(tmp_path: Path):
    pred = ([pred_line(f, 1, 7 if f <= 5 else 9) for f in FRAMES]
            + [pred_line(f, 2, 8) for f in FRAMES])

    scores = score_tracks(*write(tmp_path, two_people(), pred))

    assert (scores["TP"], scores["FN"], scores["FP"], scores["IDSW"]) == (20, 0, 0, 1)
    assert scores["MOTA"] == pytest.approx(1 - 1 / 20)
    # Best one-to-one id mapping: 1->7 (or 9) and 2->8: IDTP 15, IDFN 5, IDFP 5 -> 30/40.
    assert (scores["IDF1"], scores["IDP"], scores["IDR"]) == pytest.approx((0.75, 0.75, 0.75))
    # DetA 1. AssA: person 1's 10 TPs score 5/(5+5+0) each, person 2's 10 score 1: 0.75.
    assert scores["DetA"] == pytest.approx(1.0)
    assert scores["AssA"] == pytest.approx(0.75)
    assert scores["HOTA"] == pytest.approx(math.sqrt(0.75))
    assert scores["pred_ids"] == 3


@pytest.mark.parametrize("cls, consider", [(2, 1), (7, 1), (8, 0), (12, 0), (7, 0)])
def test_score_tracks_when_predictions_on_a_distractor_then_removed_not_false_positives(
        tmp_path: Path, cls: int, consider: int):
    gt = two_people() + [gt_line(f, 3, consider, cls) for f in FRAMES]
    pred = perfect() + [pred_line(f, 3, 9) for f in FRAMES]

    scores = score_tracks(*write(tmp_path, gt, pred))

    assert (scores["FP"], scores["FN"], scores["pred_dets_removed"]) == (0, 0, 10)
    assert scores["MOTA"] == pytest.approx(1.0)
    assert scores["HOTA"] == pytest.approx(1.0)
    assert scores["IDF1"] == pytest.approx(1.0)
    assert (scores["gt_ids"], scores["pred_ids"]) == (2, 2)


def test_score_tracks_when_predictions_on_a_car_then_they_are_false_positives(tmp_path: Path):
    gt = two_people() + [gt_line(f, 3, 0, 3) for f in FRAMES]  # class 3 car: not a distractor
    pred = perfect() + [pred_line(f, 3, 9) for f in FRAMES]

    scores = score_tracks(*write(tmp_path, gt, pred))

    assert (scores["FP"], scores["pred_dets_removed"]) == (10, 0)
    assert scores["MOTA"] == pytest.approx(1 - 10 / 20)


def test_score_tracks_when_pedestrian_has_consider_flag_zero_then_it_is_ignored(tmp_path: Path):
    gt = two_people() + [gt_line(f, 3, consider=0) for f in FRAMES]

    scores = score_tracks(*write(tmp_path, gt, perfect()))

    assert (scores["FN"], scores["gt_ids"], scores["gt_dets"]) == (0, 2, 20)
    assert scores["HOTA"] == pytest.approx(1.0)
    assert scores["MOTA"] == pytest.approx(1.0)


def test_score_tracks_when_prediction_is_empty_then_everything_is_missed(tmp_path: Path):
    scores = score_tracks(*write(tmp_path, two_people(), []))

    assert (scores["TP"], scores["FN"], scores["FP"], scores["pred_ids"]) == (0, 20, 0, 0)
    assert scores["MOTA"] == pytest.approx(0.0)
    assert scores["HOTA"] == pytest.approx(0.0)


def test_score_tracks_when_seqinfo_given_then_its_length_is_used(tmp_path: Path):
    (tmp_path / "seqinfo.ini").write_text("[Sequence]\nname=seq\nframeRate=30\nseqLength=12\n")

    scores = score_tracks(*write(tmp_path, two_people(), perfect()), seqinfo=tmp_path)

    assert scores["frames"] == 12
    assert scores["HOTA"] == pytest.approx(1.0)


@pytest.mark.parametrize("gt, pred, seqinfo, message", [
    (None, None, "seqLength=5", "frame 10 is past the end of the sequence"),
    (None, None, "frameRate=30", "no usable seqLength"),
    (["1,1,10,10,50,100,1"], None, None, "expected at least 9 columns"),
    (["1,1,10,10,50,100,0.9,-1,-1,-1"], None, None, "cannot be the ground truth"),
    (["1,1,10,10,50,100,1,14,1"], None, None, "class 14"),
    (None, ["1,1,10,10,50,100"], None, "expected at least 7 columns"),
])
def test_score_tracks_when_input_is_wrong_then_source_error_with_fix(tmp_path: Path, gt, pred,
                                                                      seqinfo, message):
    pred_path, gt_path = write(tmp_path, gt or two_people(), pred or perfect())
    if seqinfo:
        (tmp_path / "seqinfo.ini").write_text(f"[Sequence]\nname=seq\n{seqinfo}\n")

    with pytest.raises(SourceError, match=message):
        score_tracks(pred_path, gt_path, seqinfo=tmp_path / "seqinfo.ini" if seqinfo else None)


def test_score_tracks_when_files_missing_then_source_error(tmp_path: Path):
    pred, gt = write(tmp_path, two_people(), perfect())

    with pytest.raises(SourceError, match="not found"):
        score_tracks(tmp_path / "missing.txt", gt)
    with pytest.raises(SourceError, match="not found"):
        score_tracks(pred, gt, seqinfo=tmp_path / "no-such-sequence")
