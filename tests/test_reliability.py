"""Never lose work: crashes, signals and a long soak leave a playable video, every event and a
summary that says why and where the run ended."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import psutil
import pytest
from factories import ScriptedTracker, write_video

from vidqa.config import load_config
from vidqa.engines.local import single_stream
from vidqa.pipeline import Pipeline
from vidqa.roi import RoiPolicy
from vidqa.run import prepare_run_dir
from vidqa.serving import AnswerStage, BatchingService
from vidqa.sources import open_source
from vidqa.store import EventStore
from vidqa.vlm.batch import BatchAnswerer

REPO = Path(__file__).parent.parent


def make_pipeline(tmp_path: Path, video: Path, vlm, tracker, *overrides: str) -> Pipeline:
    """A one-stream pipeline over ``video`` whose answers come from ``vlm`` on a batching
    thread (``pipeline.answerer`` is its batch answerer)."""
    cfg = load_config(None, ["roi.min_hits=1", "vlm.max_wait_ms=0", *overrides])
    run_dir = prepare_run_dir(cfg, tmp_path / "run")
    models = {"detector": {"name": "scripted"}, "vlm": vlm.info}
    answerer = BatchAnswerer(vlm, cfg.vlm)
    service = BatchingService(answerer.answer, cfg.vlm.batch_size, cfg.vlm.max_wait_ms,
                              cfg.vlm.queue_size).start()
    stage = AnswerStage(service, [q.question for q in cfg.vlm.questions], live=False)
    store = EventStore(cfg, run_dir).open()
    pipeline = Pipeline(cfg, run_dir, open_source(cfg.source, video), tracker,
                        RoiPolicy(cfg.roi), stage, models, store.put_many)
    pipeline.on_end += [service.close, store.close]
    pipeline.answerer = answerer
    return pipeline


def video_frames(path: Path) -> int:
    capture = cv2.VideoCapture(str(path))
    assert capture.isOpened(), f"{path} is not playable"
    count = 0
    while capture.read()[0]:
        count += 1
    return count


def test_run_when_a_crop_cannot_be_answered_then_only_it_is_lost_and_the_stream_goes_on(
        tmp_path, tiny_vlm, monkeypatch):
    video = write_video(tmp_path / "clip.avi", frames=60)
    pipeline = make_pipeline(tmp_path, video, tiny_vlm, ScriptedTracker(),
                             "vlm.adaptive.enabled=false", "vlm.batch_size=1")  # a call a crop
    answer = pipeline.answerer.answerers[0].answer
    calls, doomed = [], []

    def failing(crops):
        calls.append(len(crops))
        if len(calls) == 5:
            doomed.append(crops[0].track_id)  # this track's crop fails, retried or not
        if any(crop.track_id in doomed for crop in crops):
            raise RuntimeError("GPU fell off the bus")
        return answer(crops)

    monkeypatch.setattr(pipeline.answerer.answerers[0], "answer", failing)

    summary = pipeline.run()

    events = (pipeline.run_dir / "events.jsonl").read_text().splitlines()
    stage = summary["vlm"]
    assert summary["end_reason"] == "completed" and summary["error"] is None
    assert stage["failed"] == 1 and stage["answered"] == stage["submitted"] - 1
    assert any("GPU fell off the bus" in reason for reason in stage["failure_reasons"])
    assert len(events) == summary["answers"] == stage["answered"] > 0
    assert doomed[0] not in {json.loads(line)["track_id"] for line in events}
    assert video_frames(pipeline.run_dir / "annotated.mp4") == summary["frames"] == 60


def test_summary_when_answers_still_in_flight_at_the_end_then_fps_leaves_their_wait_out(
        tmp_path, tiny_vlm_dir):
    video = write_video(tmp_path / "clip.avi", frames=30)
    cfg = load_config(None, ["roi.min_hits=1", f"source.path={video}", "vlm.worker=thread",
                             f"vlm.model={tiny_vlm_dir}", "vlm.adaptive.enabled=false"])
    pipeline = single_stream(cfg, prepare_run_dir(cfg, tmp_path / "run"))
    pipeline.tracker = ScriptedTracker()
    service = pipeline.answer_stage.service
    answer = service.answer

    def slow(crops, questions):
        time.sleep(0.5)
        return answer(crops, questions)

    service.answer = slow
    summary = pipeline.run()

    assert summary["answers"] == summary["crops"] > 0  # every answer waited for, none lost
    assert summary["flush_s"] >= 0.4  # the last batch was still running when the frames ended
    streamed = summary["seconds"] - summary["flush_s"]  # each rounded to the millisecond
    assert summary["frames"] / summary["fps"] == pytest.approx(streamed, abs=0.003)


SIGNALS = [(signal.SIGINT, "interrupted", 130), (signal.SIGTERM, "terminated", 143)]


@pytest.mark.slow
@pytest.mark.parametrize("signum, reason, code", SIGNALS)
def test_cli_run_when_signalled_then_video_events_and_summary_survive(
        tmp_path, tiny_vlm_dir, signum, reason, code):
    out = tmp_path / "run"
    env = {**os.environ, "VIDQA_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "vidqa.cli", "run", "pipeline.yaml", "--out", str(out),
         "--set", f"vlm.model={tiny_vlm_dir}", "--set", "vlm.adaptive.enabled=false"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    events = out / "events.jsonl"
    while time.monotonic() < deadline and proc.poll() is None:
        if events.exists() and len(events.read_text().splitlines()) >= 3:
            break
        time.sleep(0.2)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=120)

    summary = json.loads((out / "summary.json").read_text())
    assert proc.returncode == code, stderr[-2000:]
    assert summary["end_reason"] == reason
    assert 0 < summary["frames"] < 795
    assert len(events.read_text().splitlines()) == summary["answers"] >= 3
    assert video_frames(out / "annotated.mp4") == summary["frames"]
    assert "Traceback" not in stderr


@pytest.mark.slow
@pytest.mark.timeout(900)  # about 40 s alone; a loaded machine can take much longer
def test_run_when_soaked_with_20000_frames_of_short_tracks_then_memory_stays_bounded(
        tmp_path, tiny_vlm):
    frames = 20_000
    video = write_video(tmp_path / "long.avi", frames=frames, size=(160, 120), fps=30)
    tracker = ScriptedTracker(every=5, life=12)  # 4,000 people, each seen for 12 frames
    pipeline = make_pipeline(tmp_path, video, tiny_vlm, tracker, "sinks.video=true",
                             "vlm.adaptive.profile_tracks=10")
    rss: dict[int, int] = {}
    process = psutil.Process()

    def sampled(results):
        for result in results:
            if result.frame.frame_index % 2000 == 0:
                rss[result.frame.frame_index] = process.memory_info().rss
            yield result
            assert len(pipeline.policy.tracks) <= 3 + pipeline.cfg.roi.max_age // 5 + 1
            assert len(pipeline.board.latest) <= 3 + pipeline.cfg.roi.max_age // 5 + 1

    pipeline.tracker = lambda frames_in: sampled(tracker(frames_in))

    summary = pipeline.run()

    assert summary["frames"] == frames
    assert summary["tracks"] == frames // 5
    warm = rss[4000]  # after start-up allocations, profiling and planning
    growth_mb = (max(rss.values()) - warm) / 2**20
    print(f"soak: RSS at frame 4000 {warm / 2**20:.0f} MiB, max {max(rss.values()) / 2**20:.0f} "
          f"MiB, growth {growth_mb:.1f} MiB over {frames - 4000} frames")
    assert growth_mb < 64, rss


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("signum, reason, code", SIGNALS)
def test_cli_run_in_stream_processes_when_signalled_then_every_stream_closes_its_outputs(
        tmp_path, tiny_vlm_dir, signum, reason, code):
    out = tmp_path / "run"
    streams = "[{id: a, source: {path: auto}}, {id: b, source: {path: auto}}]"
    proc = subprocess.Popen(
        [sys.executable, "-m", "vidqa.cli", "run", "--out", str(out),
         "--set", f"vlm.model={tiny_vlm_dir}", "--set", "vlm.adaptive.enabled=false",
         "--set", f"streams={streams}", "--set", "run.processes=2"],
        cwd=REPO, env={**os.environ, "VIDQA_OFFLINE": "1"}, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        answered = [out / s / "events.jsonl" for s in ("a", "b")]
        if all(e.exists() and e.read_text().count("\n") >= 2 for e in answered):
            break
        time.sleep(0.2)
    proc.send_signal(signum)  # to the run's process only: it stops the stream processes
    _, stderr = proc.communicate(timeout=300)

    summary = json.loads((out / "summary.json").read_text())
    assert proc.returncode == code, stderr[-2000:]
    assert summary["end_reason"] == reason and summary["processes"] == 2
    merged = (out / "events.jsonl").read_text().splitlines()
    for stream in ("a", "b"):
        own = json.loads((out / stream / "summary.json").read_text())
        assert own["end_reason"] == reason and 0 < own["frames"] < 795
        assert video_frames(out / stream / "annotated.mp4") == own["frames"]
        assert len((out / stream / "events.jsonl").read_text().splitlines()) == own["answers"]
    assert len(merged) == summary["answers"] == sum(
        summary["streams"][s]["answers"] for s in ("a", "b")) >= 4
    assert "Traceback" not in stderr
