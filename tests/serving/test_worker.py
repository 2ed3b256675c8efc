"""The VLM service with its model in a worker process answers like the in-process one."""

from __future__ import annotations

import json
import os
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
