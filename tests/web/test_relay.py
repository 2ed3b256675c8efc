"""The view relay between a stream's side and the run's process, over its real process-queue
transport: frames are encoded only while someone watches, at most max_fps; a channel nobody
reads drops frames first; the monitor's figures reach /metrics and /healthz."""

from __future__ import annotations

import dataclasses
import multiprocessing
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from factories import detections
from prometheus_client.parser import text_string_to_metric_families
from web_factories import make_answer, moving_box_frame, wait_until

from vidqa.config import StreamConfig, load_config
from vidqa.messages import FrameResult, VideoFrame
from vidqa.web import LiveView, LiveViewSink
from vidqa.web import relay as relay_module
from vidqa.web.metrics import Monitor
from vidqa.web.relay import Inbox, Outbox, QueueTransport, RelayHost, StreamRelay

SPAWN = multiprocessing.get_context("spawn")


def _result(index: int, answers: tuple = ()) -> FrameResult:
    frame = VideoFrame(moving_box_frame(index), index, index / 10, "test", 10.0)
    return FrameResult(frame, detections([(20, 40, 90, 200)], [3]), answers=answers)


@pytest.fixture()
def spec() -> StreamConfig:
    (only,) = load_config(None, []).stream_configs()  # stream "0", a file
    return only


@pytest.fixture()
def served(view: LiveView, spec: StreamConfig) -> Iterator[tuple[RelayHost, StreamRelay]]:
    """A host publishing into the view and a monitor, and one stream's side of its relay."""
    host = RelayHost(QueueTransport(SPAWN, [spec.id]), [spec], view, Monitor()).start()
    relay = host.end().connect()
    try:
        yield host, relay
    finally:
        relay.close()
        host.close()


class Writer:
    """Writes frames to a stream's sinks on a thread, one every 20 ms, as a stream would."""

    def __init__(self, sinks: list) -> None:
        self.sinks, self.frames = sinks, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.write()

    def write(self) -> None:
        result = _result(self.frames)
        for sink in self.sinks:
            sink.write(result)
        self.frames += 1

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _mjpeg_parts(url: str, count: int) -> list[bytes]:
    """The first ``count`` JPEGs of an MJPEG response."""
    parts: list[bytes] = []
    with httpx.stream("GET", url, timeout=30) as response:
        buffer = b""
        for chunk in response.iter_bytes():
            buffer += chunk
            while (start := buffer.find(b"\xff\xd8")) >= 0 and \
                    (end := buffer.find(b"\xff\xd9", start)) >= 0:
                parts.append(buffer[start:end + 2])
                buffer = buffer[end + 2:]
            if len(parts) >= count:
                return parts
    return parts


def test_relay_when_nobody_watches_then_no_frame_is_encoded_and_a_viewer_gets_jpegs(
        view: LiveView, served: tuple[RelayHost, StreamRelay]) -> None:
    _, relay = served
    assert relay.view is not None
    sink = LiveViewSink(relay.view, "0")
    with Writer([sink]) as writer:
        wait_until(lambda: "0" in view.hub.streams and writer.frames >= 20,
                   "the stream's status to reach the view")
        unwatched = relay.view.encoded["0"]
        started = time.monotonic()
        jpegs = _mjpeg_parts(f"http://127.0.0.1:{view.port}/streams/0/video", 3)
        elapsed = time.monotonic() - started
        watched = relay.view.encoded["0"]
        wait_until(lambda: not relay.outbox.watched, "the stream to learn nobody watches")
        frames = writer.frames
        wait_until(lambda: writer.frames >= frames + 2, "the frame being drawn to be sent")
        after, frames = relay.view.encoded["0"], writer.frames
        wait_until(lambda: writer.frames >= frames + 10, "ten frames nobody watches")
        assert relay.view.encoded["0"] == after

    assert unwatched == 0 and view.hub.streams["0"].published >= 3
    assert len(jpegs) == 3 and all(j.startswith(b"\xff\xd8") for j in jpegs)
    # paced on the stream's side: never more than max_fps (a slow machine only sends fewer)
    assert 3 <= watched <= (elapsed + 1.0) * view.options.max_fps + 1
    assert view.hub.state()["streams"][0]["size"] == [320, 240]


def test_outbox_when_nobody_takes_batches_then_frames_are_dropped_first(
        spec: StreamConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(relay_module, "SHIP_TIMEOUT_S", 60.0)  # the channel waits for the test
    transport = QueueTransport(SPAWN, [spec.id], max_batches=1)
    outbox = Outbox(transport.ship)
    outbox.post(("event", "0", {"n": 0}))
    wait_until(lambda: transport.queue.qsize() == 1, "the channel to fill")
    for index in range(20):  # the sender waits for room meanwhile
        outbox.post_frame("0", b"frame %d" % index, (320, 240))
        outbox.post(("event", "0", {"n": index + 1}))
    batches: list = []
    wait_until(lambda: batches.extend(transport.receive(frozenset(), 0.1)) or
               sum(m[0] == "event" for b in batches for m in b) == 21,
               "every event to arrive", timeout_s=30)
    outbox.close()
    batches += transport.receive(frozenset(), 0.0)

    messages = [m for b in batches for m in b]
    frames = [m[2][0] for m in messages if m[0] == "jpeg"]
    assert [m[2]["n"] for m in messages if m[0] == "event"] == list(range(21))
    assert 1 <= len(frames) < 20 and frames[-1] == b"frame 19"  # the newest frame wins
    assert outbox.dropped["0"] == 20 - len(frames)


def test_inbox_when_the_run_side_falls_behind_then_the_oldest_batches_go_counted() -> None:
    inbox = Inbox(max_batches=2)
    watched = [inbox.post([("event", "0", {"n": n})] * (n + 1)) for n in range(3)]
    inbox.post([])  # an empty shipment only asks who watches
    taken, dropped = inbox.take(frozenset({"0"}))

    assert watched == [frozenset()] * 3 and inbox.post([]) == {"0"}
    assert [len(batch) for batch in taken] == [2, 3] and dropped == 1
    assert inbox.take(frozenset()) == ([], 1)


def test_relay_when_metrics_only_then_figures_reach_metrics_and_health() -> None:
    (spec,) = load_config(None, ["source.kind=stream",
                                 "source.url=rtsp://127.0.0.1:8554/cam"]).stream_configs()
    monitor = Monitor()
    host = RelayHost(QueueTransport(SPAWN, [spec.id]), [spec], None, monitor).start()
    relay = host.end().connect()
    assert relay.view is None and relay.monitor is not None
    sink = relay.monitor.watch("0", True, spec.source.stall_timeout_s,
                               lambda: {"frames_dropped": 4, "tracks": 2})
    answer, late = (dataclasses.replace(make_answer(frame, track_id), latency_ms=120.0)
                    for frame, track_id in ((1, 3), (4, 5)))
    for index in range(5):
        sink.write(_result(index, (answer,) if index == 1 else ()))
    sink.write_answers([late])
    wait_until(lambda: "0" in monitor.streams, "the first figures to reach the monitor")
    healthy = monitor.health()
    sink.close()  # the last figures go at once
    wait_until(lambda: monitor.streams["0"].ended, "the last figures to reach the monitor")
    relay.close()
    host.close()

    found = {f.name: f for f in text_string_to_metric_families(monitor.exposition().decode())}
    samples = {(s.name, s.labels.get("stream")): s.value for f in found.values()
               for s in f.samples}
    assert samples[("vidqa_frames_total", "0")] == 5
    assert samples[("vidqa_answers_total", "0")] == 2
    assert samples[("vidqa_frames_dropped_total", "0")] == 4
    assert samples[("vidqa_tracks_total", "0")] == 2
    assert samples[("vidqa_answer_latency_seconds_count", "0")] == 2
    assert healthy == []
    assert monitor.health() == ["stream 0 has ended"]  # a live stream that ended is a problem
