"""The pipeline stage that submits a stream's crops and attaches the answers."""

from __future__ import annotations

import threading
import time

import numpy as np
from factories import detections, make_crops, scripted_answers

from vidqa.config import load_config
from vidqa.messages import Crop, FrameResult, VideoFrame
from vidqa.serving import AnswerStage, BatchingService
from vidqa.vlm.batch import BatchAnswerer

QUESTIONS = ("Is this person carrying a backpack?", "Is this person running?")


def frame_result(index: int, crops: list[Crop], ended: tuple[int, ...] = ()) -> FrameResult:
    frame = VideoFrame(image=np.zeros((40, 40, 3), np.uint8), frame_index=index,
                       timestamp=index / 10, source_id="t", fps=10.0)
    boxes = [(0, 0, 10, 20)] * len(crops)
    return FrameResult(frame=frame, detections=detections(boxes, [r.track_id for r in crops]),
                       crops=tuple(crops), ended_tracks=ended)


def test_service_stage_when_file_then_every_answer_arrives_and_is_stamped(tiny_vlm):
    cfg = load_config(None, ["vlm.batch_size=4", "vlm.adaptive.enabled=false",
                             f"vlm.questions={list(QUESTIONS)}"])
    stage = BatchAnswerer(tiny_vlm, cfg.vlm)
    with BatchingService(stage.answer, batch_size=4, max_wait_ms=5) as service:
        asking = AnswerStage(service, QUESTIONS, live=False)
        results = list(asking(frame_result(i, make_crops([i], frame=i)) for i in range(6)))
        late = asking.flush(timeout_s=30)

    answers = [a for r in results for a in r.answers] + late
    assert sorted(a.track_id for a in answers) == sorted(list(range(6)) * 2)
    assert all(a.answered_frame_index >= a.frame_index for a in answers)
    assert all(a.latency_ms >= a.queue_ms >= 0 for a in answers)
    summary = asking.summary()
    assert summary["submitted"] == summary["answered"] == 6 and summary["in_flight"] == 0


def test_service_stage_when_live_and_queue_full_then_newest_crop_waits_and_ended_is_deferred():
    gate = threading.Event()
    service = BatchingService(lambda crops, qs: scripted_answers(crops, qs, gate), batch_size=1,
                         max_wait_ms=0, queue_size=1).start()
    asking = AnswerStage(service, QUESTIONS[:1], live=True)
    asking.update(frame_result(0, make_crops([1])))
    while service.waiting:  # 1 taken into a batch (held there by the gate) ...
        time.sleep(0.01)
    asking.update(frame_result(0, make_crops([2])))  # ... so 2 fits in the queue
    asking.update(frame_result(1, make_crops([3], frame=1)))  # full: 3 waits
    asking.update(frame_result(2, make_crops([3], frame=2)))  # the newer crop of 3 replaces it
    asking.update(frame_result(3, make_crops([4], frame=3)))  # 4 waits too ...
    asking.update(frame_result(4, [], ended=(4,)))  # ... and its track ends first

    assert asking.waiting[3].frame_index == 2
    gate.set()
    service.close()
    summary = asking.summary()
    assert summary["queue_full_waits"] >= 3 and summary["deferred_tracks"] == 1


def test_answer_stage_when_a_crop_fails_then_it_is_counted_with_its_reason_and_frames_go_on():
    def answer(crops, questions):
        if any(crop.track_id == 2 for crop in crops):
            raise ValueError("crop 2 is cursed")
        return scripted_answers(crops, questions)

    with BatchingService(answer, batch_size=4, max_wait_ms=5) as service:
        asking = AnswerStage(service, QUESTIONS[:1], live=False)
        results = list(asking(frame_result(i, make_crops([i], frame=i)) for i in range(4)))
        late = asking.flush(timeout_s=30)

    answered = {a.track_id for r in results for a in r.answers} | {a.track_id for a in late}
    summary = asking.summary()
    assert answered == {0, 1, 3} and len(results) == 4
    assert summary["failed"] == 1 and summary["answered"] == 3
    assert summary["failure_reasons"] == {"ValueError: crop 2 is cursed": 1}
    assert 2 not in asking.pending  # no longer drawn as "asking..."


def test_answer_stage_when_abandoned_then_what_is_in_flight_is_counted_and_never_attached():
    gate = threading.Event()
    service = BatchingService(lambda crops, qs: scripted_answers(crops, qs, gate), batch_size=1,
                              max_wait_ms=0, queue_size=8).start()
    asking = AnswerStage(service, QUESTIONS[:1], live=False)
    asking.update(frame_result(0, make_crops([1, 2, 3])))

    late = asking.flush(timeout_s=0.2)  # the grace runs out: none has arrived
    abandoned = asking.abandon()
    gate.set()  # the model finishes them now, too late
    service.close()
    after = asking.update(frame_result(1, make_crops([4], frame=1)))

    assert late == [] and abandoned == 3 and after.answers == ()
    summary = asking.summary()
    assert summary["abandoned"] == 3 and summary["submitted"] == 3  # nothing asked after it
