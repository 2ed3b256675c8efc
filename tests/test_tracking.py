"""Track ids across tracker resets; detection split from ultralytics' trackers and batched across
streams (the real detector: slow tests)."""

from __future__ import annotations

import numpy as np
import pytest
from factories import clip_frames

from vidqa.tracking import TrackIds


@pytest.mark.parametrize("steps, expected", [
    # (ids from ultralytics, or "reset") -> ids vidqa hands out
    ([[1, 2], [2, 3]], [[1, 2], [2, 3]]),
    ([[1, 2], "reset", [1]], [[1, 2], [3]]),
    ([[1, 5], "reset", [], "reset", [1, 2]], [[1, 5], [], [6, 7]]),
    ([[3], "reset", [1], "reset", [1]], [[3], [4], [5]]),
    (["reset", [1, 2]], [[1, 2]]),
])
def test_track_ids_when_tracker_resets_then_new_ids_never_repeat_old_ones(steps, expected):
    ids = TrackIds()
    got = []
    for step in steps:
        if step == "reset":
            ids.restart()
        else:
            got.append(ids(np.asarray(step, np.int64)).tolist())

    assert got == expected


@pytest.mark.slow
def test_tracker_when_detect_and_track_are_split_then_ids_match_ultralytics_track():
    from vidqa.config import TrackerConfig
    from vidqa.tracking import PersonTracker

    frames = clip_frames(30)
    tracker = PersonTracker(TrackerConfig(device="cpu"))
    ours = [tracker.update(frame) for frame in frames]
    model = tracker.detector.model
    theirs = [model.track(f.image, persist=True, tracker="bytetrack.yaml", conf=0.25, iou=0.7,
                          imgsz=640, classes=tracker.detector.classes, verbose=False)[0].boxes
              for f in frames]

    assert sum(len(d.track_id) for d in ours) > 30
    for mine, boxes in zip(ours, theirs, strict=True):
        ids = boxes.id.numpy().astype(np.int64) if boxes.id is not None else np.zeros(0, np.int64)
        assert mine.track_id.tolist() == ids.tolist()
        assert np.allclose(mine.xyxy, boxes.xyxy.numpy(), atol=1.0)


@pytest.mark.parametrize("yaml_text, message", [
    ("tracker_type: ocsort\n", "vidqa runs bytetrack and botsort"),
    ("tracker_type: botsort\nwith_reid: true\nmodel: auto\n", "with_reid needs a ReID model"),
])
def test_tracker_yaml_when_unsupported_then_config_error_says_what_works(tmp_path, yaml_text,
                                                                          message):
    from vidqa.errors import ConfigError
    from vidqa.tracking import _ultralytics_tracker

    path = tmp_path / "custom.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError, match=message):
        _ultralytics_tracker(str(path))
