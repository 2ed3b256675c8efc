"""LiveViewSink: frames, answers and ended tracks of FrameResults reach the LiveView."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from factories import detections
from web_factories import make_answer, moving_box_frame, wait_until

from vidqa.messages import Answer, Detections, FrameResult, VideoFrame
from vidqa.web import LiveView, LiveViewSink


def _result(index: int, answers: tuple[Answer, ...] = (), ended: tuple[int, ...] = (),
            boxed: bool = True) -> FrameResult:
    frame = VideoFrame(moving_box_frame(index), index, index / 10, "test", 10.0)
    found = detections([(20, 40, 90, 200)], [3]) if boxed else Detections.empty()
    return FrameResult(frame, found, answers=answers, ended_tracks=ended)


@pytest.mark.parametrize("stream_id", ["0", "cam-2"])
def test_sink_when_answers_arrive_then_events_and_table_carry_the_stream(
        view: LiveView, stream_id: str) -> None:
    sink = LiveViewSink(view, stream_id=stream_id)
    sink.write(_result(0))
    sink.write(_result(1, answers=(make_answer(1), make_answer(1, track_id=4, p_yes=0.2))))
    sink.close()

    state = view.hub.state()
    assert [e["stream_id"] for e in state["recent_events"]] == [stream_id, stream_id]
    assert state["recent_events"][0] == {**make_answer(1).to_event(), "stream_id": stream_id}
    assert {(t["stream_id"], t["track_id"]) for t in state["tracks"]} == {
        (stream_id, 3), (stream_id, 4)}
    (stream,) = state["streams"]
    assert stream["frames_published"] == 2
    assert stream["counters"]["frames"] == 2 and stream["counters"]["running"] is False


def test_sink_when_track_ends_then_board_forgets_and_table_greys_it(view: LiveView) -> None:
    sink = LiveViewSink(view)
    sink.write(_result(0, answers=(make_answer(0),)))
    sink.write(_result(1, ended=(3,), boxed=False))

    assert 3 not in sink.board.latest
    (track,) = view.hub.state()["tracks"]
    assert track["active"] is False


def test_sink_when_nobody_watches_then_raw_frame_is_published_undrawn(view: LiveView) -> None:
    sink = LiveViewSink(view)
    result = _result(0, answers=(make_answer(0),))
    sink.write(result)
    assert view.hub.streams["0"].latest[1] is result.frame.image


def test_sink_when_a_browser_watches_then_the_frame_is_annotated(view: LiveView) -> None:
    sink = LiveViewSink(view)
    sink.write(_result(0))
    with httpx.stream("GET", view.url + "streams/0/video", timeout=10):
        wait_until(lambda: view.is_watched("0"), "the video client to be counted")
        result = _result(1, answers=(make_answer(1),))
        sink.write(result)
    published = view.hub.streams["0"].latest[1]
    assert published is not result.frame.image
    assert not np.array_equal(published, result.frame.image)  # a box and labels were drawn
