"""The page in a real headless Chromium: the video plays, counters move, the table fills in.

Needs Debian's chromium (tools/install_system_deps.sh) and the playwright package; playwright's own
browser downloads are never used, the system chromium is launched by path.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from factories import detections
from web_factories import chromium_path, make_answer, moving_box_frame, wait_until

from vidqa.messages import FrameResult, VideoFrame
from vidqa.web import LiveView, LiveViewSink

pytestmark = [pytest.mark.browser, pytest.mark.slow]

STREAMS = ("0", "1")




def _pipeline(view: LiveView, stop: threading.Event) -> None:
    """A fake two-stream pipeline at ~20 fps through LiveViewSink: a tracked box that moves,
    yes/no and free-form answers, an alert, and the counters a pipeline publishes."""
    sinks = {stream_id: LiveViewSink(view, stream_id) for stream_id in STREAMS}
    index = 0
    while not stop.wait(0.05):
        for offset, stream_id in enumerate(STREAMS):
            sinks[stream_id].write(_result(stream_id, index, offset))
            view.publish_status(stream_id, {"frames_dropped": index // 50, "vlm_queue": index % 4,
                                            "phase": "profile" if index < 40 else "compressed"})
        if index == 20:
            view.publish_event({"frame": index, "track_id": 1, "stream_id": "0",
                                "type": "alert", "message": "no hard hat for 2 s"})
        index += 1
    for sink in sinks.values():
        sink.close()


def _result(stream_id: str, index: int, offset: int) -> FrameResult:
    shifted = index + 37 * offset
    x = (shifted * 4) % 260  # where moving_box_frame draws its box
    track_id = 1 + 2 * offset
    answers = ()
    if index % 10 == 5:
        plan = {"compressed": index >= 40, "plan_id": "plan-3f2a" if index >= 40 else None}
        answers = (make_answer(index, track_id, p_yes=(index % 30) / 30,
                               question="Is this person carrying a backpack?", **plan),
                   make_answer(index, track_id, p_yes=None, question="What colour is the shirt?",
                               **plan))
    frame = VideoFrame(moving_box_frame(shifted), index, index / 20, stream_id, 20.0)
    return FrameResult(frame, detections([(x, 70, x + 60, 190)], [track_id]), answers=answers)


@pytest.fixture(params=[None, "tok-3141"], ids=["open", "token"])
def live_view(request: pytest.FixtureRequest) -> Iterator[LiveView]:
    """A LiveView fed by a fake pipeline; once without and once with a token (every URL the
    page loads must then carry it)."""
    stop = threading.Event()
    with LiveView(port=0, token=request.param) as view:
        publisher = threading.Thread(target=_pipeline, args=(view, stop), daemon=True)
        publisher.start()
        yield view
        stop.set()
        publisher.join(timeout=5)


@pytest.fixture()
def artifacts(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("VIDQA_ARTIFACTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_page_when_pipeline_publishes_then_video_counters_and_tracks_update(
        live_view: LiveView, artifacts: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    executable = chromium_path()
    errors: list[str] = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.goto(live_view.url)

            page.wait_for_function("document.querySelectorAll('img.frame').length === 2 && "
                                   "[...document.querySelectorAll('img.frame')]"
                                   ".every(i => i.naturalWidth === 320)", timeout=15_000)
            video = page.locator("article.stream[data-stream='0'] img.frame")
            first = video.screenshot()
            counter = page.locator("article.stream[data-stream='0'] dd[data-counter='frames']")
            frames_before = int(counter.inner_text())
            page.wait_for_function(
                f"Number(document.querySelector(\"article.stream[data-stream='0'] "
                f"dd[data-counter='frames']\").textContent) > {frames_before}", timeout=15_000)
            shots = []
            wait_until(lambda: shots.append(video.screenshot()) or shots[-1] != first,
                       "the video to show a newer frame")
            page.wait_for_selector("#tracks tbody tr[data-track]", timeout=15_000)
            page.wait_for_selector("#tracks .badge.alert", timeout=15_000)
            page.wait_for_selector("#connection.pill-ok", timeout=15_000)
            shot = artifacts / ("web_view.png" if live_view.token is None else "web_view_token.png")
            page.screenshot(path=str(shot), full_page=True)
            rows = page.locator("#tracks tbody tr[data-track]").count()
        finally:
            browser.close()

    assert shots[-1] != first
    assert rows >= 1
    assert errors == []
    assert shot.stat().st_size > 0
