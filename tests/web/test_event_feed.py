"""The /events SSE feed and the MJPEG video: what a client reads, and that a stalled client
costs the publisher nothing but its own dropped events."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from web_factories import answer_event, moving_box_frame, read_sse, wait_until

from vidqa.web import LiveView

TIMEOUT = httpx.Timeout(10.0)


def _subscribed(view: LiveView, kind: str, count: int = 1) -> bool:
    return len(view.clients()[kind]) >= count


@pytest.mark.parametrize(("published", "expected_kind", "expected_stream"), [
    (answer_event(5, 3), "answer", "0"),
    (answer_event(6, 4, p_yes=0.1, stream_id="cam2"), "answer", "cam2"),
    ({"frame": 7, "track_id": 3, "type": "alert", "message": "no hard hat"}, "alert", "0"),
])
def test_event_feed_when_events_published_then_client_reads_them_in_order(
        view: LiveView, published: dict, expected_kind: str, expected_stream: str) -> None:
    with httpx.stream("GET", view.url + "events", timeout=TIMEOUT) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        wait_until(lambda: _subscribed(view, "events"), "the SSE client to subscribe")
        view.publish_event(published)
        view.publish_event(answer_event(99, 1))
        messages = read_sse(response, 2)

    (kind, data), (_, last) = messages
    assert kind == expected_kind
    assert data == {**published, "stream_id": expected_stream}
    assert last["frame"] == 99


def test_event_feed_when_client_disconnects_then_it_is_unsubscribed(view: LiveView) -> None:
    with httpx.stream("GET", view.url + "events", timeout=TIMEOUT):
        wait_until(lambda: _subscribed(view, "events"), "the SSE client to subscribe")
    view.publish_event(answer_event(1, 1))  # the server notices the closed socket on a write
    wait_until(lambda: not view.clients()["events"], "the SSE client to be dropped")


def test_publishing_when_clients_stall_then_queues_stay_bounded_and_drops_are_counted() -> None:
    frames, events = 2000, 20_000  # far more bytes than the socket buffers of a stalled client
    with LiveView(port=0, queue_size=64) as view, httpx.Client(timeout=TIMEOUT) as client:
        view.publish_frame("0", moving_box_frame(0))
        with client.stream("GET", view.url + "events"), \
                client.stream("GET", view.url + "streams/0/video"):  # never read
            wait_until(lambda: _subscribed(view, "events") and _subscribed(view, "video"),
                       "both stalled clients to connect")
            noise = np.random.default_rng(0).integers(0, 256, (240, 320, 3), np.uint8)
            for index in range(frames):
                view.publish_frame("0", noise if index % 2 else moving_box_frame(index))
            for index in range(events):
                view.publish_event(answer_event(index, index % 7))
            stats = view.clients()

    (sse,), (video,) = stats["events"], stats["video"]
    assert view.hub.streams["0"].published == frames + 1
    assert view.hub.events_published == events
    assert sse["queued"] <= sse["maxsize"] == 64
    assert sse["dropped"] > 0
    assert video["dropped"] > 0


def test_event_feed_when_client_keeps_up_then_nothing_is_dropped(view: LiveView) -> None:
    batches, batch = 20, 10
    with httpx.stream("GET", view.url + "events", timeout=TIMEOUT) as response:
        wait_until(lambda: _subscribed(view, "events"), "the SSE client to subscribe")
        lines = response.iter_lines()
        received = []
        for start in range(0, batches * batch, batch):
            for index in range(start, start + batch):
                view.publish_event(answer_event(index, 1))
            while len(received) < start + batch:
                line = next(lines)
                if line.startswith("data:"):
                    received.append(line)
        (stats,) = view.clients()["events"]

    assert len(received) == batches * batch
    assert stats["dropped"] == 0
