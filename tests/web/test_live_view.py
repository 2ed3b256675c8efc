"""LiveView's server: binding rules, busy ports, the token gate, the page and /api/state."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from web_factories import answer_event, moving_box_frame, wait_until

from vidqa.errors import ConfigError, OutputError
from vidqa.web import LiveView, is_loopback

TOKEN = "s3cret-token"


@pytest.fixture()
def busy_port() -> Iterator[int]:
    """A loopback port some other program is listening on."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen(1)
        yield other.getsockname()[1]


@pytest.fixture()
def guarded() -> Iterator[LiveView]:
    with LiveView(port=0, token=TOKEN) as live:
        yield live


def test_live_view_when_port_is_busy_then_output_error_names_it(busy_port: int) -> None:
    view = LiveView(port=busy_port)
    with pytest.raises(OutputError, match=f"^port {busy_port} on 127.0.0.1 is in use: pick "
                                          f"another with --serve PORT$"):
        view.start()
    view.close()


def test_live_view_when_port_freed_by_close_then_it_can_be_reused() -> None:
    with LiveView(port=0) as first:
        port = first.port
    with LiveView(port=port) as second:
        assert httpx.get(second.url + "api/state").status_code == 200


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "::", "example.com"])
def test_live_view_when_host_not_loopback_and_no_token_then_config_error(host: str) -> None:
    with pytest.raises(ConfigError, match="without a token"):
        LiveView(host=host)


@pytest.mark.parametrize(("host", "expected"), [
    ("127.0.0.1", True), ("127.8.0.1", True), ("::1", True), ("localhost", True),
    ("0.0.0.0", False), ("::", False), ("10.0.0.1", False), ("example.com", False),
])
def test_is_loopback_when_host_given_then_classified(host: str, expected: bool) -> None:
    assert is_loopback(host) is expected


def test_live_view_when_non_loopback_host_has_token_then_accepted() -> None:
    view = LiveView(host="0.0.0.0", token=TOKEN)  # constructed only: nothing is bound
    assert view.token == TOKEN


@pytest.mark.parametrize(("path", "params", "headers", "expected"), [
    ("", {}, {}, 401),
    ("api/state", {}, {}, 401),
    ("events", {}, {}, 401),
    ("static/app.js", {}, {}, 401),
    ("api/state", {"token": "wrong"}, {}, 401),
    ("api/state", {}, {"Authorization": "Bearer wrong"}, 401),
    ("api/state", {}, {"Authorization": f"Basic {TOKEN}"}, 401),
    ("", {"token": TOKEN}, {}, 200),
    ("api/state", {"token": TOKEN}, {}, 200),
    ("static/app.js", {"token": TOKEN}, {}, 200),
    ("api/state", {}, {"Authorization": f"Bearer {TOKEN}"}, 200),
])
def test_token_gate_when_request_made_then_status(guarded: LiveView, path: str, params: dict,
                                                  headers: dict, expected: int) -> None:
    base = f"http://127.0.0.1:{guarded.port}/"
    response = httpx.get(base + path, params=params, headers=headers, timeout=10)
    assert response.status_code == expected


def test_page_when_token_set_then_asset_urls_carry_it(guarded: LiveView) -> None:
    page = httpx.get(guarded.url, timeout=10).text
    assert f'src="static/app.js?token={TOKEN}"' in page
    assert "__QUERY__" not in page


def test_page_when_no_token_then_assets_are_plain_and_served(view: LiveView) -> None:
    page = httpx.get(view.url, timeout=10)
    assert page.headers["content-type"].startswith("text/html")
    assert 'src="static/app.js"' in page.text
    for asset in ("static/app.js", "static/style.css"):
        assert httpx.get(view.url + asset, timeout=10).status_code == 200


def test_state_when_frames_events_and_status_published_then_reported(view: LiveView) -> None:
    view.publish_frame("cam1", moving_box_frame(0, size=(160, 120)))
    view.publish_status("cam1", {"fps": 9.5, "frames": 1})
    view.publish_status("cam1", {"vlm_queue": np.int64(3), "phase": "profile"})
    view.publish_event(answer_event(4, 7, p_yes=np.float32(0.25), stream_id="cam1",
                                    compressed=True, plan_id="plan-a"))
    view.publish_event({"frame": 5, "track_id": 7, "stream_id": "cam1", "type": "alert",
                        "message": "no hard hat"})
    view.end_tracks("cam1", (7,))

    state = httpx.get(view.url + "api/state", timeout=10).json()

    (stream,) = state["streams"]
    assert stream["id"] == "cam1" and stream["size"] == [160, 120]
    assert stream["counters"] == {"fps": 9.5, "frames": 1, "vlm_queue": 3, "phase": "profile"}
    (track,) = state["tracks"]
    assert (track["stream_id"], track["track_id"], track["active"]) == ("cam1", 7, False)
    assert (track["compressed"], track["plan_id"], track["alerts"]) == (True, "plan-a",
                                                                        ["no hard hat"])
    (answer,) = track["answers"]
    assert answer["answer"] == "no" and answer["p_yes"] == pytest.approx(0.25)


def test_state_when_many_tracks_then_table_keeps_the_newest(view: LiveView) -> None:
    view.hub.table.max_tracks = 5
    for track_id in range(12):
        view.publish_event(answer_event(track_id, track_id))
    tracks = httpx.get(view.url + "api/state", timeout=10).json()["tracks"]
    assert [t["track_id"] for t in tracks] == [11, 10, 9, 8, 7]


@pytest.mark.parametrize(("path", "expected"), [
    ("streams/0/snapshot.jpg", 200), ("streams/nope/snapshot.jpg", 404),
    ("streams/nope/video", 404)])
def test_snapshot_when_requested_then_jpeg_or_404(view: LiveView, path: str,
                                                  expected: int) -> None:
    view.publish_frame("0", moving_box_frame(3))
    response = httpx.get(view.url + path, timeout=10)
    assert response.status_code == expected
    if expected == 200:
        assert response.content[:2] == b"\xff\xd8"  # JPEG start-of-image


def test_snapshot_when_polled_then_stream_counts_as_watched(view: LiveView) -> None:
    view.publish_frame("0", moving_box_frame(3))
    assert not view.is_watched("0")
    httpx.get(view.url + "streams/0/snapshot.jpg", timeout=10).raise_for_status()
    assert view.is_watched("0")


def test_video_when_frames_published_then_mjpeg_parts_arrive(view: LiveView) -> None:
    view.publish_frame("0", moving_box_frame(0))
    with httpx.stream("GET", view.url + "streams/0/video", timeout=10) as response:
        assert response.headers["content-type"] == (
            "multipart/x-mixed-replace; boundary=vidqaframe")
        wait_until(lambda: view.is_watched("0"), "the video client to be counted")
        received = b""
        for index, chunk in enumerate(response.iter_bytes()):
            received += chunk
            view.publish_frame("0", moving_box_frame(index + 1))
            if received.count(b"--vidqaframe") >= 3:
                break
    assert received.count(b"Content-Type: image/jpeg") >= 2
    assert received.count(b"\xff\xd8") >= 2


def test_close_when_called_twice_then_second_is_a_no_op() -> None:
    view = LiveView(port=0).start()
    view.close()
    view.close()
    with pytest.raises(httpx.ConnectError):
        httpx.get(view.url + "api/state", timeout=2)


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.parametrize(("host", "address"), [
    ("localhost", "127.0.0.1"),
    pytest.param("::1", "[::1]", marks=pytest.mark.skipif(not _ipv6_loopback(),
                                                         reason="no IPv6 loopback here")),
])
def test_live_view_when_other_loopback_host_then_serves_there(host: str, address: str) -> None:
    with LiveView(host=host, port=0) as view:
        response = httpx.get(f"http://{address}:{view.port}/api/state", timeout=10)
    assert response.status_code == 200


def test_live_view_when_restarted_after_close_then_streams_work_again() -> None:
    view = LiveView(port=0)
    view.start()
    view.close()
    view.port = 0
    with view:
        view.publish_frame("0", moving_box_frame(0))
        with httpx.stream("GET", view.url + "streams/0/video", timeout=10) as response:
            first = next(response.iter_bytes())
    assert first.startswith(b"--vidqaframe")
