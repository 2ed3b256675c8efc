"""Several streams in one run, one VLM service: outputs per stream and merged, nothing lost
through a full queue or at the end of a file, and one bad stream does not stop the others —
with the streams on threads of one process, and split over two stream processes that ask one
VLM worker process (``run.processes``)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest

from vidqa.config import load_config
from vidqa.engines import run_pipeline
from vidqa.engines.processes import ProcessRun
from vidqa.run import prepare_run_dir, run_log

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
FRAMES = 40


@pytest.fixture(scope="module", params=[(1, None), (2, False), (2, True)],
                ids=["one-process", "two-processes", "two-processes-worker-detects"])
def fleet(request, tmp_path_factory, tiny_vlm_dir) -> tuple[Path, dict]:
    """Two cameras on the sample clip and one whose file is missing; a queue of 2 crops; when
    workers detect, two of them (one per stream process)."""
    processes, worker_detects = request.param
    config = tmp_path_factory.mktemp("cfg") / "fleet.yaml"
    config.write_text(f"""
run: {{max_frames: {FRAMES}, processes: {processes}, detection_workers: 2}}
roi: {{min_hits: 2}}
vlm:
  model: {tiny_vlm_dir}
  questions: ["Is this person carrying a backpack?", "Is this person running?"]
  batch_size: 4
  queue_size: 2
  adaptive: {{profile_tracks: 3}}
streams:
  - {{id: gate, source: {{path: auto}}}}
  - {{id: hall, source: {{path: auto}}, roi: {{min_hits: 4}}}}
  - {{id: broken, source: {{path: /nonexistent/camera.mp4}}}}
""")
    cfg = load_config(config)
    run_dir = prepare_run_dir(cfg, tmp_path_factory.mktemp("runs") / "fleet")
    if worker_detects:  # what a CUDA machine does: the model worker detects for every stream
        with run_log(run_dir):
            return run_dir, ProcessRun(cfg, run_dir, processes, detect_in_worker=True).run()
    return run_dir, run_pipeline(cfg, run_dir)


def events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_fleet_when_one_stream_is_bad_then_others_complete_and_it_is_reported(fleet):
    _, summary = fleet

    assert summary["end_reason"] == "partial" and summary["exit_code"] == 1
    assert "/nonexistent/camera.mp4" in summary["failed_streams"]["broken"]
    assert {s: v["end_reason"] for s, v in summary["streams"].items()} == \
        {"gate": "max_frames", "hall": "max_frames", "broken": "error"}


def test_fleet_when_done_then_each_stream_has_its_outputs_and_a_playable_video(fleet):
    run_dir, _ = fleet
    for stream in ("gate", "hall"):
        capture = cv2.VideoCapture(str(run_dir / stream / "annotated.mp4"))
        assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == FRAMES
        stream_summary = json.loads((run_dir / stream / "summary.json").read_text())
        assert stream_summary["stream_id"] == stream and stream_summary["frames"] == FRAMES
        assert (run_dir / stream / "mot.txt").read_text().startswith("1,")


def test_fleet_when_queue_was_full_then_no_answer_is_lost(fleet):
    run_dir, summary = fleet
    for stream in ("gate", "hall"):
        stream_summary = json.loads((run_dir / stream / "summary.json").read_text())
        asking = stream_summary["vlm"]
        assert asking["submitted"] == asking["answered"] == stream_summary["crops"] > 0
        assert asking["in_flight"] == 0
        # Two questions per crop: every crop the policy chose has both answers on disk.
        assert len(events(run_dir / stream / "events.jsonl")) == 2 * stream_summary["crops"]
    assert summary["vlm"]["service"]["crops"] == sum(
        summary["streams"][s]["crops"] for s in ("gate", "hall"))


def test_fleet_when_done_then_merged_events_are_every_streams_events_tagged(fleet):
    run_dir, summary = fleet
    merged = events(run_dir / "events.jsonl")
    per_stream = {s: events(run_dir / s / "events.jsonl") for s in ("gate", "hall")}

    assert sorted(json.dumps(e, sort_keys=True) for e in merged) == sorted(
        json.dumps(e, sort_keys=True) for es in per_stream.values() for e in es)
    assert {e["stream_id"] for e in merged} == {"gate", "hall"}
    assert all(e["answered_frame"] >= e["frame"] for e in merged)
    assert all(e["latency_ms"] >= e["queue_ms"] >= 0 for e in merged)
    assert summary["answers"] == len(merged)


def test_fleet_when_streams_share_a_process_then_one_detector_serves_them(fleet):
    _, summary = fleet
    detectors = summary["detectors"]
    frames = sum(summary["streams"][s]["frames"] for s in ("gate", "hall"))

    # One process: the two good streams share one detector. Two processes: the good streams
    # land in different processes (round robin: gate, broken | hall), one detector each, or
    # each process asks its own detection worker.
    worker = [d for d in detectors if d.get("process") == "worker"]
    assert len(detectors) == summary.get("processes", 1)
    assert sorted(d["worker"] for d in worker) == ([0, 1] if worker else [])
    assert sum(int(size) * count for d in detectors
               for size, count in d["batch_histogram"].items()) == frames
