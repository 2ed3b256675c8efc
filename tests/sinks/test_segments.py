from pathlib import Path

import cv2
import numpy as np
import pytest
from factories import detections
from loguru import logger

from vidqa.errors import OutputError
from vidqa.messages import FrameResult, Segment, VideoFrame
from vidqa.sinks import SegmentSink

NOW = 1_796_339_700.0  # 2026-12-03 23:15:00 UTC


def result(index: int, timestamp: float | None = None, size: tuple[int, int] = (160, 120),
           gap_s: float = 0.0) -> FrameResult:
    """Frame ``index`` at 10 fps with one tracked person and one untracked box."""
    width, height = size
    image = np.full((height, width, 3), index % 256, np.uint8)
    frame = VideoFrame(image=image, frame_index=index,
                       timestamp=index / 10 if timestamp is None else timestamp,
                       source_id="t", fps=10.0, gap_s=gap_s)
    boxes = detections([(10, 20, 60, 110), (70, 20, 90, 60)], [7, -1])
    return FrameResult(frame=frame, detections=boxes)


def recorder(folder: Path, received: list, segment_s: float = 1.0, **kwargs) -> SegmentSink:
    return SegmentSink(folder, "cam", segment_s, received.append, clock=lambda: NOW, **kwargs)


def frames_in(path: str) -> int:
    capture = cv2.VideoCapture(path)
    assert capture.isOpened(), path
    count = 0
    while True:
        ok, image = capture.read()
        if not ok:
            break
        assert image.shape == (120, 160, 3)
        count += 1
    capture.release()
    return count


def mot_frames(path: str) -> list[int]:
    """0-based frame indices of the rows of a MOT file."""
    return [int(line.split(",")[0]) - 1 for line in Path(path).read_text().splitlines()]


def name_of(path: str) -> str:
    return Path(path).name.split(".")[0]


def files_on_disk(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((folder / "segments").iterdir())}


def test_segment_sink_when_3_5_s_at_10_fps_then_four_playable_segments_cover_every_frame(
        tmp_path):
    received: list[Segment] = []
    with recorder(tmp_path, received) as sink:
        for i in range(35):
            sink.write(result(i))
        open_mot = tmp_path / "segments" / "20261203T231500Z-0004.mot.txt"
        assert mot_frames(str(open_mot)) == list(range(30, 35))  # flushed before close

    assert [s.frames for s in received] == [10, 10, 10, 5]
    assert [(s.first_frame, s.last_frame) for s in received] == [(0, 9), (10, 19), (20, 29),
                                                                 (30, 34)]
    assert [(s.started_s, s.ended_s) for s in received] == [(0.0, 0.9), (1.0, 1.9), (2.0, 2.9),
                                                            (3.0, 3.4)]
    for segment in received:
        video, mot = segment.files
        assert segment.video == video and video.endswith(".mp4") and mot.endswith(".mot.txt")
        assert frames_in(video) == segment.frames
        assert mot_frames(mot) == list(range(segment.first_frame, segment.last_frame + 1))
        assert segment.bytes == sum(Path(f).stat().st_size for f in segment.files)
        assert segment.stream_id == "cam" and segment.wall_started == NOW
    names = [Path(s.video).name for s in received]
    assert names == [f"20261203T231500Z-000{n}.mp4" for n in range(1, 5)]
    assert len(files_on_disk(tmp_path)) == 8


@pytest.mark.parametrize("frames, firsts", [
    # a looped file: stream time restarts at 0, indices keep counting
    ([result(i, timestamp=(i % 5) / 10) for i in range(10)], [0, 5]),
    ([result(i, gap_s=5.0 if i == 3 else 0.0) for i in range(6)], [0, 3]),  # an outage
    ([result(i, gap_s=1.0 if i == 3 else 0.0) for i in range(6)], [0]),  # a hiccup is not one
    ([result(i, size=(160, 120) if i < 4 else (80, 60)) for i in range(6)], [0, 4]),
])
def test_segment_sink_when_time_jumps_back_or_outage_or_resize_then_new_segment(
        tmp_path, frames, firsts):
    received: list[Segment] = []
    with recorder(tmp_path, received, segment_s=60.0) as sink:
        for frame in frames:
            sink.write(frame)

    assert [s.first_frame for s in received] == firsts
    assert sum(s.frames for s in received) == len(frames)
    for segment in received:
        assert mot_frames(segment.files[1]) == list(range(segment.first_frame,
                                                          segment.last_frame + 1))


@pytest.mark.parametrize("earlier", [
    {"video": True, "mot": True},
    {"video": False, "mot": True},  # its names are free for an .mp4 but not for a .mot.txt
    {"video": True, "mot": False},
])
def test_segment_sink_when_restarted_into_same_folder_then_earlier_files_kept(tmp_path, earlier):
    first: list[Segment] = []
    with recorder(tmp_path, first, **earlier) as sink:  # same clock: both want the same names
        for i in range(25):
            sink.write(result(i))
    before = files_on_disk(tmp_path)

    second: list[Segment] = []
    with recorder(tmp_path, second) as sink:
        for i in range(15):
            sink.write(result(i))

    after = files_on_disk(tmp_path)
    assert {name: after[name] for name in before} == before
    assert len(after) == len(before) + 2 * len(second) == len(before) + 4
    assert {name_of(f) for s in first for f in s.files}.isdisjoint(
        name_of(f) for s in second for f in s.files)


def test_segment_sink_when_two_recorders_share_folder_at_once_then_names_never_collide(tmp_path):
    received: list[Segment] = []
    a, b = recorder(tmp_path, received), recorder(tmp_path, received)
    for i in range(20):
        a.write(result(i))
        b.write(result(i))
    a.close()
    b.close()

    assert len({s.video for s in received}) == len(received) == 4
    for segment in received:
        assert frames_in(segment.video) == segment.frames == 10


def test_segment_sink_when_on_segment_fails_then_recording_goes_on_and_logs_once(tmp_path):
    def broken(segment: Segment) -> None:
        raise RuntimeError("store is down")

    errors: list[str] = []
    handler = logger.add(errors.append, level="ERROR")
    try:
        with SegmentSink(tmp_path, "cam", 1.0, broken, clock=lambda: NOW) as sink:
            for i in range(35):
                sink.write(result(i))
    finally:
        logger.remove(handler)

    assert sink.segments == sink.callback_errors == 4
    assert len(errors) == 1 and "store is down" in errors[0]
    videos = sorted((tmp_path / "segments").glob("*.mp4"))
    assert [frames_in(str(v)) for v in videos] == [10, 10, 10, 5]


def test_segment_sink_when_closed_without_frames_then_writes_and_emits_nothing(tmp_path):
    received: list[Segment] = []
    sink = recorder(tmp_path, received)
    sink.close()

    assert received == []
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("video, mot, suffixes", [
    (True, False, [".mp4"]),
    (False, True, [".mot.txt"]),
])
def test_segment_sink_when_one_kind_disabled_then_only_the_other_is_written(
        tmp_path, video, mot, suffixes):
    received: list[Segment] = []
    with recorder(tmp_path, received, video=video, mot=mot) as sink:
        for i in range(15):
            sink.write(result(i))

    assert [len(s.files) for s in received] == [1, 1]
    on_disk = sorted((tmp_path / "segments").iterdir())
    assert [p.name.split(".", 1)[1] for p in on_disk] == [s.lstrip(".") for s in suffixes] * 2
    assert [s.bytes for s in received] == [p.stat().st_size for p in on_disk]


@pytest.mark.parametrize("kwargs, message", [
    ({"segment_s": 0.0}, "segment_s must be > 0"),
    ({"segment_s": -5.0}, "segment_s must be > 0"),
    ({"video": False, "mot": False}, "nothing to record"),
])
def test_segment_sink_when_arguments_invalid_then_value_error(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        recorder(tmp_path, [], **kwargs)


def test_segment_sink_when_writer_cannot_open_then_output_error_and_no_files_left(tmp_path):
    sink = recorder(tmp_path, [], codec="XXXX")

    with pytest.raises(OutputError, match="XXXX"):
        sink.write(result(0))
    sink.close()

    assert list((tmp_path / "segments").iterdir()) == []
