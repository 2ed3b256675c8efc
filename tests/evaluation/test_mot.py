from pathlib import Path

import numpy as np
import pytest

from vidqa.errors import SourceError
from vidqa.evaluation.mot import read_mot
from vidqa.messages import Detections
from vidqa.sinks.mot import mot_rows


def detections(xyxy, track_ids, confidence=None) -> Detections:
    n = len(xyxy)
    return Detections(xyxy=np.asarray(xyxy, np.float32).reshape(n, 4),
                      confidence=np.asarray(confidence or [0.9] * n, np.float32),
                      class_id=np.zeros(n, np.int64), track_id=np.asarray(track_ids, np.int64))


def test_mot_rows_when_tracked_boxes_then_one_based_frame_and_width_height():
    rows = mot_rows(0, detections([[10, 20, 40, 120], [100.5, 5, 110.5, 25]], [3, 7]))

    assert rows == ["1,3,10.00,20.00,30.00,100.00,0.9000,-1,-1,-1",
                    "1,7,100.50,5.00,10.00,20.00,0.9000,-1,-1,-1"]


def test_mot_rows_when_untracked_or_empty_then_left_out():
    assert mot_rows(4, detections([[0, 0, 10, 10]], [-1])) == []
    assert mot_rows(4, Detections.empty()) == []


def test_read_mot_when_written_by_mot_rows_then_round_trips(tmp_path: Path):
    path = tmp_path / "mot.txt"
    lines = mot_rows(0, detections([[10, 20, 40, 120]], [3])) + mot_rows(
        1, detections([[12, 20, 42, 120]], [3]))
    path.write_text("\n".join(lines) + "\n")

    rows = read_mot(path)

    np.testing.assert_allclose(rows[:, :7], [[1, 3, 10, 20, 30, 100, 0.9],
                                             [2, 3, 12, 20, 30, 100, 0.9]], rtol=1e-6)


def test_read_mot_when_empty_file_then_no_rows(tmp_path: Path):
    (tmp_path / "mot.txt").write_text("\n")

    assert read_mot(tmp_path / "mot.txt").shape == (0, 7)


@pytest.mark.parametrize("text, message", [
    ("1,1,0,0,5,5,1,-1,-1,-1\n1,2,0,0,x,5,1,-1,-1,-1\n", "line 2: expected comma-separated"),
    ("1,1,0,0,5,5\n", "line 1: expected at least 7 columns, got 6"),
    ("1,1,0,0,5,5,1,-1,-1,-1\n\n2,1,0,0,5,5,1\n", "line 3: 7 columns, but the first line has 10"),
    ("0,1,0,0,5,5,1,-1,-1,-1\n", "line 1: frame must be an integer >= 1"),
    ("1.5,1,0,0,5,5,1,-1,-1,-1\n", "frame 1.5"),
    ("1,-1,0,0,5,5,1,-1,-1,-1\n", "det.txt"),
    ("1,1,0,0,-5,5,1,-1,-1,-1\n", "line 1: width and height must be >= 0"),
    ("1,1,0,0,5,nan,1,-1,-1,-1\n", "nan or inf"),
    ("1,4,0,0,5,5,1,-1,-1,-1\n2,4,0,0,5,5,1,-1,-1,-1\n2,4,9,9,5,5,1,-1,-1,-1\n",
     "line 3: frame 2 has id 4 twice (also line 2)"),
])
def test_read_mot_when_malformed_then_error_names_the_line(tmp_path: Path, text, message):
    path = tmp_path / "pred.txt"
    path.write_text(text)

    with pytest.raises(SourceError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_mot(path)


def test_read_mot_when_missing_then_source_error(tmp_path: Path):
    with pytest.raises(SourceError, match="not found"):
        read_mot(tmp_path / "nope.txt")
