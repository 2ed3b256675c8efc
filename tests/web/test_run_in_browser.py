"""A real run served live, watched by a real headless Chromium: the sample clip, the real
detector and tracker, the tiny VLM, ``run_pipeline(..., serve=...)``.

The clip is read as a file, not replayed as live: on two busy cores the tracker may manage
one frame in three seconds, and a live replay then drops so many frames between two tracked
ones that no track is ever confirmed and the table stays empty. A file keeps every frame, so
the tracks and answers do not depend on the machine's load; the test stops the run once it
has seen what it needs.

The page must show one video per stream that advances, a tracks table that fills in with
answers, and the server must go away with the run. A screenshot is kept (``$VIDQA_ARTIFACTS``
or the test's tmp folder). Needs Debian's chromium (tools/install_system_deps.sh) and playwright;
the system chromium is launched by path, playwright's own browser downloads are never used.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from web.served_run import (
    WAIT_MS,
    ServedRun,
    port_is_free,
    sample_config,
    wait_answers,
    wait_video_advances,
    wait_videos,
)
from web_factories import chromium_path

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(240)]

GUARD_FRAMES = 600  # the test stops the run once it has seen enough; this only bounds it




@pytest.fixture()
def artifacts(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("VIDQA_ARTIFACTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.mark.parametrize("streams", [(), ("gate", "hall")], ids=["one-stream", "two-streams"])
def test_page_when_real_run_serves_then_video_advances_tracks_fill_and_server_stops(
        tmp_path: Path, tiny_vlm_dir: Path, artifacts: Path, monkeypatch: pytest.MonkeyPatch,
        streams: tuple[str, ...]) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    executable = chromium_path()
    cfg = sample_config(tmp_path, tiny_vlm_dir, streams=streams,
                        overrides=(f"run.max_frames={GUARD_FRAMES}",))
    expected = streams or ("0",)
    run = ServedRun(cfg, tmp_path / "run", monkeypatch)
    errors: list[str] = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("pageerror", lambda err: errors.append(str(err)))
            run.start()
            page.goto(run.url)
            shown = wait_videos(page, expected)
            advanced = {sid: wait_video_advances(page, sid) for sid in expected}
            answered = wait_answers(page, expected)
            page.wait_for_selector("#connection.pill-ok", timeout=WAIT_MS)
            counters = page.eval_on_selector_all("dd[data-counter]",
                                                 "dds => dds.map(d => d.textContent)")
            shot = artifacts / f"web_view_run_{len(expected)}_streams.png"
            page.screenshot(path=str(shot), full_page=True)
            still_running = run.running
        finally:
            run.stop()
            browser.close()
    summary = run.finish()

    assert sorted(shown) == sorted(expected)
    for stream_id, (before, after, changed) in advanced.items():
        assert after > before and changed, f"stream {stream_id}: {before} -> {after}, {changed}"
    assert all(rows > 0 for rows in answered.values()), answered
    assert still_running  # everything above was seen during the run, not after it
    assert errors == []
    assert counters and not [text for text in counters if "[object" in text], counters
    assert shot.stat().st_size > 0
    assert summary["end_reason"] == "stopped" and summary["answers"] > 0
    assert port_is_free(run.port)  # the server stopped with the run
