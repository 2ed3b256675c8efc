"""Track ids across tracker resets (the ultralytics tracker itself runs in the slow tests)."""

from __future__ import annotations

import numpy as np
import pytest

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
