"""Detection for stream processes: frames through shared memory to a detection server, and a
detection worker process with its clients."""

from __future__ import annotations

import numpy as np
import pytest
from factories import clip_frames


@pytest.mark.slow
@pytest.mark.parametrize("letterbox, atol", [("stream", 0.5), ("worker", 3.0)])
def test_remote_detector_when_frames_go_through_shared_memory_then_boxes_match_local(
        letterbox: str, atol: float):
    import itertools
    import queue
    from concurrent.futures import Future

    from vidqa.config import TrackerConfig
    from vidqa.detection.transport import DetectionServer, RemoteDetector

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

    cfg = TrackerConfig(device="cpu", letterbox=letterbox)  # worker: resized by torch, not cv2
    server = DetectionServer([cfg], requests, reply).start()
    local = server.detectors[0]
    remote = RemoteDetector(submit, 0, local.cfg, local.stride, local.info)
    try:
        for frame in clip_frames(6):
            mine, theirs = remote(frame.image), local(frame.image)
            assert len(mine) == len(theirs) > 0
            assert np.allclose(mine.data, theirs.data, atol=atol)
    finally:
        requests.put(None)
        server.join()
        remote.close()
    assert server.summary()[0]["passes"] == 12  # six frames each way, one model


@pytest.mark.slow
def test_tracker_when_frames_overlap_at_the_detection_server_then_tracks_match_one_at_a_time():
    import dataclasses
    import itertools
    import queue
    from concurrent.futures import Future

    from vidqa.config import TrackerConfig
    from vidqa.detection.transport import DetectionServer, RemoteDetector
    from vidqa.tracking import PersonTracker

    requests: queue.Queue = queue.Queue()
    futures: dict[int, Future] = {}
    ids = itertools.count()
    sent: list[int] = []  # per request, the detector it went to

    def reply(client: int, request_id: int, outcome) -> None:
        futures.pop(request_id).set_result(outcome)

    def submit(index: int, buffer: str, shape: tuple) -> Future:
        request_id = next(ids)
        futures[request_id] = Future()
        sent.append(index)
        requests.put((0, request_id, index, buffer, shape))
        return futures[request_id]

    cfg = TrackerConfig(device="cpu")
    server = DetectionServer([cfg], requests, reply).start()
    detector = server.detectors[0]
    remotes = [RemoteDetector(submit, 0, detector.cfg, detector.stride, detector.info)
               for _ in range(3)]

    def tracker(in_flight: int, remote: RemoteDetector) -> PersonTracker:
        return PersonTracker(dataclasses.replace(cfg, in_flight=in_flight), detector=remote)

    frames = clip_frames(8)
    try:
        # given: a tracker sending frames ahead, and one waiting for each frame's boxes
        early = tracker(2, remotes[0])(iter(frames))
        next(early)
        sent_before_first = len(sent)
        early.close()  # stopped with a frame still out: its buffer outlives the worker's read
        # when: both track the same frames
        ahead = [r.detections for r in tracker(2, remotes[1])(iter(frames))]
        waited = [r.detections for r in tracker(1, remotes[2])(iter(frames))]
    finally:
        requests.put(None)
        server.join()
        for remote in remotes:
            remote.close()
    # then: frame 1 went out before frame 0 was tracked, and the tracks are the same
    assert sent_before_first == 2
    assert sum(len(d) for d in waited) > 0
    for mine, theirs in zip(ahead, waited, strict=True):
        assert np.array_equal(mine.track_id, theirs.track_id)
        assert np.allclose(mine.xyxy, theirs.xyxy, atol=1e-3)


@pytest.mark.slow
def test_detection_worker_when_killed_then_restarted_and_boxes_still_match_local():
    import os
    import signal

    from vidqa.config import TrackerConfig
    from vidqa.detection.detector import Detector
    from vidqa.detection.transport import DetectionWorker, RemoteDetector

    cfg = TrackerConfig(device="cpu")
    worker = DetectionWorker([cfg], clients=2).start()
    client = worker.end(1).connect()
    (served, stride, info), = client.end.detectors
    remote = RemoteDetector(client.detect, 0, served, stride, info)
    local = Detector(cfg)
    frames = clip_frames(3)
    try:
        for frame in frames:
            mine, theirs = remote(frame.image), local(frame.image)
            assert len(mine) == len(theirs) > 0
            assert np.allclose(mine.data, theirs.data, atol=0.5)
        first = worker.pid
        os.kill(first, signal.SIGKILL)
        # The frame asked now is lost with the worker, and sent again to the next one.
        again = remote(frames[0].image)
        assert np.allclose(again.data, local(frames[0].image).data, atol=0.5)
        assert worker.restarts == 1 and worker.pid != first
    finally:
        client.close()
        remote.close()
        worker.close()
    assert worker.summary and all(d["restarts"] == 1 for d in worker.summary)
