"""Sources: files and MOT sequences read exactly, live streams against a real RTSP server.

The live tests (marked ``rtsp``) start gst-rtsp-server on 127.0.0.1 through
``tests/rtsp_server.py`` and kill, restart and stall it under a reading source.
"""

from __future__ import annotations

import os
import re
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from factories import write_mot_sequence, write_video
from loguru import logger
from rtsp_server import RtspServer, free_port, server_available

from vidqa.config import SourceConfig
from vidqa.errors import SourceError
from vidqa.messages import VideoFrame
from vidqa.sources import LiveSource, open_source, redact_url, to_bgr


@pytest.fixture()
def warnings() -> Iterator[list[str]]:
    """Messages loguru logs at WARNING or above while the test runs."""
    messages: list[str] = []
    handler = logger.add(lambda m: messages.append(m.record["message"]), level="WARNING")
    yield messages
    logger.remove(handler)


def file_cfg() -> SourceConfig:
    return SourceConfig(kind="file")


def read_all(cfg: SourceConfig, path: Path) -> tuple[list[VideoFrame], dict[str, Any]]:
    with open_source(cfg, path) as source:
        frames = list(source)
    return frames, source.stats()


# ---- files -------------------------------------------------------------------------------------

@pytest.mark.parametrize("frames, fps, size, codec", [
    (12, 10.0, (160, 120), "MJPG"),
    (9, 25.0, (90, 66), "MJPG"),  # not multiples of 16 (OpenCV's writer cannot write odd sizes)
    (5, 7.5, (64, 48), "mp4v"),
])
def test_file_source_when_video_is_whole_yields_every_frame_at_index_over_fps(
        tmp_path: Path, frames: int, fps: float, size: tuple[int, int], codec: str) -> None:
    ext = ".avi" if codec == "MJPG" else ".mp4"
    video = write_video(tmp_path / f"clip{ext}", frames, size, fps, codec)

    got, stats = read_all(file_cfg(), video)

    assert [f.frame_index for f in got] == list(range(frames))
    assert [f.timestamp for f in got] == pytest.approx([i / fps for i in range(frames)])
    assert {f.image.shape for f in got} == {(size[1], size[0], 3)}
    assert all(f.fps == pytest.approx(fps) and not f.is_live for f in got)
    assert stats["frames_read"] == stats["frames_yielded"] == frames
    assert stats["frames_dropped"] == 0
    assert stats["frame_count"] == frames and stats["size"] == list(size)
    assert stats["end_reason"] == "end of file" and stats["last_good_frame"] == frames - 1


@pytest.mark.parametrize("keep", [0.5, 0.8])
def test_file_source_when_video_is_truncated_stops_at_last_good_frame(
        tmp_path: Path, keep: float, warnings: list[str]) -> None:
    video = write_video(tmp_path / "clip.avi", 30)
    data = video.read_bytes()
    video.write_bytes(data[:int(len(data) * keep)])

    got, stats = read_all(file_cfg(), video)

    assert 0 < len(got) < 30
    assert stats["last_good_frame"] == got[-1].frame_index == len(got) - 1
    assert stats["end_reason"].startswith("truncated or corrupt: last good frame")
    assert any("truncated" in w for w in warnings)


def test_file_source_when_bytes_are_corrupt_midway_ends_without_traceback(
        tmp_path: Path) -> None:
    video = write_video(tmp_path / "clip.avi", 30)
    data = bytearray(video.read_bytes())
    rng = np.random.default_rng(0)
    middle = len(data) // 2
    data[middle:middle + 4000] = rng.integers(0, 256, 4000, dtype=np.uint8).tobytes()
    video.write_bytes(bytes(data))

    got, stats = read_all(file_cfg(), video)

    assert len(got) >= 10  # the frames before the damage
    assert all(f.image.shape == (120, 160, 3) for f in got)
    assert stats["last_good_frame"] == got[-1].frame_index
    assert stats["end_reason"] == "end of file" or "corrupt" in stats["end_reason"]


def _write_text(path: Path) -> Path:
    path.write_text("not a video\n" * 50)
    return path


def _write_header_only(path: Path) -> Path:
    video = write_video(path, 10)
    video.write_bytes(video.read_bytes()[:200])
    return video


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "missing.mp4", r"missing\.mp4 not found: check source\.path"),
    (lambda d: (d / "empty.mp4").touch() or d / "empty.mp4",
     r"empty\.mp4 is empty \(0 bytes\)"),
    (lambda d: d, r"is a folder, but source\.kind is 'file'"),
    (lambda d: _write_text(d / "notes.mp4"), r"cannot open .*notes\.mp4 as a video.*Convert it"),
    (lambda d: _write_header_only(d / "cut.avi"),
     r"cannot open .*cut\.avi as a video|cut\.avi opens but has no decodable"),
])
def test_open_source_when_file_is_unusable_raises_source_error_naming_it(
        tmp_path: Path, make: Callable[[Path], Path], message: str) -> None:
    with pytest.raises(SourceError, match=message):
        open_source(file_cfg(), make(tmp_path))


def test_open_source_when_path_is_auto_and_unresolved_raises() -> None:
    with pytest.raises(SourceError, match="source.path is 'auto'"):
        open_source(file_cfg(), None)


@pytest.mark.parametrize("image", [
    np.full((5, 7), 9, np.uint8),
    np.full((5, 7, 1), 9, np.uint8),
    np.dstack([np.full((5, 7, 3), 9, np.uint8), np.full((5, 7), 255, np.uint8)]),
    np.full((5, 7, 3), 9 * 256, np.uint16),
])
def test_to_bgr_when_frame_is_gray_bgra_or_16_bit_gives_uint8_bgr(image: np.ndarray) -> None:
    out = to_bgr(image)
    assert out.shape == (5, 7, 3) and out.dtype == np.uint8
    assert (out == 9).all()


def test_file_source_when_video_is_grayscale_yields_bgr(tmp_path: Path) -> None:
    path = tmp_path / "gray.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (34, 18),
                             isColor=False)
    for i in range(4):
        writer.write(np.full((18, 34), 40 * i, np.uint8))
    writer.release()

    got, _ = read_all(file_cfg(), path)

    assert len(got) == 4 and all(f.image.shape == (18, 34, 3) for f in got)
    assert abs(int(got[3].image.mean()) - 120) < 5


class _SpyCapture:
    """A real capture that records its release calls (a wrapper: subclasses of cv2 types
    crash OpenCV's bindings when the garbage collector clears them)."""

    def __init__(self, released: list[int], real: type, *args: Any) -> None:
        self._capture = real(*args)
        self._released = released

    def release(self) -> None:
        self._released.append(1)
        self._capture.release()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._capture, name)


@pytest.fixture()
def spy_capture(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    released: list[int] = []
    real = cv2.VideoCapture
    monkeypatch.setattr(cv2, "VideoCapture", lambda *args: _SpyCapture(released, real, *args))
    return released


def _break_from_bare_loop(source: Any) -> None:
    for frame in source:  # no `with`: only the generator's finally can release
        if frame.frame_index == 2:
            break


def _break_inside_with(source: Any) -> None:
    with source:
        for frame in source:
            if frame.frame_index == 2:
                break


def _raise_inside_with(source: Any) -> None:
    with pytest.raises(RuntimeError), source:
        for _ in source:
            raise RuntimeError("consumer failed")


@pytest.mark.parametrize("consume", [_break_from_bare_loop, _break_inside_with,
                                     _raise_inside_with, lambda s: s.close()])
def test_file_source_when_consumer_stops_early_releases_capture(
        tmp_path: Path, spy_capture: list[int], consume: Callable[[Any], None]) -> None:
    source = open_source(file_cfg(), write_video(tmp_path / "clip.avi", 20))
    assert spy_capture == []

    consume(source)

    assert len(spy_capture) == 1
    assert source.stats()["end_reason"] in ("stopped by the consumer", "closed before the end")


# ---- MOT sequences -----------------------------------------------------------------------------

@pytest.mark.parametrize("size", [(64, 48), (161, 121)])
def test_mot_source_when_sequence_is_valid_yields_images_at_ini_rate(
        tmp_path: Path, size: tuple[int, int]) -> None:
    seq = write_mot_sequence(tmp_path, 8, size=size, fps=30)

    got, stats = read_all(SourceConfig(kind="mot"), seq)

    assert [f.frame_index for f in got] == list(range(8))
    assert [f.timestamp for f in got] == pytest.approx([i / 30 for i in range(8)])
    assert {f.image.shape for f in got} == {(size[1], size[0], 3)}
    assert stats["fps"] == 30 and stats["size"] == list(size) and stats["frame_count"] == 8
    assert stats["source_id"] == "MOT16-00" and stats["end_reason"] == "end of sequence"


def _ini_set(seq: Path, key: str, value: str | None) -> None:
    lines = [ln for ln in (seq / "seqinfo.ini").read_text().splitlines()
             if not ln.startswith(f"{key}=")]
    if value is not None:
        lines.append(f"{key}={value}")
    (seq / "seqinfo.ini").write_text("\n".join(lines) + "\n")


def _parent_of_sequences(root: Path) -> Path:
    for name in ("MOT16-02", "MOT16-04"):
        write_mot_sequence(root / "train", 2, name=name)
    return root / "train"


def _without_ini(root: Path) -> Path:
    seq = write_mot_sequence(root, 2)
    (seq / "seqinfo.ini").unlink()
    return seq


def _without_img1(root: Path) -> Path:
    seq = write_mot_sequence(root, 2)
    for image in (seq / "img1").iterdir():
        image.unlink()
    (seq / "img1").rmdir()
    return seq


def _empty_img1(root: Path) -> Path:
    seq = write_mot_sequence(root, 2)
    for image in (seq / "img1").iterdir():
        image.unlink()
    return seq


def _with_ini(key: str, value: str | None) -> Callable[[Path], Path]:
    def make(root: Path) -> Path:
        seq = write_mot_sequence(root, 2)
        _ini_set(seq, key, value)
        return seq
    return make


def _corrupt_first_image(root: Path) -> Path:
    seq = write_mot_sequence(root, 2)
    (seq / "img1" / "000001.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    return seq


@pytest.mark.parametrize("make, message", [
    (_parent_of_sequences, r"holds MOT sequences but is not one: found MOT16-02, MOT16-04"),
    (lambda r: (r / "empty").mkdir() or r / "empty", r"is not a MOT sequence: expected"),
    (lambda r: r / "nope", r"MOT sequence folder .*nope not found"),
    (lambda r: write_video(r / "clip.avi", 2), r"is a file, but source\.kind is 'mot'"),
    (_without_ini, r"has img1/ but no seqinfo\.ini: add one"),
    (_without_img1, r"img1 not found: seqinfo\.ini says imDir=img1"),
    (_empty_img1, r"img1 has no \*\.jpg images"),
    (_with_ini("frameRate", None), r"seqinfo\.ini is malformed .*frameRate"),
    (_with_ini("frameRate", "0"), r"frameRate=0\.0 is not a usable frame rate"),
    (_with_ini("seqLength", "many"), r"seqinfo\.ini is malformed"),
    (_with_ini("imWidth", "640"), r"000001\.jpg is 160x120 but seqinfo\.ini .* says 640x120"),
    (_corrupt_first_image, r"000001\.jpg cannot be decoded"),
])
def test_open_source_when_mot_folder_is_not_a_valid_sequence_raises_with_fix(
        tmp_path: Path, make: Callable[[Path], Path], message: str) -> None:
    with pytest.raises(SourceError, match=message):
        open_source(SourceConfig(kind="mot"), make(tmp_path))


def test_mot_source_when_seq_length_disagrees_warns_and_reads_images_present(
        tmp_path: Path, warnings: list[str]) -> None:
    seq = write_mot_sequence(tmp_path, 6)
    _ini_set(seq, "seqLength", "10")

    got, stats = read_all(SourceConfig(kind="mot"), seq)

    assert len(got) == 6 and stats["frame_count"] == 6
    assert any("seqLength=10 but img1 has 6 images" in w for w in warnings)


def test_mot_source_when_an_image_is_missing_keeps_file_numbers_as_indices(
        tmp_path: Path) -> None:
    seq = write_mot_sequence(tmp_path, 5, fps=10)
    (seq / "img1" / "000003.jpg").unlink()

    got, _ = read_all(SourceConfig(kind="mot"), seq)

    assert [f.frame_index for f in got] == [0, 1, 3, 4]
    assert got[2].timestamp == pytest.approx(0.3)


def test_mot_source_when_an_image_is_corrupt_stops_at_last_good_frame(
        tmp_path: Path, warnings: list[str]) -> None:
    seq = write_mot_sequence(tmp_path, 6)
    (seq / "img1" / "000004.jpg").write_bytes(b"garbage")

    got, stats = read_all(SourceConfig(kind="mot"), seq)

    assert [f.frame_index for f in got] == [0, 1, 2]
    assert stats["end_reason"] == "unreadable image 000004.jpg: last good frame 2"
    assert any("000004.jpg cannot be decoded" in w for w in warnings)


# ---- live sources without a server -------------------------------------------------------------

@pytest.mark.parametrize("url", ["rtps://127.0.0.1/live", "127.0.0.1:8554/live", "rtsp://",
                                 "rtsp://127.0.0.1:99999/live"])
def test_open_source_when_url_is_malformed_raises_at_once(url: str) -> None:
    started = time.monotonic()
    with pytest.raises(SourceError, match="source.url"):
        open_source(SourceConfig(kind="stream", url=url))
    assert time.monotonic() - started < 1.0


def test_open_source_when_webcam_is_missing_raises_naming_the_index() -> None:
    with pytest.raises(SourceError, match=r"webcam device 87 is missing or busy.*/dev/video87"):
        open_source(SourceConfig(kind="webcam", device=87))


@pytest.mark.parametrize("url, shown", [
    ("rtsp://admin:s3cret@cam.local:554/h264", "rtsp://admin:***@cam.local:554/h264"),
    ("rtsp://cam.local/live", "rtsp://cam.local/live"),
])
def test_redact_url_when_url_has_a_password_hides_it(url: str, shown: str) -> None:
    assert redact_url(url) == shown


# ---- live sources against a real RTSP server on loopback ---------------------------------------

def live_cfg(url: str, **overrides: Any) -> SourceConfig:
    """Short timeouts so every failure path ends within seconds."""
    values: dict[str, Any] = {"kind": "stream", "url": url, "stall_timeout_s": 1.0,
                              "reconnect_initial_s": 0.1, "reconnect_max_s": 0.8,
                              "open_timeout_s": 2.0, "max_reconnects": 10}
    values.update(overrides)
    return SourceConfig(**values)


def _require_server() -> None:
    reason = server_available()
    if reason is None:
        return
    if os.environ.get("CI"):  # CI installs the server: missing it there is a failure
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture()
def served_video(tmp_path: Path) -> Path:
    return write_video(tmp_path / "served.avi", 50, size=(160, 120), fps=25.0)


@pytest.fixture()
def rtsp_server(served_video: Path) -> Iterator[RtspServer]:
    _require_server()
    with RtspServer(served_video, fps=25.0) as server:
        yield server


def _nearest_frame_error(image: np.ndarray, video: Path) -> float:
    """Mean absolute difference to the closest frame of ``video`` (JPEG-sized errors only)."""
    capture = cv2.VideoCapture(str(video))
    best = 255.0
    ok, frame = capture.read()
    while ok:
        best = min(best, float(np.abs(frame.astype(int) - image.astype(int)).mean()))
        ok, frame = capture.read()
    capture.release()
    return best


def _reader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("vidqa-reader-")]


@pytest.mark.rtsp
@pytest.mark.timeout(60)
def test_stream_source_when_server_serves_yields_live_frames_of_the_video(
        rtsp_server: RtspServer, served_video: Path) -> None:
    with open_source(live_cfg(rtsp_server.url)) as source:
        frames = [f for _, f in zip(range(30), source, strict=False)]
    stats = source.stats()

    assert all(f.is_live and f.image.shape == (120, 160, 3) and f.fps == 25 for f in frames)
    assert np.all(np.diff([f.frame_index for f in frames]) >= 1)
    assert np.all(np.diff([f.timestamp for f in frames]) > 0) and frames[0].timestamp >= 0
    assert _nearest_frame_error(frames[-1].image, served_video) < 8
    assert stats["frames_yielded"] == 30 <= stats["frames_read"]
    assert stats["reconnects"] == 0 and stats["size"] == [160, 120]
    assert stats["source_id"] == rtsp_server.url
    assert stats["end_reason"] == "stopped by the consumer"
    assert _reader_threads() == []  # the reader stopped on close


@pytest.mark.rtsp
@pytest.mark.timeout(90)
def test_stream_source_when_server_restarts_reconnects_each_time(
        rtsp_server: RtspServer) -> None:
    restarts, per_restart, frames_after = 3, 10, [0]
    with open_source(live_cfg(rtsp_server.url)) as source:
        for _ in source:
            frames_after[-1] += 1
            if frames_after[-1] < per_restart:
                continue
            if len(frames_after) > restarts:
                break
            rtsp_server.restart(down_s=0.3)
            frames_after.append(0)
    stats = source.stats()

    assert frames_after == [per_restart] * (restarts + 1)  # frames flowed after every restart
    assert stats["reconnects"] == restarts
    assert stats["reconnect_reasons"] == {"end of stream or read error": restarts}
    assert len(stats["outages_s"]) == restarts and stats["stall_s"] > 0.3 * restarts


@pytest.mark.rtsp
@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["freeze", "drop"])
def test_stream_source_when_server_stalls_takes_the_stall_path(
        rtsp_server: RtspServer, mode: str) -> None:
    stall_s, frames = 2.5, []
    resume = threading.Timer(stall_s, rtsp_server.resume)
    try:
        with open_source(live_cfg(rtsp_server.url)) as source:
            for frame in source:
                frames.append(frame)
                if len(frames) == 5:
                    rtsp_server.stall(mode)
                    resume.start()
                if len(frames) == 10:
                    break
    finally:
        resume.cancel()
    stats = source.stats()

    assert stats["stalls"] == 1 and stats["reconnect_reasons"] == {"stall": 1}
    assert stats["reconnect_attempts"] >= 1 and stats["reconnects"] == 1
    # The outage reaches the tracker only as a timestamp gap at least as long as the stall.
    assert np.diff([f.timestamp for f in frames]).max() >= stall_s - 0.2


@pytest.mark.rtsp
@pytest.mark.timeout(60)
def test_live_source_when_consumer_is_slow_drops_frames_and_latency_stays_bounded(
        tmp_path: Path) -> None:
    _require_server()
    video = write_video(tmp_path / "big.avi", 50, size=(320, 240), fps=25.0)
    latencies, memory = [], []
    with RtspServer(video, fps=25.0) as server, open_source(live_cfg(server.url)) as source:
        assert isinstance(source, LiveSource)
        tracemalloc.start()
        try:
            for i, frame in enumerate(source):
                latencies.append(source.now() - frame.timestamp)
                memory.append(tracemalloc.get_traced_memory()[0])
                time.sleep(0.2)  # a consumer 5x slower than the 25 fps camera
                if i == 19:
                    break
        finally:
            tracemalloc.stop()
    stats = source.stats()

    # 20 frames over ~4 s of a 25 fps stream: most of the ~100 read frames were dropped.
    assert stats["frames_dropped"] >= 50
    assert stats["frames_dropped"] == stats["frames_read"] - stats["frames_yielded"]
    # A queue would make latency grow by 0.16 s per frame (3 s by the end); the newest-frame
    # slot keeps it within about one frame period plus scheduling.
    assert max(latencies) < 0.5
    # A queue would also hold ~80 frames of 230 KB (18 MB) by the end.
    assert memory[-1] - memory[4] < 2_000_000


@pytest.mark.rtsp
@pytest.mark.timeout(60)
def test_stream_source_when_max_fps_is_set_caps_the_rate_by_dropping(
        rtsp_server: RtspServer) -> None:
    with open_source(live_cfg(rtsp_server.url, max_fps=5.0)) as source:
        frames = [f for _, f in zip(range(10), source, strict=False)]
    stats = source.stats()

    gaps = np.diff([f.timestamp for f in frames])
    assert gaps.min() >= 0.15 and frames[0].fps == 5.0
    assert stats["frames_dropped"] >= 20


@pytest.mark.rtsp
@pytest.mark.timeout(30)
@pytest.mark.parametrize("max_reconnects", [0, 2])
def test_stream_source_when_url_is_unreachable_raises_within_seconds(
        max_reconnects: int, warnings: list[str]) -> None:
    url = f"rtsp://127.0.0.1:{free_port()}/live"
    started = time.monotonic()
    expected = (rf"{re.escape(url)}: gave up after {max_reconnects} failed reconnect "
                r"attempts?.*connection refused")
    with open_source(live_cfg(url, max_reconnects=max_reconnects)) as source, \
            pytest.raises(SourceError, match=expected):
        next(iter(source))

    assert time.monotonic() - started < 5.0
    assert source.stats()["reconnect_attempts"] == max_reconnects
    retries = [w for w in warnings if re.search(r"reconnect attempt \d+ \(", w)]
    assert len(retries) == max_reconnects and all(url in w and "ffprobe" in w for w in retries)


@pytest.mark.rtsp
@pytest.mark.timeout(60)
def test_stream_source_when_server_dies_for_good_ends_with_reason_after_retries(
        rtsp_server: RtspServer) -> None:
    count = 0
    with open_source(live_cfg(rtsp_server.url, max_reconnects=2)) as source:
        for _ in source:  # ends by itself: no exception once the stream had played
            count += 1
            if count == 5:
                rtsp_server.kill()
    stats = source.stats()

    assert count >= 5
    assert stats["end_reason"].startswith("gave up after 2 failed reconnect attempts")
    assert "connection refused" in stats["end_reason"]
    assert stats["reconnect_attempts"] == 2 and stats["reconnects"] == 0


@pytest.mark.rtsp
@pytest.mark.timeout(60)
def test_stream_source_when_consumer_stops_early_stops_reader_and_releases(
        rtsp_server: RtspServer, spy_capture: list[int]) -> None:
    spy_capture.clear()
    source = open_source(live_cfg(rtsp_server.url))
    for frame in source:  # bare loop: only the generator's finally can release
        if frame.frame_index >= 3:
            break

    assert _reader_threads() == []
    assert len(spy_capture) == 1
    assert source.stats()["end_reason"] == "stopped by the consumer"
