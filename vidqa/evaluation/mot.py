"""The MOTChallenge text format: reading prediction and ground-truth files (the rows are written
by :mod:`vidqa.sinks.mot`).

One line per box: ``frame,id,bb_left,bb_top,width,height,conf,x,y,z`` with 1-based frames.
Predictions fill the last three columns with -1; a MOT16/17 ``gt.txt`` has nine columns instead:
``frame,id,left,top,width,height,consider,class,visibility``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from vidqa.errors import SourceError

PREDICTION_COLUMNS = 10  # frame, id, left, top, width, height, conf, -1, -1, -1
GT_COLUMNS = 9  # frame, id, left, top, width, height, consider, class, visibility


def read_mot(path: Path, min_columns: int = 7) -> np.ndarray:
    """Rows of a MOTChallenge file as a float64 ``(N, C)`` array (``(0, min_columns)`` if empty).

    Checks every line: the same number of comma-separated numbers (at least ``min_columns``),
    an integer frame >= 1, an integer id >= 0, a non-negative width and height, and no id twice in
    one frame. A problem raises :class:`SourceError` naming the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise SourceError(f"MOT file {path} not found: expected a text file of lines "
                          f"'frame,id,left,top,width,height,...'; check the path")
    rows: list[list[float]] = []
    numbers: list[int] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            rows.append(_parse_line(path, number, line, min_columns, rows[0] if rows else None))
            numbers.append(number)
    if not rows:
        return np.zeros((0, min_columns), np.float64)
    array = np.asarray(rows, np.float64)
    _check_unique_ids(path, array, numbers)
    return array


def _parse_line(path: Path, number: int, line: str, min_columns: int,
                first: list[float] | None) -> list[float]:
    where = f"{path} line {number}"
    try:
        values = [float(field) for field in line.split(",")]
    except ValueError:
        raise SourceError(f"{where}: expected comma-separated numbers "
                          f"'frame,id,left,top,width,height,...', got {line.strip()!r}") from None
    if len(values) < min_columns:
        raise SourceError(f"{where}: expected at least {min_columns} columns, got {len(values)} "
                          f"in {line.strip()!r}")
    if first is not None and len(values) != len(first):
        raise SourceError(f"{where}: {len(values)} columns, but the first line has {len(first)}; "
                          f"every line of a MOT file has the same columns")
    if not all(math.isfinite(v) for v in values):
        raise SourceError(f"{where}: nan or inf in {line.strip()!r}")
    frame, track, _, _, width, height = values[:6]
    if frame != int(frame) or frame < 1 or track != int(track) or track < 0:
        raise SourceError(f"{where}: frame must be an integer >= 1 (MOT frames are 1-based) and "
                          f"id an integer >= 0, got frame {frame:g}, id {track:g}"
                          + (" (id -1 marks a detection file such as det.txt, not tracks)"
                             if track == -1 else ""))
    if width < 0 or height < 0:
        raise SourceError(f"{where}: width and height must be >= 0, got {width:g} x {height:g}; "
                          f"the columns are left,top,width,height, not x1,y1,x2,y2")
    return values


def _check_unique_ids(path: Path, array: np.ndarray, numbers: list[int]) -> None:
    keys = array[:, 0] * (1 << 32) + array[:, 1]  # (N,) one key per (frame, id)
    _, first, counts = np.unique(keys, return_index=True, return_counts=True)
    if np.any(counts > 1):
        row = int(first[np.argmax(counts > 1)])
        again = int(np.flatnonzero(keys == keys[row])[1])
        raise SourceError(f"{path} line {numbers[again]}: frame {array[row, 0]:g} has id "
                          f"{array[row, 1]:g} twice (also line {numbers[row]}); an id is one "
                          f"box per frame")
