"""The live page, /metrics and /healthz when the streams run elsewhere: two stream processes
(``run.processes: 2``) and a local Ray (``run.engine: ray``), each with two streams of the
sample clip, the real tracker and the tiny VLM, watched by a real headless Chromium.

Before anyone opens the page the streams run and report, but encode no JPEG (their counters,
relayed to the page's ``/api/state``, say so); then Chromium shows both streams' video and
their answers, ``/metrics`` has both streams and ``/healthz`` says ok. The test stops the run
once it has seen that (a guard of ``run.max_frames`` bounds it otherwise).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from web.served_run import ServedRun, port_is_free, sample_config, wait_answers, wait_videos
from web_factories import chromium_path, wait_until

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(300)]

STREAMS = ("gate", "hall")
GUARD_FRAMES = 400  # the test stops the run once it has seen enough; this only bounds it
# The full model answers from the first crop (no profiling), the tracker detects at 320 px and
# the stop does not wait for answers in flight: what the test watches comes sooner, and the
# run ends sooner, on two busy cores.
QUICK = ("vlm.adaptive.enabled=false", "tracker.imgsz=320", "run.stop_grace_s=0.5")
LAYOUTS = {"processes": ("run.processes=2", "source.replay=realtime", "source.replay_speed=0.5"),
           "ray": ("run.engine=ray",)}


def _streams(run: ServedRun) -> dict[str, dict[str, Any]]:
    state = httpx.get(run.api("api/state"), timeout=10).json()
    return {s["id"]: s for s in state["streams"]}


def _reported(run: ServedRun, frames: int) -> bool:
    """Both streams have relayed status counters for at least ``frames`` frames."""
    streams = _streams(run)
    return all(streams.get(sid, {}).get("counters", {}).get("frames", 0) >= frames
               for sid in STREAMS)


def _metrics(run: ServedRun) -> dict[tuple[str, str | None], float]:
    text = httpx.get(run.api("metrics"), timeout=10).text
    return {(s.name, s.labels.get("stream")): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_page_when_streams_run_in_other_processes_then_video_answers_metrics_and_health(
        tmp_path: Path, tiny_vlm_dir: Path, monkeypatch: pytest.MonkeyPatch,
        layout: str) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    if layout == "ray":
        pytest.importorskip("ray", reason="the Ray extra is not installed: pip install "
                                          "'vidqa[ray]'")
    executable = chromium_path()
    cfg = sample_config(tmp_path, tiny_vlm_dir, streams=STREAMS,
                        overrides=(f"run.max_frames={GUARD_FRAMES}", *QUICK, *LAYOUTS[layout]))
    run = ServedRun(cfg, tmp_path / "run", monkeypatch)
    errors: list[str] = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True)
        try:
            run.start()
            # a guard: starting Ray and its actors took over 180 s in one CI run on 2 slow cores
            wait_until(lambda: _reported(run, 3), "both streams to report frames",
                       timeout_s=420)
            unwatched = _streams(run)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.goto(run.url)
            shown = wait_videos(page, STREAMS)
            answered = wait_answers(page, STREAMS)
            metrics = _metrics(run)
            health = httpx.get(run.api("healthz"), timeout=10)
            watched = _streams(run)
            still_running = run.running
        finally:
            run.stop()
            browser.close()
    summary = run.finish(timeout_s=180)

    for sid in STREAMS:
        assert unwatched[sid]["counters"]["relay_frames_encoded"] == 0, unwatched[sid]
        assert unwatched[sid]["frames_published"] == 0
        assert watched[sid]["frames_published"] > 0  # JPEGs the stream's side encoded
        assert watched[sid]["size"] == [768, 576]
        assert metrics[("vidqa_frames_total", sid)] > 0
        assert metrics[("vidqa_stream_up", sid)] == 1.0
    assert ("vidqa_store_write_lag_seconds", None) in metrics  # the run's store, read live
    assert (("vidqa_vlm_queue_depth", None) in metrics) == (layout == "processes")
    assert sorted(shown) == sorted(STREAMS)
    assert all(rows > 0 for rows in answered.values()), answered
    assert (health.status_code, health.text) == (200, "ok\n")
    assert still_running  # everything above was seen during the run, not after it
    assert errors == []
    assert summary["end_reason"] == "stopped" and summary["answers"] > 0
    assert summary.get("processes") == (2 if layout == "processes" else None)
    assert port_is_free(run.port)
