"""The frozen messages refuse malformed arrays with a message naming what was expected."""

from __future__ import annotations

import numpy as np
import pytest

from vidqa.messages import Answer, Detections, VideoFrame


@pytest.mark.parametrize("image, message", [
    (np.zeros((4, 4), np.uint8), r"\(H, W, 3\) uint8 BGR, got shape \(4, 4\)"),
    (np.zeros((4, 4, 4), np.uint8), r"got shape \(4, 4, 4\)"),
    (np.zeros((4, 4, 3), np.float32), "dtype float32"),
])
def test_video_frame_when_image_malformed_then_error_says_expected_and_received(image, message):
    with pytest.raises(ValueError, match=message):
        VideoFrame(image=image, frame_index=0, timestamp=0.0, source_id="t", fps=10.0)


def test_video_frame_when_valid_then_size_is_width_height():
    frame = VideoFrame(image=np.zeros((4, 6, 3), np.uint8), frame_index=0, timestamp=0.0,
                       source_id="t", fps=10.0)

    assert frame.size == (6, 4)


def _arrays(rows: int) -> dict[str, np.ndarray]:
    return {"xyxy": np.zeros((rows, 4), np.float32), "confidence": np.zeros(rows, np.float32),
            "class_id": np.zeros(rows, np.int64), "track_id": np.zeros(rows, np.int64)}


@pytest.mark.parametrize("field, value, message", [
    ("xyxy", np.zeros((2, 3), np.float32),
     r"Detections.xyxy must have shape \(2, 4\), got \(2, 3\)"),
    ("confidence", np.zeros(3, np.float32), r"Detections.confidence must have shape \(2,\)"),
    ("class_id", np.zeros((2, 1), np.int64), r"Detections.class_id must have shape \(2,\)"),
    ("track_id", np.zeros(1, np.int64), r"Detections.track_id must have shape \(2,\), got \(1,\)"),
])
def test_detections_when_arrays_disagree_then_error_names_the_field(field, value, message):
    arrays = {**_arrays(2), field: value}

    with pytest.raises(ValueError, match=message):
        Detections(**arrays)


def test_detections_when_empty_then_zero_rows_of_every_array():
    empty = Detections.empty()

    assert len(empty) == 0 and empty.xyxy.shape == (0, 4)


def test_answer_when_event_then_frame_key_and_extras_merged():
    answer = Answer(frame_index=12, time_s=1.23456, track_id=3, question="q?", answer="yes",
                    p_yes=0.812345, margin=1.46789, bbox=(1, 2, 3, 4), vlm_ms=10.123,
                    model="m", extra={"phase": "audit"})

    event = answer.to_event()

    assert (event["frame"], event["time_s"], event["p_yes"], event["phase"]) == \
        (12, 1.2346, 0.81234, "audit")
