"""The batching service on a thread, its one batch function, and the declared interface."""

from __future__ import annotations

import threading

import pytest
from factories import make_crops, scripted_answers

from vidqa.messages import Crop
from vidqa.serving import BatchingService, ServiceClosed, answer_grouped

QUESTIONS = ("Is this person carrying a backpack?", "Is this person running?")


def stream_crops(stream_id: str, track_ids: list[int]) -> list[Crop]:
    return [Crop(**{**crop.__dict__, "stream_id": stream_id}) for crop in make_crops(track_ids)]


def test_service_when_streams_submit_together_then_batched_across_them():
    gate = threading.Event()
    service = BatchingService(lambda crops, qs: scripted_answers(crops, qs, gate), batch_size=8,
                         max_wait_ms=2000, queue_size=32).start()
    futures = [service.submit(crop, QUESTIONS) for crop in
               stream_crops("a", [1, 2, 3]) + stream_crops("b", [1, 2, 3, 4, 5])]
    gate.set()
    service.close()

    results = [future.result(timeout=5) for future in futures]
    assert [[a.question for a in answers] for answers in results] == [list(QUESTIONS)] * 8
    assert [answers[0].stream_id for answers in results] == ["a"] * 3 + ["b"] * 5
    assert all(a.queue_ms is not None and a.queue_ms >= 0 for r in results for a in r)
    summary = service.summary()
    assert summary["crops"] == 8 and summary["batch_histogram"] == {"8": 1}


def test_service_when_queue_full_then_nonblocking_submit_returns_none():
    gate = threading.Event()
    service = BatchingService(lambda crops, qs: scripted_answers(crops, qs, gate), batch_size=1,
                         max_wait_ms=0, queue_size=2).start()
    crops = make_crops(list(range(6)))
    accepted = [service.submit(crop, QUESTIONS[:1], block=False) for crop in crops]
    gate.set()
    service.close()

    assert accepted.count(None) >= 1  # one with the worker, two queued: the rest refused
    assert service.summary()["refused_when_full"] == accepted.count(None)
    assert all(f.result(timeout=5) for f in accepted if f is not None)


def test_service_when_a_batch_raises_then_its_callers_fail_and_later_batches_succeed():
    calls = []

    def flaky(crops, questions):
        calls.append(len(crops))
        if len(calls) == 1:
            raise RuntimeError("CUDA error")
        return scripted_answers(crops, questions)

    service = BatchingService(flaky, batch_size=1, max_wait_ms=0).start()
    first = service.submit(make_crops([1])[0], QUESTIONS[:1])
    with pytest.raises(RuntimeError, match="CUDA error"):
        first.result(timeout=5)
    second = service.submit(make_crops([2])[0], QUESTIONS[:1])

    assert second.result(timeout=5)[0].track_id == 2
    service.close()


def test_service_when_closed_then_submit_raises():
    service = BatchingService(scripted_answers).start()
    service.close()

    with pytest.raises(ServiceClosed, match="closed"):
        service.submit(make_crops([1])[0], QUESTIONS)


def test_answer_grouped_when_crops_ask_different_questions_then_one_call_per_group():
    calls = []

    def answer(crops, questions):
        calls.append((len(crops), tuple(questions)))
        if "boom" in questions:
            raise RuntimeError("bad group")
        return scripted_answers(crops, questions)

    crops = make_crops([1, 2, 3, 4])
    asked = [QUESTIONS, ("boom",), QUESTIONS, QUESTIONS[:1]]

    results = answer_grouped(answer, crops, asked)

    assert sorted(calls) == sorted([(2, QUESTIONS), (1, ("boom",)), (1, QUESTIONS[:1])])
    assert isinstance(results[1], RuntimeError)
    assert [[a.question for a in r] for r in (results[0], results[2], results[3])] == \
        [list(QUESTIONS), list(QUESTIONS), [QUESTIONS[0]]]
    assert [r[0].track_id for r in (results[0], results[2], results[3])] == [1, 3, 4]


def test_services_when_checked_then_each_has_the_declared_interface():
    from vidqa.serving.ray_client import RayClient
    from vidqa.serving.worker import WorkerClient, WorkerService

    for service in (BatchingService, WorkerService, WorkerClient, RayClient):
        assert all(callable(getattr(service, name, None))
                   for name in ("submit", "expect", "close", "summary")), service
        assert isinstance(getattr(service, "waiting", None), property), service
