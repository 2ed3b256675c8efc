"""The multi-stream VLM service and the stream-side stage that talks to it."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from factories import detections, make_rois

from vidqa.config import load_config
from vidqa.messages import Answer, FrameResult, Roi, VideoFrame
from vidqa.vlm.service import ServiceClosed, VlmService
from vidqa.vlm.stage import ServiceStage, VlmStage

QUESTIONS = ("Is this person carrying a backpack?", "Is this person running?")


def scripted_answers(rois, questions, gate: threading.Event | None = None):
    """Per ROI one answer per question, "yes" for even tracks (no model needed)."""
    if gate is not None:
        gate.wait(timeout=10)
    return [[Answer(frame_index=r.frame_index, time_s=r.time_s, track_id=r.track_id,
                    question=q, answer="yes" if r.track_id % 2 == 0 else "no", p_yes=0.5,
                    margin=0.0, bbox=r.bbox, vlm_ms=1.0, model="scripted",
                    stream_id=r.stream_id) for q in questions] for r in rois]


def stream_rois(stream_id: str, track_ids: list[int]) -> list[Roi]:
    return [Roi(**{**roi.__dict__, "stream_id": stream_id}) for roi in make_rois(track_ids)]


def test_service_when_streams_submit_together_then_batched_across_them():
    gate = threading.Event()
    service = VlmService(lambda rois, qs: scripted_answers(rois, qs, gate), batch_size=8,
                         max_wait_ms=2000, queue_size=32).start()
    futures = [service.submit(roi, QUESTIONS) for roi in
               stream_rois("a", [1, 2, 3]) + stream_rois("b", [1, 2, 3, 4, 5])]
    gate.set()
    service.close()

    results = [future.result(timeout=5) for future in futures]
    assert [[a.question for a in answers] for answers in results] == [list(QUESTIONS)] * 8
    assert [answers[0].stream_id for answers in results] == ["a"] * 3 + ["b"] * 5
    assert all(a.queue_ms is not None and a.queue_ms >= 0 for r in results for a in r)
    summary = service.summary()
    assert summary["rois"] == 8 and summary["batch_histogram"] == {"8": 1}


def test_service_when_queue_full_then_nonblocking_submit_returns_none():
    gate = threading.Event()
    service = VlmService(lambda rois, qs: scripted_answers(rois, qs, gate), batch_size=1,
                         max_wait_ms=0, queue_size=2).start()
    rois = make_rois(list(range(6)))
    accepted = [service.submit(roi, QUESTIONS[:1], block=False) for roi in rois]
    gate.set()
    service.close()

    assert accepted.count(None) >= 1  # one with the worker, two queued: the rest refused
    assert service.summary()["refused_when_full"] == accepted.count(None)
    assert all(f.result(timeout=5) for f in accepted if f is not None)


def test_service_when_a_batch_raises_then_its_callers_fail_and_later_batches_succeed():
    calls = []

    def flaky(rois, questions):
        calls.append(len(rois))
        if len(calls) == 1:
            raise RuntimeError("CUDA error")
        return scripted_answers(rois, questions)

    service = VlmService(flaky, batch_size=1, max_wait_ms=0).start()
    first = service.submit(make_rois([1])[0], QUESTIONS[:1])
    with pytest.raises(RuntimeError, match="CUDA error"):
        first.result(timeout=5)
    second = service.submit(make_rois([2])[0], QUESTIONS[:1])

    assert second.result(timeout=5)[0].track_id == 2
    service.close()


def test_service_when_closed_then_submit_raises():
    service = VlmService(scripted_answers).start()
    service.close()

    with pytest.raises(ServiceClosed, match="closed"):
        service.submit(make_rois([1])[0], QUESTIONS)


def frame_result(index: int, rois: list[Roi], ended: tuple[int, ...] = ()) -> FrameResult:
    frame = VideoFrame(image=np.zeros((40, 40, 3), np.uint8), frame_index=index,
                       timestamp=index / 10, source_id="t", fps=10.0)
    boxes = [(0, 0, 10, 20)] * len(rois)
    return FrameResult(frame=frame, detections=detections(boxes, [r.track_id for r in rois]),
                       rois=tuple(rois), ended_tracks=ended)


def test_service_stage_when_file_then_every_answer_arrives_and_is_stamped(tiny_vlm):
    cfg = load_config(None, ["vlm.batch_size=4", "vlm.adaptive.enabled=false",
                             f"vlm.questions={list(QUESTIONS)}"])
    stage = VlmStage(tiny_vlm, cfg.vlm)
    with VlmService(stage.answer, batch_size=4, max_wait_ms=5) as service:
        asking = ServiceStage(service, QUESTIONS, live=False)
        results = list(asking(frame_result(i, make_rois([i], frame=i)) for i in range(6)))
        late = asking.flush(timeout_s=30)

    answers = [a for r in results for a in r.answers] + late
    assert sorted(a.track_id for a in answers) == sorted(list(range(6)) * 2)
    assert all(a.answered_frame_index >= a.frame_index for a in answers)
    assert all(a.latency_ms >= a.queue_ms >= 0 for a in answers)
    summary = asking.summary()
    assert summary["submitted"] == summary["answered"] == 6 and summary["in_flight"] == 0


def test_service_stage_when_live_and_queue_full_then_newest_crop_waits_and_ended_is_deferred():
    gate = threading.Event()
    service = VlmService(lambda rois, qs: scripted_answers(rois, qs, gate), batch_size=1,
                         max_wait_ms=0, queue_size=1).start()
    asking = ServiceStage(service, QUESTIONS[:1], live=True)
    asking.update(frame_result(0, make_rois([1, 2])))  # 1 with the worker; 2 queued
    asking.update(frame_result(1, make_rois([3], frame=1)))  # full: 3 waits
    asking.update(frame_result(2, make_rois([3], frame=2)))  # the newer crop of 3 replaces it
    asking.update(frame_result(3, make_rois([4], frame=3)))  # 4 waits too ...
    asking.update(frame_result(4, [], ended=(4,)))  # ... and its track ends first

    assert asking.waiting[3].frame_index == 2
    gate.set()
    service.close()
    summary = asking.summary()
    assert summary["queue_full_waits"] >= 3 and summary["deferred_tracks"] == 1
