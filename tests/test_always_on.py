"""Cameras that run for weeks, tried as a user runs them: ``vidqa run`` in a child process on
replayed cameras (and a real RTSP server), stopped with real signals, killed with SIGKILL,
started again on the same folder, watched through ``/metrics`` and ``/healthz``."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import pytest
import yaml
from factories import write_sample_clip
from prometheus_client.parser import text_string_to_metric_families
from rtsp_server import RtspServer, free_port, server_available

REPO = Path(__file__).parent.parent
sys.path.insert(0, str(REPO / "tools"))
from soak import soak  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sample_clip(tmp_path_factory.mktemp("clip") / "clip.avi", 100, (320, 240))


def cameras(clip: Path, model: Path, streams: int = 2, speed: float = 1.0,
            **sections: dict[str, Any]) -> dict[str, Any]:
    """A config of ``streams`` cameras replaying ``clip`` in a loop."""
    config = {
        "source": {"kind": "file", "path": str(clip), "replay": "realtime", "loop": True,
                   "replay_speed": speed},
        "tracker": {"imgsz": 320},
        "roi": {"min_width": 8, "min_height": 16},
        "vlm": {"model": str(model), "adaptive": {"enabled": False}},
        "streams": [{"id": f"cam{i}"} for i in range(streams)],
    }
    for name, values in sections.items():
        config[name] = {**config.get(name, {}), **values}
    return config


STARTED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _no_run_outlives_its_test() -> Iterator[None]:
    """A test that fails half-way still ends the run it started, workers included."""
    yield
    while STARTED:
        proc = STARTED.pop()
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=30)


def start(tmp_path: Path, config: dict[str, Any], out: Path, *args: str) -> subprocess.Popen:
    path = tmp_path / f"config-{time.monotonic_ns()}.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.Popen(
        [sys.executable, "-m", "vidqa.cli", "run", str(path), "--out", str(out), *args],
        cwd=REPO, env={**os.environ, "VIDQA_OFFLINE": "1"}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True)
    STARTED.append(proc)
    return proc


def wait_for(ready: Callable[[], Any], what: str, timeout_s: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = ready()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def query(db: Path, sql: str) -> list[sqlite3.Row]:
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql).fetchall()
    except sqlite3.OperationalError:  # the schema is still being created
        return []
    finally:
        conn.close()


def answers_in(db: Path) -> int:
    rows = query(db, "SELECT COUNT(*) AS n FROM answers")
    return rows[0]["n"] if rows else 0


def exported_answer_ids(run_dir: Path) -> set[int]:
    """Every answer id in any events JSONL of the run (current pieces and rotated ones)."""
    ids = set()
    for path in run_dir.rglob("*events*.jsonl"):
        ids |= {json.loads(line)["answer_id"] for line in path.read_text().splitlines()}
    return ids


def integrity(db: Path) -> str:
    with sqlite3.connect(db) as conn:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]


def frames_in(video: str) -> int:
    capture = cv2.VideoCapture(video)
    assert capture.isOpened(), f"{video} does not play"
    count = 0
    while capture.read()[0]:
        count += 1
    capture.release()
    return count


def test_run_when_cameras_record_in_segments_then_retention_keeps_the_cap_and_each_plays(
        tmp_path, clip, tiny_vlm_dir):
    cap = 400_000
    config = cameras(clip, tiny_vlm_dir, speed=4.0, run={"max_frames": 120},
                     sinks={"segment_s": 4}, retain={"max_gb": cap / 1e9, "check_s": 1})
    out = tmp_path / "run"
    proc = start(tmp_path, config, out)
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]

    summary = json.loads((out / "summary.json").read_text())
    db = out / "store" / "vidqa.db"
    segments = query(db, "SELECT * FROM segments")
    kept = [Path(f) for row in segments for f in json.loads(row["files"])]
    on_disk = [p for p in out.rglob("segments/*") if p.is_file()]
    snapshots = sum(p.stat().st_size for p in (out / "store").rglob("*.jpg"))
    assert summary["store"]["retention_deleted"]["segments"] > 0  # the oldest went
    assert {row["stream_id"] for row in segments} == {"cam0", "cam1"}
    assert sorted(kept) == sorted(on_disk)  # the store indexes exactly the files there are
    assert sum(p.stat().st_size for p in on_disk) + snapshots <= cap
    for row in segments:
        assert frames_in(row["video"]) == row["frames"] > 0
    assert integrity(db) == "ok"


@pytest.mark.parametrize("sig, reason, code", [(signal.SIGINT, "interrupted", 130),
                                               (signal.SIGTERM, "terminated", 143)])
def test_run_when_signalled_under_load_then_it_exits_in_seconds_with_every_answer_counted(
        tmp_path, clip, tiny_vlm_dir, sig, reason, code):
    # Three cameras keep both cores busy tracking; the model worker runs only on idle cores
    # (cpu_priority idle), so crops pile up at it: the case that used to hang for minutes.
    # max_wait_ms: a crop waits long for its batch, so some are always in flight at the stop.
    config = cameras(clip, tiny_vlm_dir, streams=3, sinks={"segment_s": 10},
                     vlm={"worker": "process", "cpu_priority": "idle", "batch_size": 8,
                          "max_wait_ms": 20000, "queue_size": 16})
    out = tmp_path / "run"
    proc = start(tmp_path, config, out)
    db = out / "store" / "vidqa.db"
    tracks = "SELECT COUNT(*) AS n FROM tracks"
    wait_for(lambda: (rows := query(db, tracks)) and rows[0]["n"] >= 4,
             "tracks, whose crops then wait at the model")
    time.sleep(3)  # under load for a while
    signalled = time.monotonic()
    os.killpg(proc.pid, sig)  # as a terminal's Ctrl-C reaches the whole process group
    _, stderr = proc.communicate(timeout=60)
    exit_s = time.monotonic() - signalled

    summary = json.loads((out / "summary.json").read_text())
    streams = [json.loads((out / s / "summary.json").read_text()) for s in summary["streams"]]
    assert proc.returncode == code and summary["end_reason"] == reason, stderr[-3000:]
    assert exit_s <= 5.0, f"the run took {exit_s:.1f} s to exit"
    for stream in streams:
        stage = stream["vlm"]
        assert stage["submitted"] == stage["answered"] + stage["failed"] + stage["abandoned"]
    assert integrity(db) == "ok"
    assert exported_answer_ids(out) <= {r["id"] for r in query(db, "SELECT id FROM answers")}
    assert answers_in(db) == summary["answers"]  # what was counted is what was recorded
    assert "Traceback" not in stderr


def test_run_when_signalled_twice_then_the_second_exits_at_once_without_a_traceback(
        tmp_path, clip, tiny_vlm_dir):
    config = cameras(clip, tiny_vlm_dir, streams=2, sinks={"segment_s": 10},
                     run={"stop_grace_s": 30.0},  # the first stop would wait long for
                     vlm={"max_wait_ms": 30000})  # crops that wait long for their batch
    out = tmp_path / "run"
    proc = start(tmp_path, config, out)
    tracks = "SELECT COUNT(*) AS n FROM tracks"
    wait_for(lambda: (rows := query(out / "store" / "vidqa.db", tracks)) and rows[0]["n"] >= 4,
             "tracks, whose crops are then with the model")
    time.sleep(2)
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(0.5)
    second = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)

    assert proc.returncode == 130
    assert time.monotonic() - second < 3.0
    assert "second Ctrl-C" in stderr and "Traceback" not in stderr
    assert integrity(out / "store" / "vidqa.db") == "ok"


def test_run_when_killed_with_sigkill_then_the_store_holds_every_published_answer(
        tmp_path, clip, tiny_vlm_dir):
    config = cameras(clip, tiny_vlm_dir, streams=2, sinks={"segment_s": 3},
                     roi={"reask_every": 20})
    out = tmp_path / "run"
    proc = start(tmp_path, config, out)
    db = out / "store" / "vidqa.db"
    wait_for(lambda: answers_in(db) >= 5, "answers in the store")
    os.killpg(proc.pid, signal.SIGKILL)  # the run and every worker it started
    proc.communicate(timeout=60)

    published = exported_answer_ids(out)
    stored = {r["id"] for r in query(db, "SELECT id FROM answers")}
    assert integrity(db) == "ok"
    assert published and published <= stored


def test_run_when_started_again_on_its_folder_then_it_continues_as_a_new_run(
        tmp_path, clip, tiny_vlm_dir):
    config = cameras(clip, tiny_vlm_dir, speed=2.0, run={"max_frames": 80},
                     sinks={"segment_s": 3}, roi={"reask_every": 10})
    out = tmp_path / "run"
    for _ in range(2):
        proc = start(tmp_path, config, out)
        _, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr[-3000:]

    db = out / "store" / "vidqa.db"
    runs = query(db, "SELECT id, end_reason FROM runs ORDER BY id")
    answers = query(db, "SELECT id, run_id FROM answers")
    segments = query(db, "SELECT run_id, video FROM segments")
    assert [(r["id"], r["end_reason"]) for r in runs] == [(1, "completed"), (2, "completed")]
    assert {r["run_id"] for r in answers} == {1, 2} == {r["run_id"] for r in segments}
    assert len({r["video"] for r in segments}) == len(segments)  # nothing rewritten
    assert all(Path(r["video"]).exists() for r in segments)
    assert "run 2, after 1 earlier run(s) of this store" in (out / "vidqa.log").read_text()


def pid_in_log(run_dir: Path, what: str) -> int | None:
    """The process id the run's log gives its ``what`` (the latest start)."""
    found = re.findall(rf"the {what} runs as pid (\d+)", (run_dir / "vidqa.log").read_text())
    return int(found[-1]) if found else None


def test_run_when_the_vlm_worker_is_killed_then_it_is_restarted_and_the_streams_go_on(
        tmp_path, clip, tiny_vlm_dir):
    config = cameras(clip, tiny_vlm_dir, streams=2, sinks={"segment_s": 10},
                     roi={"reask_every": 20}, vlm={"worker": "process"})
    out = tmp_path / "run"
    proc = start(tmp_path, config, out)
    db = out / "store" / "vidqa.db"
    wait_for(lambda: answers_in(db) >= 2, "the first answers")
    os.kill(pid_in_log(out, "VLM worker"), signal.SIGKILL)
    before = answers_in(db)
    wait_for(lambda: answers_in(db) >= before + 3, "answers from the restarted worker")
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)

    summary = json.loads((out / "summary.json").read_text())
    assert proc.returncode == 130, stderr[-3000:]
    assert summary["vlm"]["service"]["restarts"] == 1
    assert {s["end_reason"] for s in summary["streams"].values()} == {"interrupted"}
    assert "the VLM worker died" in (out / "vidqa.log").read_text()
    assert integrity(db) == "ok"


def test_run_when_the_detection_worker_is_killed_then_it_is_restarted_and_the_streams_go_on(
        tmp_path, clip, tiny_vlm_dir):
    config = cameras(clip, tiny_vlm_dir, streams=2, sinks={"segment_s": 10},
                     run={"processes": 2, "detection_workers": 1})
    out = tmp_path / "run"
    proc = start(tmp_path, config, out)
    db = out / "store" / "vidqa.db"
    tracks = "SELECT COUNT(*) AS n FROM tracks"
    wait_for(lambda: (rows := query(db, tracks)) and rows[0]["n"] >= 2, "tracked people")
    os.kill(pid_in_log(out, "detection worker"), signal.SIGKILL)
    # a stream's frames go on only through the detector: progress lines after the restart
    # show that the new worker detects
    wait_for(lambda: frames_logged_after(out, "the detection worker is back") >= 4,
             "frames detected after the restart", timeout_s=240)
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)

    summary = json.loads((out / "summary.json").read_text())
    assert proc.returncode == 130, stderr[-3000:]
    workers = [d for d in summary["detectors"] if d.get("process") == "worker"]
    assert workers and sum(d["restarts"] for d in workers) >= 1
    assert {s["end_reason"] for s in summary["streams"].values()} == {"interrupted"}
    assert integrity(db) == "ok"


def frames_logged_after(run_dir: Path, line: str) -> int:
    """Progress lines ("frame N: ...") the log has after the first line holding ``line``."""
    text = (run_dir / "vidqa.log").read_text()
    if line not in text:
        return 0
    return len(re.findall(r"frame \d+: \d+ frames", text[text.index(line):]))


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
    except OSError:
        return 0, ""


def test_healthz_when_the_camera_goes_away_then_503_with_the_reason_and_metrics_parse(
        tmp_path, clip, tiny_vlm_dir):
    reason = server_available()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    port = free_port()
    with RtspServer(clip, fps=10) as server:
        config = {"source": {"kind": "stream", "url": server.url, "stall_timeout_s": 2.0,
                             "reconnect_max_s": 1.0},
                  "tracker": {"imgsz": 320}, "roi": {"min_width": 8, "min_height": 16},
                  "vlm": {"model": str(tiny_vlm_dir), "adaptive": {"enabled": False}}}
        proc = start(tmp_path, config, tmp_path / "run", "--metrics", str(port))
        base = f"http://127.0.0.1:{port}"
        try:
            wait_for(lambda: get(f"{base}/metrics")[1].count("vidqa_frames_total{") and
                     "vidqa_frames_total{stream=\"0\"} 0.0" not in get(f"{base}/metrics")[1],
                     "frames counted")
            assert get(f"{base}/healthz") == (200, "ok\n")
            families = {f.name: f for f in text_string_to_metric_families(
                get(f"{base}/metrics")[1])}
            server.kill()
            status, body = wait_for(lambda: (r := get(f"{base}/healthz"))[0] == 503 and r,
                                    "healthz to turn 503", timeout_s=60)
        finally:
            os.killpg(proc.pid, signal.SIGINT)
            proc.communicate(timeout=60)
    assert "stream 0: no frame for" in body and "stall timeout 2 s" in body
    for name in ("vidqa_frames", "vidqa_frames_dropped", "vidqa_reconnects", "vidqa_tracks",
                 "vidqa_answers", "vidqa_alerts", "vidqa_worker_restarts", "vidqa_store_dropped"):
        assert families[name].type == "counter", name
    for name in ("vidqa_fps", "vidqa_vlm_queue_depth", "vidqa_store_write_lag_seconds"):
        assert families[name].type == "gauge", name
    assert families["vidqa_answer_latency_seconds"].type == "histogram"
    assert proc.returncode == 130


def test_soak_when_cameras_run_for_half_an_hour_of_stream_time_then_memory_stays_flat(
        tmp_path, clip, tiny_vlm_dir):
    report = soak(tmp_path / "soak", stream_hours=0.5, clip=clip, model=str(tiny_vlm_dir),
                  streams=3, speed=20.0, every_s=5.0, segment_s=30.0, max_gb=0.002)

    assert report["exit_code"] == 130 and report["end_reason"] == "interrupted"
    assert report["rss_after_warmup"]["spread"] <= 0.05, report["rss_after_warmup"]
    store = report["store_after_warmup"]
    assert store["rows_added"] > 0
    # the database grows with its rows (a few pages of slack), the files stay near the cap
    assert store["db_bytes_added"] <= 2048 * store["rows_added"] + 16 * 4096
    last = report["samples"][-1]
    assert last["disk_bytes"] - last["db_bytes"] < 2_000_000 + 4_500_000  # cap + WAL, logs
