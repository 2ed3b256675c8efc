"""The batching service on a thread, its one batch function, and the declared interface."""

from __future__ import annotations

import threading
import time

import pytest
from factories import make_crops, scripted_answers

from vidqa.messages import Crop
from vidqa.serving import BatchingService, ServiceClosed, answer_grouped
from vidqa.serving.base import Abandoned
from vidqa.serving.batch import MAX_REASONS, Failures

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


def test_service_when_a_batch_holds_a_failing_crop_then_only_that_crop_fails():
    def fails_on_track_13(crops, questions):
        if any(crop.track_id == 13 for crop in crops):
            raise RuntimeError("CUDA error: an illegal memory access " + "x" * 300)
        return scripted_answers(crops, questions)

    service = BatchingService(fails_on_track_13, batch_size=4, max_wait_ms=2000).start()
    futures = [service.submit(crop, QUESTIONS[:1]) for crop in make_crops([11, 12, 13, 14])]
    service.close()

    with pytest.raises(RuntimeError, match="illegal memory access"):
        futures[2].result(timeout=5)
    assert [futures[i].result(timeout=5)[0].track_id for i in (0, 1, 3)] == [11, 12, 14]
    summary = service.summary()
    assert summary["batch_histogram"] == {"4": 1}  # one batch, its crops asked again alone
    assert (summary["retried_crops"], summary["failed_crops"]) == (4, 1)
    (reason, count), = summary["failure_reasons"].items()
    assert reason.startswith("RuntimeError: CUDA error") and len(reason) <= 120 and count == 1


def test_service_when_a_batch_fails_once_then_every_crop_is_answered_after_the_retry():
    calls = []

    def flaky(crops, questions):
        calls.append(len(crops))
        if len(calls) == 1:
            raise RuntimeError("CUDA out of memory")
        return scripted_answers(crops, questions)

    service = BatchingService(flaky, batch_size=3, max_wait_ms=2000).start()
    futures = [service.submit(crop, QUESTIONS) for crop in make_crops([1, 2, 3])]
    service.close()

    assert [f.result(timeout=5)[0].track_id for f in futures] == [1, 2, 3]
    assert calls == [3, 1, 1, 1]
    summary = service.summary()
    assert (summary["retried_crops"], summary["failed_crops"]) == (3, 0)
    assert summary["failure_reasons"] == {}


def test_failures_when_many_distinct_reasons_then_kept_bounded():
    failures = Failures()
    for i in range(MAX_REASONS + 30):
        failures.add(ValueError(f"bad crop {i}"))

    reasons = failures.summary()["failure_reasons"]
    assert len(reasons) == MAX_REASONS + 1 and reasons["other"] == 30
    assert failures.summary()["failed_crops"] == MAX_REASONS + 30


def test_service_when_closed_abandoning_then_queued_crops_fail_at_once():
    gate, started = threading.Event(), threading.Event()

    def slow(crops, questions):  # the model busy with a batch "for 30 s"
        started.set()
        gate.wait(timeout=30)
        return scripted_answers(crops, questions)

    service = BatchingService(slow, batch_size=2, max_wait_ms=0, queue_size=8).start()
    try:
        futures = [service.submit(crop, QUESTIONS[:1]) for crop in make_crops(list(range(6)))]
        assert started.wait(timeout=5)
        began = time.monotonic()
        service.close(abandon=True)
        closed_in = time.monotonic() - began

        assert closed_in < 3
        for future in futures:
            with pytest.raises(Abandoned):
                future.result(timeout=1)
        assert service.summary()["abandoned"] == 6
        with pytest.raises(ServiceClosed):
            service.submit(make_crops([1])[0], QUESTIONS)
    finally:
        gate.set()
    time.sleep(0.2)  # the daemon thread ends its batch: the futures stay abandoned
    assert all(isinstance(f.exception(), Abandoned) for f in futures)


def test_service_when_closed_abandoning_while_a_drain_waits_then_both_return():
    gate = threading.Event()
    service = BatchingService(lambda crops, qs: scripted_answers(crops, qs, gate),
                              batch_size=1, max_wait_ms=0).start()
    futures = [service.submit(crop, QUESTIONS[:1]) for crop in make_crops([1, 2, 3])]
    draining = threading.Thread(target=service.close)
    draining.start()
    try:
        time.sleep(0.2)
        service.close(abandon=True)
        draining.join(timeout=3)

        assert not draining.is_alive()
        assert all(isinstance(f.exception(timeout=1), Abandoned) for f in futures)
    finally:
        gate.set()


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

    assert sorted(calls) == sorted([(2, QUESTIONS), (1, ("boom",)), (1, ("boom",)),
                                    (1, QUESTIONS[:1])])  # the failed group asked again
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


def test_ray_client_when_closed_abandoning_then_crops_still_out_fail_at_once():
    import asyncio

    from vidqa.serving.ray_client import RayClient

    class SlowHandle:  # a deployment busy for 30 s
        class answer:  # noqa: N801 - the shape of a Ray Serve handle
            @staticmethod
            async def remote(request):
                await asyncio.sleep(30)
                return []

    client = RayClient(SlowHandle(), max_in_flight=4)
    futures = [client.submit(crop, QUESTIONS[:1]) for crop in make_crops([1, 2])]

    client.close(abandon=True)

    assert all(isinstance(f.exception(timeout=1), Abandoned) for f in futures)
    assert client.waiting == 0
