import numpy as np
import pytest
from factories import detections

from vidqa.config import RoiConfig
from vidqa.messages import Detections, FrameResult, VideoFrame
from vidqa.roi import RoiPolicy, clip_box, pad_box


def frame_result(index: int, boxes, track_ids, size=(200, 100)) -> FrameResult:
    width, height = size
    image = np.zeros((height, width, 3), np.uint8)
    frame = VideoFrame(image=image, frame_index=index, timestamp=index / 10, source_id="t",
                       fps=10.0)
    dets = detections(boxes, track_ids) if boxes else Detections.empty()
    return FrameResult(frame=frame, detections=dets)


@pytest.mark.parametrize("box, expected", [
    ((10.2, 20.7, 50.5, 90.1), (10, 20, 51, 91)),
    ((-30, -10, 50, 60), (0, 0, 50, 60)),  # partly outside
    ((180, 80, 260, 140), (180, 80, 200, 100)),  # over the right/bottom edge
    ((250, 120, 300, 150), (200, 100, 200, 100)),  # wholly outside: empty
    ((5, 5, 5.4, 5.4), (5, 5, 6, 6)),  # sub-pixel box becomes 1 pixel
])
def test_clip_box_when_box_crosses_frame_then_clipped(box, expected):
    assert clip_box(np.asarray(box, np.float32), 200, 100) == expected


@pytest.mark.parametrize("box, padding, expected", [
    ((10, 10, 30, 50), 0.0, (10, 10, 30, 50)),
    ((10, 10, 30, 50), 0.1, (8, 6, 32, 54)),
    ((0, 0, 200, 100), 0.5, (0, 0, 200, 100)),  # clipped at the frame
])
def test_pad_box_when_padded_then_grows_and_clips(box, padding, expected):
    assert pad_box(box, padding, 200, 100) == expected


def run_policy(cfg: RoiConfig, frames) -> list[FrameResult]:
    policy = RoiPolicy(cfg)
    return [policy.update(frame_result(i, *boxes)) for i, boxes in enumerate(frames)]


BIG = (10, 10, 50, 90)
SMALL = (10, 10, 15, 20)


@pytest.mark.parametrize("cfg, frames, asked", [
    # asked once, on the frame the track is confirmed (3rd hit)
    (RoiConfig(min_hits=3), [([BIG], [1])] * 6, [(2, 1, "new")]),
    (RoiConfig(min_hits=1), [([BIG], [1])] * 3, [(0, 1, "new")]),
    # too small: never asked; becomes big: asked then
    (RoiConfig(min_hits=1), [([SMALL], [1])] * 3, []),
    (RoiConfig(min_hits=1), [([SMALL], [1]), ([BIG], [1])], [(1, 1, "new")]),
    # periodic re-ask
    (RoiConfig(min_hits=1, reask_every=2), [([BIG], [1])] * 5,
     [(0, 1, "new"), (2, 1, "periodic"), (4, 1, "periodic")]),
    # re-ask when clearly larger
    (RoiConfig(min_hits=1, min_width=1, min_height=1, reask_growth=2.0),
     [([(0, 0, 10, 10)], [1]), ([(0, 0, 12, 12)], [1]), ([(0, 0, 20, 20)], [1])],
     [(0, 1, "new"), (2, 1, "larger")]),
    # two tracks in one frame are both asked
    (RoiConfig(min_hits=1), [([BIG, (100, 10, 140, 90)], [1, 2])], [(0, 1, "new"), (0, 2, "new")]),
    # frames with no people ask nothing
    (RoiConfig(min_hits=1), [([], [])] * 3, []),
])
def test_query_policy_when_tracks_seen_then_asks_per_policy(cfg, frames, asked):
    results = run_policy(cfg, frames)

    got = [(r.frame.frame_index, crop.track_id, crop.reason) for r in results for crop in r.crops]
    assert got == asked


def test_query_policy_when_crop_cropped_then_image_matches_padded_box():
    result = run_policy(RoiConfig(min_hits=1, padding=0.1), [([BIG], [1])])[0]

    crop = result.crops[0]
    x1, y1, x2, y2 = crop.crop_box
    assert crop.bbox == BIG
    assert crop.image.shape == (y2 - y1, x2 - x1, 3)


def test_query_policy_when_track_unseen_for_max_age_then_evicted_and_reported():
    frames = [([BIG], [1])] + [([], [])] * 4
    policy = RoiPolicy(RoiConfig(min_hits=1, max_age=3))

    ended = [policy.update(frame_result(i, *f)).ended_tracks for i, f in enumerate(frames)]

    assert ended == [(), (), (), (1,), ()]
    assert policy.tracks == {}


def test_query_policy_when_many_short_tracks_then_state_stays_bounded():
    policy = RoiPolicy(RoiConfig(min_hits=1, max_age=5))
    for i in range(2000):  # a new person every frame, each seen once
        policy.update(frame_result(i, [BIG], [i]))

    assert len(policy.tracks) <= 5
    assert policy.tracks_seen == 2000
