"""The history page's ask box in a real headless Chromium, during a real run (the sample
clip, the real tracker, the tiny VLM, ``store.features: true``): the question typed in the box
is answered by a ``vidqa ask`` process over the tracks seen so far, from their stored
features, and its answers appear in the page while the run goes on."""

from __future__ import annotations

import sqlite3

import httpx
import pytest
from web.served_run import WAIT_MS, ServedRun, sample_config
from web_factories import chromium_path, wait_until

from vidqa.store import queries

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(300)]

QUESTION = "Is this person carrying a bag?"


def features_kept(db) -> int:
    """Crops whose features the run has written so far (a shard is written at most 10 s after
    its first crop, or when the model is idle)."""
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return conn.execute("SELECT COALESCE(SUM(crops), 0) FROM features").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error:  # not created yet
        return 0


def test_ask_box_when_a_question_is_asked_during_a_run_then_its_answers_stream_in(
        tmp_path, tiny_vlm_dir, monkeypatch):
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    cfg = sample_config(tmp_path, tiny_vlm_dir,
                        overrides=("run.max_frames=600", "store.features=true"))
    run = ServedRun(cfg, tmp_path / "run", monkeypatch)
    errors: list[str] = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("pageerror", lambda err: errors.append(str(err)))
            run.start()
            wait_until(lambda: len({r["track_id"] for r in httpx.get(
                run.api("api/answers?limit=100"), timeout=5).json().get("rows", [])}) >= 2
                and features_kept(run.run_dir / "store" / "vidqa.db") > 0,
                "answers of two tracks and a features shard", timeout_s=WAIT_MS / 1000)
            page.goto(run.api("history"))
            page.fill("#ask input[name=question]", QUESTION)
            page.click("#ask-button")
            page.wait_for_function("document.body.dataset.asked !== undefined",
                                   timeout=WAIT_MS)
            asked = page.evaluate("document.body.dataset.asked")
            shown = page.locator("#ask-table tbody tr").count()
            status = page.inner_text("#ask-status")
            counts = page.inner_text("#ask-counts")
            page.screenshot(path=str(tmp_path / "ask.png"), full_page=True)
            still_running = run.running
        finally:
            run.stop()
            browser.close()
    run.finish()

    db = run.run_dir / "store" / "vidqa.db"
    ask = queries.asks(db)[0]
    answers = queries.history(db, "answers", queries.Filters(ask=ask["id"])).rows
    assert asked == "done" and still_running, (asked, status)
    assert shown == len(answers) == ask["answered"] > 0
    assert ask["question"] == QUESTION and ask["from_features"] > 0
    assert f"Ask {ask['id']}" in status and QUESTION in counts
    assert errors == []
