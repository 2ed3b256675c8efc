"""/metrics and /healthz from a run's monitor, and the store's history on /api/runs and
/api/answers, served by a real server (the page, or metrics alone)."""

from __future__ import annotations

import time

import httpx
import numpy as np
from factories import detections, make_crops, scripted_answers
from prometheus_client.parser import text_string_to_metric_families

from vidqa.config import load_config
from vidqa.messages import FrameResult, VideoFrame
from vidqa.store import EventStore, StoreSink, StreamRecord
from vidqa.web import LiveView
from vidqa.web.metrics import Monitor

TOKEN = "s3cret-token"


def frame(index: int, answers: tuple = ()) -> FrameResult:
    image = np.zeros((48, 64, 3), np.uint8)
    return FrameResult(VideoFrame(image=image, frame_index=index, timestamp=index / 10,
                                  source_id="cam", fps=10.0),
                       detections([(1, 1, 10, 20)], [1]), answers=answers)


def families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(family, **labels) -> float:
    return next(s.value for s in family.samples
                if s.name.endswith("_total") or s.name == family.name
                if all(s.labels.get(k) == v for k, v in labels.items()))


def test_metrics_when_frames_and_answers_pass_then_the_exposition_counts_them():
    monitor = Monitor()
    sink = monitor.watch("cam0", live=True, stall_timeout_s=5.0,
                         stats=lambda: {"frames_dropped": 7, "reconnects": 2, "tracks": 3})
    answers = tuple(a.__class__(**{**a.__dict__, "latency_ms": 120.0})
                    for a in scripted_answers(make_crops([1, 2]), ["q"])[0])
    for index in range(5):
        sink.write(frame(index, answers if index == 4 else ()))

    found = families(monitor.exposition().decode())
    assert value(found["vidqa_frames"], stream="cam0") == 5
    assert value(found["vidqa_answers"], stream="cam0") == 1
    assert value(found["vidqa_frames_dropped"], stream="cam0") == 7
    assert value(found["vidqa_reconnects"], stream="cam0") == 2
    assert value(found["vidqa_tracks"], stream="cam0") == 3
    latency = {s.name: s.value for s in found["vidqa_answer_latency_seconds"].samples
               if s.labels.get("stream") == "cam0" and s.labels.get("le") in (None, "0.25")}
    assert latency["vidqa_answer_latency_seconds_count"] == 1
    assert latency["vidqa_answer_latency_seconds_bucket"] == 1  # 0.12 s <= 0.25 s
    assert monitor.health() == []


def test_health_when_a_live_stream_has_no_frame_for_its_stall_timeout_then_it_says_why():
    monitor = Monitor()
    live = monitor.watch("door", live=True, stall_timeout_s=0.2,
                         stats=lambda: {"reconnect_attempts": 4})
    clip = monitor.watch("clip", live=False, stall_timeout_s=0.2, stats=dict)
    live.write(frame(0))
    clip.write(frame(0))
    time.sleep(0.3)

    (problem,) = monitor.health()
    assert problem.startswith("stream door: no frame for ")
    assert "stall timeout 0.2 s; 4 reconnect attempts" in problem
    live.write(frame(1))
    assert monitor.health() == []
    live.close()  # a camera that ended is a problem too; a clip that ended is not
    clip.close()
    assert monitor.health() == ["stream door has ended"]


def test_metrics_server_when_page_is_off_then_only_metrics_and_health(tmp_path):
    monitor = Monitor()
    monitor.watch("cam0", live=True, stall_timeout_s=0.1, stats=dict)
    time.sleep(0.2)
    with LiveView(port=0, monitor=monitor, page=False) as server:
        base = f"http://127.0.0.1:{server.port}"
        metrics = httpx.get(f"{base}/metrics")
        health = httpx.get(f"{base}/healthz")
        page = httpx.get(f"{base}/")
        runs = httpx.get(f"{base}/api/runs")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith(
        "text/plain; version=")
    assert "vidqa_frames" in families(metrics.text)
    assert health.status_code == 503 and health.text.startswith("stream cam0: no frame for")
    assert page.status_code == runs.status_code == 404  # the history is the page's


def test_history_when_the_store_has_two_runs_then_the_api_shows_both(tmp_path):
    cfg = load_config(None, [])
    for _ in range(2):
        store = EventStore(cfg, tmp_path).open()
        store.put_many([StreamRecord("0", "cam", tmp_path, False, True, False)])
        StoreSink("0", store.put_many).write_answers(scripted_answers(make_crops([1]),
                                                                      ["q"])[0])
        store.close("completed")
    monitor = Monitor()
    monitor.store = store
    with LiveView(port=0, token=TOKEN, monitor=monitor) as server:
        base = f"http://127.0.0.1:{server.port}"
        headers = {"Authorization": f"Bearer {TOKEN}"}
        runs = httpx.get(f"{base}/api/runs", headers=headers).json()
        second = httpx.get(f"{base}/api/answers?run=1", headers=headers).json()["rows"]
        bad = httpx.get(f"{base}/api/answers?run=one", headers=headers)
        refused = httpx.get(f"{base}/api/runs")
    assert [(r["id"], r["answers"], r["end_reason"]) for r in runs] == [
        (2, 1, "completed"), (1, 1, "completed")]
    assert [a["run_id"] for a in second] == [1] and second[0]["question"] == "q"
    assert bad.status_code == 400 and "run must be an integer" in bad.json()["error"]
    assert refused.status_code == 401
