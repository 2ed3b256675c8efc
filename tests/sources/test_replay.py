"""Replay as live: a recorded clip played at its own frame rate through the live machinery.

The clips are synthetic: frame ``i`` is a flat grey of level ``i * STEP``, so the decoded
pixels say which recorded frame a consumer got.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from vidqa.config import SourceConfig, load_config
from vidqa.errors import ConfigError, SourceError
from vidqa.messages import VideoFrame
from vidqa.sources import ReplaySource, open_source

STEP = 8  # grey levels between consecutive frames: 30 frames fit in 0..255
SIZE = (96, 64)  # (width, height)


def write_numbered_video(path: Path, frames: int = 30, fps: float = 30.0) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, SIZE)
    assert writer.isOpened(), f"cannot write {path}"
    for i in range(frames):
        writer.write(np.full((SIZE[1], SIZE[0], 3), i * STEP, np.uint8))
    writer.release()
    return path


def write_numbered_mot(root: Path, frames: int = 20, fps: int = 25) -> Path:
    seq = root / "MOT16-99"
    (seq / "img1").mkdir(parents=True)
    for i in range(frames):
        image = np.full((SIZE[1], SIZE[0], 3), i * STEP, np.uint8)
        cv2.imwrite(str(seq / "img1" / f"{i + 1:06d}.jpg"), image)
    (seq / "seqinfo.ini").write_text(
        f"[Sequence]\nname=MOT16-99\nimDir=img1\nframeRate={fps}\nseqLength={frames}\n"
        f"imWidth={SIZE[0]}\nimHeight={SIZE[1]}\nimExt=.jpg\n")
    return seq


def recorded_number(frame: VideoFrame) -> int:
    """Which frame of the recording this is, read from its pixels."""
    return round(float(frame.image.mean()) / STEP)


def replay(path: Path, kind: str = "file", loop: bool = False, work_s: float = 0.0,
           max_frames: int = 0) -> tuple[list[VideoFrame], list[float], dict[str, Any]]:
    """Consume a replayed source, spending ``work_s`` per frame; also the clock at each take."""
    cfg = SourceConfig(kind=kind, replay="realtime", loop=loop)
    frames: list[VideoFrame] = []
    taken_at: list[float] = []
    with open_source(cfg, path) as source:
        assert isinstance(source, ReplaySource)
        for frame in source:
            taken_at.append(source.now())
            frames.append(frame)
            if max_frames and len(frames) >= max_frames:
                break
            time.sleep(work_s)
    return frames, taken_at, source.stats()


@pytest.fixture()
def clip(tmp_path: Path) -> Path:
    return write_numbered_video(tmp_path / "clip.avi")


def test_replay_when_consumer_is_slow_drops_frames_and_counts_them(clip: Path) -> None:
    frames, _, stats = replay(clip, work_s=0.1)  # 10 fps of work against a 30 fps clip

    indices = [f.frame_index for f in frames]
    assert stats["frames_read"] == 30
    assert stats["frames_dropped"] > 0
    assert stats["frames_dropped"] + stats["frames_yielded"] == stats["frames_read"]
    assert len(frames) == stats["frames_yielded"]
    assert indices == sorted(set(indices))
    assert [recorded_number(f) for f in frames] == indices  # the index is the recorded frame
    assert indices[-1] == 29  # the last frame is never replaced, so it is always taken
    assert stats["end_reason"] == "end of file" and stats["loops"] == 0


def test_replay_when_consumer_is_slow_stamps_frames_with_wall_clock(clip: Path) -> None:
    frames, taken_at, _ = replay(clip, work_s=0.1)

    stamps = [f.timestamp for f in frames]
    assert stamps == sorted(stamps) and stamps[0] >= 0
    # a frame is published before it is taken: its stamp never lies after the take
    assert all(stamp <= taken for stamp, taken in zip(stamps, taken_at, strict=True))
    assert all(f.is_live and f.fps == pytest.approx(30.0) for f in frames)


def test_replay_when_consumer_is_fast_gets_nearly_every_frame(clip: Path) -> None:
    frames, _, stats = replay(clip)

    assert stats["frames_read"] == 30
    assert len(frames) >= 25  # a busy machine may steal a frame or two, never most of them
    assert [f.frame_index for f in frames] == sorted({f.frame_index for f in frames})
    assert {f.image.shape for f in frames} == {(SIZE[1], SIZE[0], 3)}


def test_replay_when_looping_plays_past_the_end_and_counts_loops(tmp_path: Path) -> None:
    clip = write_numbered_video(tmp_path / "short.avi", frames=10, fps=50.0)

    frames, _, stats = replay(clip, loop=True, max_frames=25)

    indices = [f.frame_index for f in frames]
    assert len(frames) == 25 and indices[-1] >= 24
    assert indices == sorted(set(indices))  # indices keep increasing across loops
    assert [recorded_number(f) for f in frames] == [i % 10 for i in indices]
    assert stats["loops"] >= 2 and stats["frames_read"] >= 25
    assert stats["frame_count"] is None  # an endless source announces no length
    assert stats["end_reason"] == "stopped by the consumer"
    assert stats["decode_s"] > 0  # every pass decoded on its read-ahead thread, counted


def test_replay_when_source_is_a_mot_sequence_plays_its_images(tmp_path: Path) -> None:
    seq = write_numbered_mot(tmp_path)

    frames, _, stats = replay(seq, kind="mot")

    assert stats["frames_read"] == 20 and stats["end_reason"] == "end of sequence"
    assert all(f.fps == pytest.approx(25.0) and f.is_live for f in frames)
    assert [recorded_number(f) for f in frames] == [f.frame_index for f in frames]


def test_replay_when_closed_early_stops_its_reader(clip: Path) -> None:
    with open_source(SourceConfig(replay="realtime", loop=True), clip) as source:
        next(iter(source))
    assert source._thread is not None and not source._thread.is_alive()


def test_replay_when_opened_but_not_iterated_has_not_started_playing(clip: Path) -> None:
    with open_source(SourceConfig(replay="realtime"), clip) as source:
        time.sleep(0.2)  # a model loading between open and the first frame
        assert source.stats()["frames_read"] == 0
        first = next(iter(source))
    assert recorded_number(first) == first.frame_index  # what it plays is the recording, in order


def test_replay_when_file_is_missing_raises_at_open(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="not found"):
        open_source(SourceConfig(replay="realtime"), tmp_path / "missing.avi")


@pytest.mark.parametrize("overrides, message", [
    (["source.kind=webcam", "source.replay=realtime"], "replay plays a recorded file"),
    (["source.kind=stream", "source.url=rtsp://h/x", "source.replay=realtime"],
     "source.kind to file or mot"),
    (["source.loop=true"], "needs source.replay: realtime"),
    (["source.replay=fast"], "choose one of 'off', 'realtime'"),
    (["source.loop=sometimes"], "must be true or false"),
])
def test_source_config_when_replay_is_misused_raises(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


@pytest.mark.parametrize("overrides, replay, loop", [
    ([], "off", False),
    (["source.replay=off"], "off", False),  # YAML reads a bare off as false
    (["source.replay=realtime", "source.loop=true"], "realtime", True),
    (["source.kind=mot", "source.replay=realtime"], "realtime", False),
])
def test_source_config_when_replay_is_valid_loads(overrides: list[str], replay: str,
                                                  loop: bool) -> None:
    cfg = load_config(None, overrides).source
    assert (cfg.replay, cfg.loop) == (replay, loop)
