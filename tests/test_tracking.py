"""Track ids across tracker resets; detection split from ultralytics' trackers and batched across
streams (the real detector: slow tests)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

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


def clip_frames(count: int) -> list:
    import cv2

    from vidqa import assets
    from vidqa.messages import VideoFrame

    capture, frames = cv2.VideoCapture(str(assets.sample_video())), []
    for index in range(count):
        ok, image = capture.read()
        assert ok
        frames.append(VideoFrame(image=image, frame_index=index, timestamp=index / 10,
                                 source_id="clip", fps=10.0))
    return frames


@pytest.mark.slow
def test_tracker_when_detect_and_track_are_split_then_ids_match_ultralytics_track():
    from vidqa.config import TrackerConfig
    from vidqa.tracking import PersonTracker

    frames = clip_frames(30)
    tracker = PersonTracker(TrackerConfig(device="cpu"))
    ours = [tracker.update(frame) for frame in frames]
    model = tracker.detect.model
    theirs = [model.track(f.image, persist=True, tracker="bytetrack.yaml", conf=0.25, iou=0.7,
                          imgsz=640, classes=tracker.detect.classes, verbose=False)[0].boxes
              for f in frames]

    assert sum(len(d.track_id) for d in ours) > 30
    for mine, boxes in zip(ours, theirs, strict=True):
        ids = boxes.id.numpy().astype(np.int64) if boxes.id is not None else np.zeros(0, np.int64)
        assert mine.track_id.tolist() == ids.tolist()
        assert np.allclose(mine.xyxy, boxes.xyxy.numpy(), atol=1.0)


@pytest.mark.slow
def test_detector_when_streams_share_it_then_frames_batch_and_tracks_are_unchanged():
    import threading
    import time

    from vidqa.config import TrackerConfig
    from vidqa.tracking import Detector, PersonTracker

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


@pytest.mark.parametrize("classes, agnostic", [(None, False), ([1], False), (None, True)])
def test_batched_nms_when_batch_then_each_image_gets_ultralytics_boxes(classes, agnostic):
    from ultralytics.utils.nms import non_max_suppression

    from vidqa.tracking import batched_nms

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


@pytest.mark.slow
def test_remote_detector_when_frames_go_through_shared_memory_then_boxes_match_local():
    import itertools
    import queue
    from concurrent.futures import Future

    from vidqa.config import TrackerConfig
    from vidqa.tracking import DetectionServer, RemoteDetector

    requests: queue.Queue = queue.Queue()
    futures: dict[int, Future] = {}
    ids = itertools.count()

    def reply(client: int, request_id: int, outcome) -> None:
        futures.pop(request_id).set_result(outcome)

    def submit(index: int, buffer: str, shape: tuple) -> Future:
        request_id = next(ids)
        futures[request_id] = Future()
        requests.put((0, request_id, index, buffer, shape))
        return futures[request_id]

    server = DetectionServer([TrackerConfig(device="cpu")], requests, reply).start()
    local = server.detectors[0]
    remote = RemoteDetector(submit, 0, local.cfg, local.stride, local.info)
    try:
        for frame in clip_frames(6):
            mine, theirs = remote(frame.image), local(frame.image)
            assert len(mine) == len(theirs) > 0
            assert np.allclose(mine.data, theirs.data, atol=0.5)
    finally:
        requests.put(None)
        server.join()
        remote.close()
    assert server.summary()[0]["passes"] == 12  # six frames each way, one model
