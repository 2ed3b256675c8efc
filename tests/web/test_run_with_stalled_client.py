"""A stalled client costs a real run nothing: with an event feed and a video connection open
that never read a byte, a served run on the sample clip tracks, asks and answers exactly what the
same run without a server does, and the server's per-client queues stay bounded.

Counts and identities are compared, never timings (a benchmark measures those:
tools/bench_serve.py). The video client is watched, so the pipeline draws every frame for it;
what it costs is nothing but that. Loopback buffers absorb megabytes (dozens of this clip's
JPEGs) before the server's writes block, so a run this short may never skip a frame for the
stalled viewer: that the newest frame wins once they block is tested with synthetic frames
in test_event_feed.py.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from web.served_run import ServedRun, port_is_free, sample_config
from web_factories import wait_until

import vidqa.web
from vidqa.engines import run_pipeline
from vidqa.run import prepare_run_dir
from vidqa.web import LiveView

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

FRAMES = 30
QUEUE = 8  # events a stalled feed may hold; far fewer than the run publishes


def _answers(run_dir: Path) -> list[tuple[int, int, str]]:
    lines = (run_dir / "events.jsonl").read_text().splitlines()
    return sorted((e["frame"], e["track_id"], e["question"]) for e in map(json.loads, lines))


def _counts(summary: dict[str, Any]) -> dict[str, Any]:
    return {key: summary[key] for key in ("end_reason", "frames", "tracks", "crops", "answers")}


def _stream_published(run: ServedRun) -> bool:
    streams = httpx.get(run.api("api/state"), timeout=5).json()["streams"]
    return any(s["id"] == "0" and s["frames_published"] > 0 for s in streams)


def test_run_when_clients_stall_then_answers_match_an_unserved_run_and_queues_stay_bounded(
        tmp_path: Path, tiny_vlm_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = sample_config(tmp_path, tiny_vlm_dir,
                        (f"run.max_frames={FRAMES}", "vlm.adaptive.enabled=false"))
    plain = run_pipeline(cfg, prepare_run_dir(cfg, tmp_path / "plain"))

    views: list[LiveView] = []

    class SmallQueueView(LiveView):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **{**kwargs, "queue_size": QUEUE})
            views.append(self)

    monkeypatch.setattr(vidqa.web, "LiveView", SmallQueueView)
    run = ServedRun(cfg, tmp_path / "served", monkeypatch)
    samples: list[dict[str, list[dict[str, Any]]]] = []
    with httpx.Client(timeout=30) as stalled:
        run.start()
        with stalled.stream("GET", run.api("events")):  # headers read, body never
            wait_until(lambda: _stream_published(run), "the run's first frame", timeout_s=120)
            with stalled.stream("GET", run.api("streams/0/video")):
                while run.running:
                    samples.append(views[0].clients())
                    time.sleep(0.05)
    served = run.finish()

    assert _counts(served) == _counts(plain) and plain["frames"] == FRAMES
    assert _answers(run.run_dir) == _answers(tmp_path / "plain") != []
    assert views[0].hub.events_published == served["answers"]  # every answer reached the view
    both = [s for s in samples if s["events"] and s["video"]]
    assert both, "the stalled clients were never connected together during the run"
    assert all(q["queued"] <= q["maxsize"] == QUEUE for s in samples for q in s["events"])
    assert all(len(s["events"]) == len(s["video"]) == 1 for s in both[-5:])  # to the end
    assert port_is_free(run.port)  # stalled clients did not keep the server alive
