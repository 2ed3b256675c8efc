"""Alert clips: a ring buffer bounded by seconds and bytes, one WebM per alert (or per run of
overlapping alerts) that OpenCV reads back frame by frame, drops on a live stream counted."""

from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
from factories import detections

from vidqa.config import AlertsConfig
from vidqa.messages import Clip, FrameResult, VideoFrame
from vidqa.sinks.clips import Buffered, ClipSink, RingBuffer, scaled
from vidqa.zones import Alert

FPS = 10.0


def frame_result(index: int, alert_tracks: tuple[int, ...] = (), fps: float = FPS,
                 size: tuple[int, int] = (160, 120), noise: bool = False) -> FrameResult:
    """Frame ``index`` at ``index / fps`` s: a box that moves, alerts for ``alert_tracks``."""
    width, height = size
    if noise:  # JPEG cannot shrink it: large frames for the cap
        image = np.random.default_rng(index).integers(0, 256, (height, width, 3), np.uint8)
    else:
        image = np.full((height, width, 3), 40, np.uint8)
        cv2.putText(image, str(index), (10, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (255, 255, 255))
    frame = VideoFrame(image, index, index / fps, "test", fps)
    x = (3 * index) % (width - 30)
    alerts = tuple(Alert("r", track, "zone", "q", "no", index, index / fps, 0.0,
                         (x, 40, x + 20, 100)) for track in alert_tracks)
    return FrameResult(frame, detections([(x, 40, x + 20, 100)], [1]), alerts=alerts)


def run_sink(folder: Path, frames: int, alerts: dict[int, tuple[int, ...]], live: bool = False,
             **settings) -> tuple[ClipSink, list[Clip]]:
    """``frames`` frames through a ClipSink, alerts at the given frames; the clips it reported."""
    clips: list[Clip] = []
    sink = ClipSink(folder, "cam", AlertsConfig(**settings), clips.append, live=live)
    for index in range(frames):
        sink.write(frame_result(index, alerts.get(index, ())))
    sink.close()
    return sink, clips


def frames_in(path: Path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    assert capture.isOpened(), f"{path} does not open"
    images = []
    while True:
        ok, image = capture.read()
        if not ok:
            break
        images.append(image)
    capture.release()
    return images


def test_clip_sink_when_an_alert_is_raised_then_a_webm_of_pre_and_post_seconds(tmp_path):
    sink, (clip,) = run_sink(tmp_path, 200, {100: (7,)}, clip_pre_s=2.0, clip_post_s=3.0)

    path = tmp_path / clip.path
    assert clip.path.startswith("clips/cam/alert-") and path.suffix == ".webm"
    assert (clip.first_frame, clip.last_frame) == (80, 130)  # 2 s before, 3 s after
    assert len(frames_in(path)) == clip.frames == 51
    assert clip.alerts == (("r", 7, 100),) and clip.cut == "after" and clip.fps == FPS
    assert clip.bytes == path.stat().st_size > 0
    assert sink.summary()["clips"] == 1 and sink.summary()["bytes"] == clip.bytes


def test_clip_sink_when_alerts_overlap_then_they_share_one_clip_and_no_frame_twice(tmp_path):
    alerts = {100: (1,), 120: (2,), 170: (3,)}  # the second during the first clip
    _, clips = run_sink(tmp_path, 250, alerts, clip_pre_s=2.0, clip_post_s=3.0)

    first, second = clips
    assert first.alerts == (("r", 1, 100), ("r", 2, 120))
    assert (first.first_frame, first.last_frame) == (80, 150)  # extended to 3 s after the 2nd
    # the next alert's 2 s before reach into the first clip: only the frames after it
    assert (second.first_frame, second.last_frame) == (151, 200)
    assert [len(frames_in(tmp_path / c.path)) for c in clips] == [71, 50]


def test_clip_sink_when_alerts_keep_coming_then_a_clip_ends_at_clip_max_s(tmp_path):
    alerts = {index: (index,) for index in range(100, 300, 10)}
    _, clips = run_sink(tmp_path, 320, alerts, clip_pre_s=2.0, clip_post_s=3.0, clip_max_s=8.0)

    assert [c.cut for c in clips] == ["max", "max", "end"]
    assert [c.first_frame for c in clips] == [80, 161, 242]  # each after the one before
    assert [c.frames for c in clips] == [81, 81, 78]  # at most 8 s
    shown = [key for c in clips for key in c.alerts]
    assert sorted(shown) == sorted(("r", t, t) for t in alerts)  # every alert in one clip


def test_clip_sink_when_the_stream_ends_mid_clip_then_the_clip_is_closed_and_plays(tmp_path):
    _, (clip,) = run_sink(tmp_path, 110, {100: (1,)}, clip_pre_s=2.0, clip_post_s=5.0)

    assert clip.cut == "end" and (clip.first_frame, clip.last_frame) == (80, 109)
    assert len(frames_in(tmp_path / clip.path)) == 30


def test_clip_sink_when_alert_comes_early_then_the_clip_starts_with_the_stream(tmp_path):
    _, (clip,) = run_sink(tmp_path, 60, {5: (1,)}, clip_pre_s=3.0, clip_post_s=1.0)

    assert (clip.first_frame, clip.last_frame, clip.frames) == (0, 15, 16)


def test_clip_sink_when_clip_fps_is_lower_then_frames_are_skipped_and_it_plays_at_that_rate(
        tmp_path):
    _, (clip,) = run_sink(tmp_path, 200, {100: (1,)}, clip_pre_s=2.0, clip_post_s=2.0,
                          clip_fps=5.0)

    assert clip.fps == 5.0 and clip.frames == 21 == len(frames_in(tmp_path / clip.path))


def test_clip_sink_when_frames_are_wide_then_scaled_to_clip_width(tmp_path):
    clips: list[Clip] = []
    sink = ClipSink(tmp_path, "cam", AlertsConfig(clip_pre_s=1, clip_post_s=1, clip_width=320),
                    clips.append)
    for index in range(40):
        sink.write(frame_result(index, (1,) if index == 20 else (), size=(641, 481)))
    sink.close()

    assert frames_in(tmp_path / clips[0].path)[0].shape == (240, 320, 3)


@pytest.mark.parametrize("size, width, expected", [
    ((640, 480), 320, (320, 240)),
    ((641, 481), 0, (640, 480)),  # VP8 wants even sides
    ((320, 240), 640, (320, 240)),  # never scaled up
    ((1920, 1080), 640, (640, 360)),
])
def test_scaled_when_width_is_capped_then_even_sides_and_the_aspect_kept(size, width, expected):
    image = np.zeros((size[1], size[0], 3), np.uint8)
    out = scaled(image, width)
    assert (out.shape[1], out.shape[0]) == expected


def buffered(index: int, size: int) -> Buffered:
    return Buffered(b"\0" * size, index, index / FPS, FPS, 0.0)


def test_ring_buffer_when_frames_outlast_its_seconds_then_the_oldest_go():
    ring = RingBuffer(seconds=2.0, max_bytes=10**9)
    for index in range(100):
        ring.push(buffered(index, 10))

    assert [f.frame_index for f in ring.frames] == list(range(79, 100))  # 2 s before the last
    assert ring.bytes == 210 and ring.evicted_for_size == 0


def test_ring_buffer_when_a_long_stream_passes_its_cap_then_it_never_holds_more(tmp_path):
    cap_mb = 0.5
    clips: list[Clip] = []
    sink = ClipSink(tmp_path, "cam", AlertsConfig(clip_pre_s=30, clip_post_s=1,
                                                  clip_buffer_mb=cap_mb), clips.append)
    for index in range(600):  # a minute of frames that JPEG cannot shrink
        sink.write(frame_result(index, (1,) if index == 590 else (), noise=True))
    sink.close()

    summary = sink.summary()
    assert 0 < summary["buffer_peak_bytes"] <= summary["buffer_cap_bytes"] == cap_mb * 1e6
    assert summary["buffer_evicted_for_size"] > 0
    (clip,) = clips
    # the cap, not clip_pre_s, bounded what came before the alert
    assert 0 < 590 - clip.first_frame < 300
    assert clip.frames == len(frames_in(tmp_path / clip.path))


class GatedClipSink(ClipSink):
    """A clip writer that waits at its first frame until ``gate`` opens: the queue fills."""

    def _take(self, item: Buffered) -> None:
        self.gate.wait(timeout=30)
        super()._take(item)


def test_clip_sink_when_live_queue_is_full_then_frames_drop_counted_and_alerts_carry_over(
        tmp_path):
    clips: list[Clip] = []
    sink = GatedClipSink(tmp_path, "cam", AlertsConfig(clip_pre_s=1, clip_post_s=1,
                                                      clip_queue=2), clips.append, live=True)
    sink.gate = threading.Event()
    for index in range(30):
        sink.write(frame_result(index, (5,) if index == 10 else ()))
    held = sink.counts["dropped_frames"]
    sink.gate.set()
    sink.write(frame_result(30))  # carries the alert of dropped frame 10
    for index in range(31, 60):
        sink.write(frame_result(index))
    sink.close()

    assert held >= 30 - 3  # one frame with the writer, two in the queue, the rest dropped
    assert any(("r", 5, 10) in clip.alerts for clip in clips)
