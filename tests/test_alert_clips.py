"""Clips around alerts, end to end: a run of the sample clip with rules that fire (the real
tracker, a tiny random VLM) writes a WebM per alert that OpenCV reads frame by frame and
Chromium plays from the history page; a Ctrl-C in the middle of a clip leaves it playable."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import pytest
import yaml
from factories import write_sample_clip

from vidqa.config import load_config
from vidqa.engines import run_pipeline
from vidqa.run import prepare_run_dir

REPO = Path(__file__).parent.parent
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
FRAMES, FPS = 120, 10.0
PRE_S, POST_S = 2.0, 2.0


def rules_config(clip: Path, model: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    """One camera, a zone over the whole frame and a rule for each answer: every track that
    is answered raises an alert."""
    question = {"question": "Is this person wearing a hard hat?", "name": "hat"}
    config: dict[str, Any] = {
        "source": {"kind": "file", "path": str(clip)},
        "tracker": {"imgsz": 320},
        "roi": {"min_width": 8, "min_height": 16, "min_hits": 2},
        "vlm": {"model": str(model), "questions": [question], "adaptive": {"enabled": False}},
        "zones": [{"name": "all", "polygon": [[0, 0], [320, 0], [320, 240], [0, 240]]}],
        "rules": [{"name": f"said_{answer}", "question": "hat", "answer": answer, "zone": "all"}
                  for answer in ("yes", "no")],
        "alerts": {"clip_pre_s": PRE_S, "clip_post_s": POST_S},
    }
    for name, values in sections.items():
        config[name] = {**config.get(name, {}), **values}
    return config


def query(db: Path, sql: str) -> list[sqlite3.Row]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql).fetchall()
    except sqlite3.OperationalError:  # the schema is still being created
        return []
    finally:
        conn.close()


def frames_in(path: Path) -> int:
    capture = cv2.VideoCapture(str(path))
    assert capture.isOpened(), f"{path} does not open"
    count = 0
    while capture.read()[0]:
        count += 1
    capture.release()
    return count


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sample_clip(tmp_path_factory.mktemp("clip") / "clip.avi", FRAMES, (320, 240))


@pytest.fixture(scope="module")
def rules_run(tmp_path_factory, clip, tiny_vlm_dir) -> tuple[Path, dict[str, Any]]:
    """The run's folder and summary."""
    path = tmp_path_factory.mktemp("cfg") / "rules.yaml"
    path.write_text(yaml.safe_dump(rules_config(clip, tiny_vlm_dir)))
    cfg = load_config(path)
    run_dir = prepare_run_dir(cfg, tmp_path_factory.mktemp("runs") / "rules")
    return run_dir, run_pipeline(cfg, run_dir)


def test_run_when_rules_fire_then_every_alert_has_a_clip_of_pre_and_post_seconds(rules_run):
    run_dir, summary = rules_run
    db = run_dir / "store" / "vidqa.db"
    alerts = query(db, "SELECT frame, clip FROM alerts ORDER BY frame")
    clips = query(db, "SELECT * FROM clips ORDER BY first_frame")

    assert summary["end_reason"] == "completed" and alerts
    assert all(alert["clip"] for alert in alerts)  # the row points at the file
    assert {alert["clip"] for alert in alerts} == {c["path"] for c in clips}
    previous_last = -1
    for row in clips:
        shown = [a["frame"] for a in alerts if a["clip"] == row["path"]]
        # 2 s before its first alert (not before the stream, nor into the clip before it) to
        # 2 s after its last (not after the stream's end)
        first = max(0, previous_last + 1, min(shown) - round(PRE_S * FPS))
        last = min(FRAMES - 1, max(shown) + round(POST_S * FPS))
        assert abs(row["first_frame"] - first) <= 1 and row["last_frame"] == last, dict(row)
        assert row["frames"] == row["last_frame"] - row["first_frame"] + 1  # a file drops none
        assert frames_in(run_dir / "store" / row["path"]) == row["frames"]
        assert row["fps"] == FPS
        previous_last = row["last_frame"]
    assert summary["clips"]["clips"] == len(clips) == summary["store"]["clips"]
    assert summary["clips"]["bytes"] == sum(c["bytes"] for c in clips) > 0
    assert summary["clips"]["buffer_peak_bytes"] <= summary["clips"]["buffer_cap_bytes"]


def test_run_when_a_clip_completes_then_alerts_jsonl_names_it_after_its_alerts(rules_run):
    run_dir, _ = rules_run
    lines = [json.loads(line) for line in (run_dir / "alerts.jsonl").read_text().splitlines()]
    alert_ids = {line["alert_id"] for line in lines if line["event"] == "alert"}
    clip_lines = [line for line in lines if line["event"] == "clip"]

    assert clip_lines and {i for line in clip_lines for i in line["alert_ids"]} == alert_ids
    for line in clip_lines:  # each after the lines of the alerts it shows
        position = lines.index(line)
        assert all(lines.index(a) < position for a in lines if a.get("alert_id") in
                   line["alert_ids"])


@pytest.mark.browser
def test_history_page_when_an_alerts_clip_is_played_then_chromium_plays_it(rules_run):
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    from web_factories import chromium_path

    from vidqa.web import LiveView

    run_dir, _ = rules_run
    executable = chromium_path()
    with LiveView(port=0, store=run_dir / "store" / "vidqa.db") as view, \
            sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True)
        try:
            page = browser.new_page()
            page.goto(view.address("history"))
            page.check("input[name=kind][value=alerts]")
            page.locator("#history button.play").first.click()
            page.wait_for_function("document.getElementById('clip').readyState >= 4",
                                   timeout=20_000)  # HAVE_ENOUGH_DATA
            duration = page.evaluate("document.getElementById('clip').duration")
            start = page.evaluate("document.getElementById('clip').currentTime")
            page.wait_for_function(f"document.getElementById('clip').currentTime > {start}",
                                   timeout=20_000)
            error = page.evaluate("document.getElementById('clip').error")
        finally:
            browser.close()

    assert duration > 0 and error is None


def test_run_when_interrupted_mid_clip_then_the_clip_is_closed_indexed_and_plays(
        tmp_path, clip, tiny_vlm_dir):
    # a camera (the clip replayed live, in a loop) whose clips last long after their alert
    config = rules_config(clip, tiny_vlm_dir, alerts={"clip_post_s": 600.0, "clip_max_s": 700.0},
                          source={"replay": "realtime", "loop": True})
    path = tmp_path / "camera.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "vidqa.cli", "run", str(path), "--out", str(out)], cwd=REPO,
        env={**os.environ, "VIDQA_OFFLINE": "1"}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True)
    db = out / "store" / "vidqa.db"
    try:
        deadline = time.monotonic() + 300
        while not (db.exists() and query(db, "SELECT id FROM alerts")):
            assert proc.poll() is None and time.monotonic() < deadline, "no alert was raised"
            time.sleep(0.5)
        time.sleep(2)  # a few frames into the clip
        os.killpg(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()

    assert proc.returncode == 130, stderr[-3000:]
    (row,) = query(db, "SELECT * FROM clips")
    alerts = query(db, "SELECT clip FROM alerts")
    assert row["cut"] == "end" and row["frames"] > PRE_S * FPS  # its frames before the alert too
    assert frames_in(out / "store" / row["path"]) == row["frames"]
    assert {a["clip"] for a in alerts} == {row["path"]}
