"""The VLM service with its model in a worker process answers like the in-process one."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import psutil
import pytest
from factories import make_crops

from vidqa.assets import resolve_vlm
from vidqa.config import load_config
from vidqa.engines import run_pipeline
from vidqa.errors import ModelError
from vidqa.run import prepare_run_dir
from vidqa.serving import ServiceClosed
from vidqa.serving.base import Abandoned
from vidqa.serving.worker import CPU_NICENESS, WorkerService

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # spawning imports torch again


def test_process_service_when_crops_submitted_then_each_future_has_its_answers(tiny_vlm_dir):
    cfg = load_config(None, [f"vlm.model={tiny_vlm_dir}", "vlm.adaptive.enabled=false",
                             "vlm.batch_size=4"]).vlm
    question = cfg.questions[0].question
    with WorkerService(cfg, resolve_vlm(cfg.model)) as service:
        futures = [service.submit(crop, [question]) for crop in make_crops([3, 4, 5, 6, 7])]
        answers = [future.result(timeout=120) for future in futures]

    assert [a[0].track_id for a in answers] == [3, 4, 5, 6, 7]
    assert service.summary()["crops"] == 5 and service.summary()["worker"] == "process"
    assert [q["question"] for q in service.answerer_summary()["questions"]] == [question]
    with pytest.raises(ServiceClosed):
        service.submit(make_crops([1])[0], [question])


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="threads' niceness: Linux")
@pytest.mark.parametrize("priority", ["low", "idle"])
def test_process_service_on_the_cpu_when_answering_then_every_worker_thread_yields(
        tiny_vlm_dir, priority):
    cfg = load_config(None, [f"vlm.model={tiny_vlm_dir}", "vlm.adaptive.enabled=false",
                             "vlm.device=cpu", f"vlm.cpu_priority={priority}"]).vlm
    with WorkerService(cfg, resolve_vlm(cfg.model)) as service:
        for future in [service.submit(crop, [cfg.questions[0].question])
                       for crop in make_crops([1, 2, 3])]:
            future.result(timeout=120)
        worker = psutil.Process(service.client_end(0).worker_pid)
        # On Linux priority belongs to a thread: torch's own threads must have it too.
        threads = [thread.id for thread in worker.threads()]
        niceness = {psutil.Process(thread).nice() for thread in threads}
        policies = {os.sched_getscheduler(thread) for thread in threads}

    assert len(threads) > 1 and niceness == {CPU_NICENESS}
    assert policies == {os.SCHED_IDLE if priority == "idle" else os.SCHED_OTHER}


def test_process_service_when_model_missing_then_start_raises_model_error(tmp_path):
    (tmp_path / "config.json").write_text("{}")  # resolves as a local folder, fails to load
    cfg = load_config(None, [f"vlm.model={tmp_path}"]).vlm

    with pytest.raises(ModelError, match="cannot load VLM"):
        WorkerService(cfg, resolve_vlm(cfg.model)).start()


def test_run_when_worker_is_a_process_then_answers_equal_the_threads(tmp_path, tiny_vlm_dir):
    answers = {}
    for worker in ("thread", "process"):
        cfg = load_config(None, [f"vlm.model={tiny_vlm_dir}", f"vlm.worker={worker}",
                                 "run.max_frames=40", "vlm.adaptive.enabled=false"])
        run_dir = prepare_run_dir(cfg, tmp_path / worker)
        summary = run_pipeline(cfg, run_dir)
        events = [json.loads(line)
                  for line in (run_dir / "events.jsonl").read_text().splitlines()]
        answers[worker] = sorted((e["track_id"], e["frame"], e["answer"]) for e in events)
        assert summary["vlm"]["service"].get("worker", "thread") == worker

    assert answers["process"] == answers["thread"] and answers["thread"]


def test_run_when_file_and_worker_is_a_process_then_planning_knows_the_files_length(
        tmp_path, tiny_vlm_dir):
    cfg = load_config(None, [f"vlm.model={tiny_vlm_dir}", "vlm.worker=process",
                             "run.max_frames=40", "vlm.adaptive.profile_tracks=2"])
    run_dir = prepare_run_dir(cfg, tmp_path / "run")

    summary = run_pipeline(cfg, run_dir)

    log = (run_dir / "vidqa.log").read_text()
    assert "adaptive planning knows the files' length: 4 s of stream" in log  # 40 frames, 10 fps
    searched = [q["search"] for q in summary["vlm"]["questions"] if q.get("search")]
    assert all("horizon" not in s.get("forecast", "") for s in searched)


def tiny_cfg(tiny_vlm_dir, *settings: str):
    return load_config(None, [f"vlm.model={tiny_vlm_dir}", "vlm.adaptive.enabled=false",
                              "vlm.device=cpu", *settings]).vlm


def wait_for_answers(future, timeout: float = 120) -> None:
    future.result(timeout=timeout)


@pytest.mark.timeout(300)
def test_process_service_when_worker_killed_mid_run_then_every_future_is_answered(
        tiny_vlm_dir):
    cfg = tiny_cfg(tiny_vlm_dir, "vlm.batch_size=2", "vlm.queue_size=8")
    question = cfg.questions[0].question
    with WorkerService(cfg, resolve_vlm(cfg.model), clients=1) as service:
        stream = service.client_end(1).connect()  # as a stream process's client
        try:
            first = service.submit(make_crops([1])[0], [question])
            wait_for_answers(first)  # the model is warm: the next crops are mid-run
            before = service.worker_pid
            futures = [service.submit(crop, [question]) for crop in make_crops(range(2, 8))]
            theirs = [stream.submit(crop, [question]) for crop in make_crops(range(20, 24), 1)]
            os.kill(before, signal.SIGKILL)
            answers = [f.result(timeout=120) for f in futures + theirs]
            after = [service.submit(crop, [question]).result(timeout=120)
                     for crop in make_crops([30])]
        finally:
            stream.close()

    assert [a[0].track_id for a in answers] == [*range(2, 8), *range(20, 24)]
    assert after[0][0].track_id == 30
    assert service.worker_pid != before
    assert service.restarts == 1 and service.summary()["restarts"] == 1


def test_process_service_when_closed_abandoning_while_busy_then_returns_promptly(
        tiny_vlm_dir, monkeypatch):
    cfg = tiny_cfg(tiny_vlm_dir, "vlm.batch_size=1", "vlm.queue_size=64")
    question = cfg.questions[0].question
    service = WorkerService(cfg, resolve_vlm(cfg.model), clients=1).start()
    stream = service.client_end(1).connect()
    wait_for_answers(service.submit(make_crops([1])[0], [question]))
    futures = [service.submit(crop, [question]) for crop in make_crops(range(40), 1)]
    theirs = [stream.submit(crop, [question]) for crop in make_crops(range(40), 2)]

    began = time.monotonic()
    service.close(abandon=True)
    closed_in = time.monotonic() - began

    assert closed_in < 5  # forty crops one by one take far longer on the CPU
    assert any(isinstance(f.exception(timeout=1), Abandoned) for f in futures)
    assert all(f.done() for f in futures)
    outcomes = [f.exception(timeout=5) for f in theirs]  # the stream's client is told too
    assert any(isinstance(o, Abandoned) for o in outcomes)
    assert not psutil.pid_exists(service.worker_pid) or \
        psutil.Process(service.worker_pid).status() == psutil.STATUS_ZOMBIE
    stream.close()


def test_feed_when_its_reader_dies_mid_message_then_the_next_reader_gets_whole_requests():
    """And the clips' length first, which the dead worker had been told."""
    import multiprocessing

    import numpy as np

    from vidqa.serving.worker import _Feed

    context = multiprocessing.get_context("spawn")
    requests = context.Queue(maxsize=4)
    feed = _Feed(requests)
    feed.start()
    dead_reader, writer = context.Pipe(duplex=False)
    feed.attach(writer)
    requests.put(("expect", 30.0))
    requests.put(("ask", np.ones(4 << 20, np.uint8)))  # far more than a pipe holds
    first = b""
    while len(first) < 1024:  # a worker that read part of it, and died
        first += os.read(dead_reader.fileno(), 1024 - len(first))
    dead_reader.close()
    reader, writer = context.Pipe(duplex=False)
    feed.attach(writer)  # the restarted worker's pipe
    requests.put(("ask", np.arange(10)))
    requests.put(None)
    try:
        assert reader.poll(30)
        expect = reader.recv()
        kind, array = reader.recv()  # whole: not the rest of the first message
        last = reader.recv()
    finally:
        feed.close()

    assert len(first) == 1024 and expect == ("expect", 30.0)
    assert kind == "ask" and array.tolist() == list(range(10)) and last is None
