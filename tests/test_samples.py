"""Every scenario in samples/ runs as shipped, for a few frames, with the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from factories import write_mot_sequence, write_video
from rtsp_server import RtspServer

from vidqa.config import load_config
from vidqa.engines import run_pipeline
from vidqa.run import SCHEMA_VERSION, prepare_run_dir

SAMPLES = Path(__file__).parent.parent / "samples"
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def run_sample(name: str, out: Path, tiny_vlm_dir: Path, *overrides: str) -> dict:
    cfg = load_config(SAMPLES / name, [f"vlm.model={tiny_vlm_dir}", "run.max_frames=6",
                                       "roi.min_hits=1", "vlm.adaptive.profile_tracks=2",
                                       *overrides])
    return run_pipeline(cfg, prepare_run_dir(cfg, out), config_name=name)


def test_samples_when_listed_then_every_yaml_has_a_test():
    tested = {"factory.yaml", "retail.yaml", "multicam.yaml", "mot16.yaml", "webcam.yaml",
              "rtsp.yaml"}

    assert {path.name for path in SAMPLES.glob("*.yaml")} == tested


@pytest.mark.parametrize("name", ["factory.yaml", "retail.yaml", "multicam.yaml"])
def test_sample_when_run_as_shipped_then_completes_with_outputs(name, tmp_path, tiny_vlm_dir):
    summary = run_sample(name, tmp_path / "run", tiny_vlm_dir)

    assert summary["end_reason"] in ("max_frames", "completed")
    assert summary["frames"] >= 6
    assert (tmp_path / "run" / "events.jsonl").is_file()
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["schema_version"] == \
        SCHEMA_VERSION


def test_mot16_sample_when_pointed_at_a_sequence_then_writes_mot_txt(tmp_path, tiny_vlm_dir):
    sequence = write_mot_sequence(tmp_path / "MOT16", frames=8)

    summary = run_sample("mot16.yaml", tmp_path / "run", tiny_vlm_dir,
                         f"source.path={sequence}")

    assert summary["end_reason"] == "max_frames"
    assert (tmp_path / "run" / "mot.txt").is_file()


def test_webcam_sample_when_no_camera_then_its_settings_run_on_a_file(tmp_path, tiny_vlm_dir):
    # CI has no camera and no display: the webcam's own source and window are swapped out.
    video = write_video(tmp_path / "clip.avi", frames=10)

    summary = run_sample("webcam.yaml", tmp_path / "run", tiny_vlm_dir, "source.kind=file",
                         f"source.path={video}", "sinks.window=false")

    assert summary["end_reason"] == "max_frames"


@pytest.mark.rtsp
def test_rtsp_sample_when_served_on_loopback_then_runs_live(tmp_path, tiny_vlm_dir):
    video = write_video(tmp_path / "clip.avi", frames=30, size=(320, 240))
    with RtspServer(video, fps=10) as server:
        summary = run_sample("rtsp.yaml", tmp_path / "run", tiny_vlm_dir,
                             f"source.url={server.url}", "source.max_reconnects=3")

    assert summary["end_reason"] == "max_frames"
    assert summary["source"]["is_live"] is True
