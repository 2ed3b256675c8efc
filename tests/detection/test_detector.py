"""The shared, batched detector and its one-NMS-per-batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from factories import clip_frames


@pytest.mark.slow
def test_detector_when_streams_share_it_then_frames_batch_and_tracks_are_unchanged():
    import threading
    import time

    from vidqa.config import TrackerConfig
    from vidqa.detection.detector import Detector
    from vidqa.tracking import PersonTracker

    frames = clip_frames(12)
    cfg = TrackerConfig(device="cpu", batch=4)
    solo_tracker = PersonTracker(cfg)
    alone = [solo_tracker.update(f) for f in frames]
    detector = Detector(cfg)
    predict = detector.model.predict

    def slow_predict(*args, **kwargs):  # the real pass, slowed so that other streams queue up
        time.sleep(0.05)
        return predict(*args, **kwargs)

    detector.model.predict = slow_predict
    trackers = [PersonTracker(cfg, detector=detector) for _ in range(3)]
    shared: list[list] = [[], [], []]

    def stream(k: int) -> None:
        for frame in frames:
            shared[k].append(trackers[k].update(frame))

    threads = [threading.Thread(target=stream, args=(k,)) for k in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert max(int(size) for size in detector.summary()["batch_histogram"]) > 1
    assert sum(int(s) * n for s, n in detector.summary()["batch_histogram"].items()) == 36
    for stream_tracks in shared:
        for mine, solo in zip(stream_tracks, alone, strict=True):
            assert mine.track_id.tolist() == solo.track_id.tolist()
            assert np.allclose(mine.xyxy, solo.xyxy, atol=1.0)


@pytest.mark.parametrize("classes, agnostic", [(None, False), ([1], False), (None, True)])
def test_batched_nms_when_batch_then_each_image_gets_ultralytics_boxes(classes, agnostic):
    from ultralytics.utils.nms import non_max_suppression

    from vidqa.detection.detector import batched_nms

    generator = torch.Generator().manual_seed(0)
    images, classes_n, anchors = 4, 2, 600
    centres = torch.rand(images, 2, anchors, generator=generator) * 400
    sizes = torch.rand(images, 2, anchors, generator=generator) * 120 + 10
    scores = torch.rand(images, classes_n, anchors, generator=generator)
    scores[2] *= 0.4  # an image with no box above the threshold
    prediction = torch.cat((centres, sizes, scores), 1)
    mine = batched_nms(prediction, 0.5, 0.6, classes, agnostic, max_det=40)
    theirs = non_max_suppression(prediction, 0.5, 0.6, classes, agnostic, max_det=40)
    assert len(mine[2]) == 0 and max(len(m) for m in mine) == 40  # max_det bites
    assert [len(m) for m in mine] == [len(t) for t in theirs]
    for image, reference in zip(mine, theirs, strict=True):
        assert np.allclose(image, reference.numpy(), atol=1e-4)
