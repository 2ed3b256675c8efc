"""Tracking metrics (HOTA, CLEAR MOT, identity) of a MOTChallenge prediction file, by TrackEval.

The scores come from TrackEval (the MOTChallenge's official evaluation code, on PyPI as
``trackeval``), run through its own ``MotChallenge2DBox`` dataset with the ``MOT16`` rules, so the
preprocessing is the official one:

- ground-truth rows with consider flag 0 are ignored;
- only class 1 (pedestrian) is evaluated;
- predictions matched (Hungarian, IoU >= 0.5) to a ground-truth box of a distractor class (2 person
  on vehicle, 7 static person, 8 distractor, 12 reflection) are removed before scoring, so they are
  neither true nor false positives.

vidqa validates both files first (errors name the line), writes normalised copies into a
temporary folder laid out as TrackEval expects, and evaluates that one sequence. Every prediction
row counts as a pedestrian: the class column of a prediction file is ignored.
"""

from __future__ import annotations

import configparser
import contextlib
import io
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import trackeval
from loguru import logger
from trackeval.datasets import MotChallenge2DBox
from trackeval.eval import eval_sequence
from trackeval.utils import TrackEvalException

from vidqa.errors import SourceError
from vidqa.evaluation.mot import GT_COLUMNS, PREDICTION_COLUMNS, read_mot

EVALUATOR = f"trackeval {trackeval.__version__}"
BENCHMARK = "MOT16"  # the distractor set of MOT16/17; MOT20 would add class 6
MOT_CLASSES = range(1, 14)  # 1 pedestrian ... 13 crowd, as MOT16 defines them
_SEQ, _TRACKER, _CLASS = "seq", "vidqa", "pedestrian"


def score_tracks(pred: Path, gt: Path, seqinfo: Path | None = None) -> dict[str, Any]:
    """Score ``pred`` (vidqa's ``mot.txt`` or any MOTChallenge tracker file) against a MOT16/17
    ``gt.txt``.

    ``seqinfo`` (the sequence folder or its ``seqinfo.ini``) gives the sequence length; without
    it the last frame present in either file ends the sequence, which changes no metric. Returns
    HOTA, DetA, AssA, LocA (means over TrackEval's 19 IoU thresholds), MOTA, MOTP (mean IoU of
    matches, 0-1), IDF1, IDP, IDR, IDSW, FP, FN, TP, gt_ids, pred_ids, gt_dets, pred_dets (after
    preprocessing), pred_dets_removed (predictions on distractors), frames and ``evaluator``.
    Raises :class:`SourceError` for a missing or malformed file.
    """
    pred_rows = read_mot(Path(pred), min_columns=7)
    gt_rows = read_mot(Path(gt), min_columns=GT_COLUMNS)
    _check_gt(Path(gt), gt_rows)
    frames = _sequence_length(pred_rows, gt_rows, Path(seqinfo) if seqinfo else None)
    with tempfile.TemporaryDirectory(prefix="vidqa-eval-") as tmp:
        config = _write_sequence(Path(tmp), pred_rows, gt_rows, frames)
        results = _evaluate(config)
    return _summary(results, len(pred_rows), frames)


def _check_gt(path: Path, rows: np.ndarray) -> None:
    """MOT16 gt: consider flag 0/1 in column 7, class 1-13 in column 8 (1-based columns)."""
    consider, classes = rows[:, 6], rows[:, 7]
    bad_class = ~np.isin(classes, MOT_CLASSES)
    bad_flag = ~np.isin(consider, (0, 1))
    if bad_class.any() or bad_flag.any():
        row = int(np.argmax(bad_class | bad_flag))
        raise SourceError(
            f"{path}: the row {','.join(f'{v:g}' for v in rows[row])} has consider flag "
            f"{consider[row]:g} and class {classes[row]:g}, but a MOT16/17 gt.txt has "
            f"frame,id,left,top,width,height,consider (0/1),class (1-13),visibility. If this is "
            f"a tracker's output or a MOT15 file, it cannot be the ground truth: pass "
            f"<sequence>/gt/gt.txt")


def _sequence_length(pred: np.ndarray, gt: np.ndarray, seqinfo: Path | None) -> int:
    last = int(max(pred[:, 0].max(initial=1), gt[:, 0].max(initial=1)))
    if seqinfo is None:
        return last
    length = _read_seq_length(seqinfo)
    if last > length:
        raise SourceError(f"frame {last} is past the end of the sequence: {seqinfo} says "
                          f"seqLength={length}. Check that the prediction belongs to this "
                          f"sequence and that its frames are 1-based")
    return length


def _read_seq_length(seqinfo: Path) -> int:
    ini = seqinfo / "seqinfo.ini" if seqinfo.is_dir() else seqinfo
    if not ini.is_file():
        raise SourceError(f"{ini} not found: pass the MOT sequence folder or its seqinfo.ini, "
                          f"or leave seqinfo out to end the sequence at the last frame")
    parser = configparser.ConfigParser()
    try:
        parser.read(ini)
        return int(parser["Sequence"]["seqLength"])
    except (configparser.Error, KeyError, ValueError) as err:
        raise SourceError(f"{ini} has no usable seqLength ({type(err).__name__}: {err}): it "
                          f"needs a [Sequence] section with an integer seqLength") from None


def _write_sequence(root: Path, pred: np.ndarray, gt: np.ndarray, frames: int) -> dict:
    """The files and the MotChallenge2DBox config TrackEval reads them with."""
    gt_file = root / "gt" / _SEQ / "gt" / "gt.txt"
    pred_file = root / "trackers" / _TRACKER / "data" / f"{_SEQ}.txt"
    for path in (gt_file, pred_file):
        path.parent.mkdir(parents=True)
    padded = np.full((len(pred), PREDICTION_COLUMNS), -1.0)  # class -1: all pedestrians
    padded[:, :7] = pred[:, :7]
    np.savetxt(pred_file, padded, fmt="%.10g", delimiter=",")  # "%g": frame 1, not 1.0
    np.savetxt(gt_file, gt[:, :GT_COLUMNS], fmt="%.10g", delimiter=",")
    return {"GT_FOLDER": str(root / "gt"), "TRACKERS_FOLDER": str(root / "trackers"),
            "OUTPUT_FOLDER": str(root / "out"), "TRACKERS_TO_EVAL": [_TRACKER],
            "CLASSES_TO_EVAL": [_CLASS], "BENCHMARK": BENCHMARK, "SKIP_SPLIT_FOL": True,
            "SEQ_INFO": {_SEQ: frames}, "DO_PREPROC": True, "PRINT_CONFIG": False}


def _evaluate(config: dict) -> dict[str, dict]:
    """TrackEval's own per-sequence evaluation; its prints go to the debug log."""
    quiet = {"THRESHOLD": 0.5, "PRINT_CONFIG": False}
    metrics = [trackeval.metrics.HOTA(), trackeval.metrics.CLEAR(dict(quiet)),
               trackeval.metrics.Identity(dict(quiet)), trackeval.metrics.Count()]
    names = [metric.get_name() for metric in metrics]
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured):
            dataset = MotChallenge2DBox(config)
            results = eval_sequence(_SEQ, dataset, _TRACKER, [_CLASS], metrics, names)
    except TrackEvalException as err:
        raise SourceError(f"TrackEval rejected the files: {err}") from None
    finally:
        if captured.getvalue().strip():
            logger.debug("TrackEval: {}", captured.getvalue().strip())
    return results[_CLASS]


def _summary(results: dict[str, dict], pred_rows: int, frames: int) -> dict[str, Any]:
    hota, clear = results["HOTA"], results["CLEAR"]
    identity, count = results["Identity"], results["Count"]
    summary: dict[str, Any] = {name: float(np.mean(hota[name]))
                               for name in ("HOTA", "DetA", "AssA", "LocA")}
    summary.update({name: float(clear[name]) for name in ("MOTA", "MOTP")})
    summary.update({name: float(identity[name]) for name in ("IDF1", "IDP", "IDR")})
    summary.update({"IDSW": int(clear["IDSW"]), "FP": int(clear["CLR_FP"]),
                    "FN": int(clear["CLR_FN"]), "TP": int(clear["CLR_TP"]),
                    "gt_ids": int(count["GT_IDs"]), "pred_ids": int(count["IDs"]),
                    "gt_dets": int(count["GT_Dets"]), "pred_dets": int(count["Dets"]),
                    "pred_dets_removed": pred_rows - int(count["Dets"]), "frames": frames,
                    "rules": f"{BENCHMARK} pedestrian, distractors removed",
                    "evaluator": EVALUATOR})
    return summary


def format_scores(scores: dict[str, Any]) -> str:
    """The scores as a few terminal lines, naming the evaluator."""
    def share(key: str) -> str:
        return f"{100 * scores[key]:.1f}"

    return "\n".join([
        f"HOTA {share('HOTA')}  DetA {share('DetA')}  AssA {share('AssA')}  "
        f"MOTA {share('MOTA')}  MOTP {share('MOTP')}  IDF1 {share('IDF1')}",
        f"IDSW {scores['IDSW']}  FP {scores['FP']}  FN {scores['FN']}  TP {scores['TP']}  "
        f"ids {scores['pred_ids']} predicted / {scores['gt_ids']} true  frames {scores['frames']}",
        f"predictions removed on distractors: {scores['pred_dets_removed']}  "
        f"(evaluator: {scores['evaluator']}, {BENCHMARK} rules, pedestrians only)",
    ])
