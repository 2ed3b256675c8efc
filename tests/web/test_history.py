"""The history: queries with every filter and keyset paging, the JSON API on a real server,
`vidqa events` listing what the API lists, the token over the API and the media, and no path
out of the store."""

from __future__ import annotations

import http.client
import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from history_factories import BACKPACK, HAT, OLD_S, TRACKS, answer_of, build_history, inside
from web_factories import chromium_path

from vidqa.cli import main
from vidqa.errors import ConfigError
from vidqa.store import queries
from vidqa.web import LiveView


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    return build_history(tmp_path_factory.mktemp("history"))


@pytest.fixture(scope="module")
def served(history: tuple[Path, float]) -> Iterator[LiveView]:
    with LiveView(port=0, store=history[0]) as view:
        yield view


@pytest.fixture(scope="module")
def guarded(history: tuple[Path, float]) -> Iterator[LiveView]:
    with LiveView(port=0, store=history[0], token="s3cret") as view:
        yield view


def tracks_of(page: queries.Page) -> list[int]:
    return [row["track_id"] for row in page.rows]


def test_history_when_filtered_by_question_and_answer_then_only_those_newest_first(history):
    path, _ = history
    page = queries.history(path, "answers", queries.Filters(question=BACKPACK, answer="yes"))

    expected = [t for t in range(TRACKS, 0, -1) if answer_of(t, BACKPACK) == "yes"]
    assert tracks_of(page) == expected
    assert all(row["snapshot"].startswith("snapshots/") for row in page.rows)
    assert page.next is None


def test_history_when_filtered_by_time_then_only_the_recent_half(history):
    path, now = history
    recent = queries.Filters.parse({"question": HAT, "since": "1h"})
    old = queries.Filters(question=HAT, until=now - OLD_S / 2)

    recent_tracks = set(tracks_of(queries.history(path, "answers", recent)))
    old_tracks = set(tracks_of(queries.history(path, "answers", old)))

    assert recent_tracks == {4, 5, 6, 10, 11, 12}
    assert old_tracks == set(range(1, TRACKS + 1)) - recent_tracks


def test_history_when_filtered_by_zone_then_answers_by_box_and_alerts_by_row(history):
    path, _ = history
    answers = queries.history(path, "answers", queries.Filters(zone="door", question=HAT))
    alerts = queries.history(path, "alerts", queries.Filters(zone="door", rule="no_hat"))
    of_rule = queries.history(path, "tracks", queries.Filters(rule="no_hat"))

    assert set(tracks_of(answers)) == {t for t in range(1, TRACKS + 1) if inside(t)}
    raised = [t for t in range(TRACKS, 0, -1) if inside(t) and answer_of(t, HAT) == "no"]
    assert tracks_of(alerts) == raised and tracks_of(of_rule) == raised
    assert all(row["answers"][HAT]["answer"] == "no" for row in of_rule.rows)


def test_history_when_paged_then_every_row_comes_once(history):
    path, _ = history
    seen, before = [], None
    while True:
        page = queries.history(path, "answers", limit=5, before=before)
        seen += [row["id"] for row in page.rows]
        if page.next is None:
            break
        before = page.next

    assert len(seen) == 2 * TRACKS == len(set(seen))
    assert seen == sorted(seen, reverse=True)
    assert list(queries.every(path, "answers", limit=7)) == \
        queries.history(path, "answers", limit=7).rows


@pytest.mark.parametrize("given, message", [
    ({"run": "one"}, "run must be an integer"),
    ({"since": "yesterday-ish"}, "since = 'yesterday-ish'"),
])
def test_filters_when_bad_text_then_error_names_the_field(given, message):
    with pytest.raises(ConfigError, match=message):
        queries.Filters.parse(given)


def test_api_when_asked_then_pages_rows_and_facets(served: LiveView):
    base = served.address("").rstrip("/")
    first = httpx.get(f"{base}/api/answers", params={"limit": 10}).json()
    second = httpx.get(f"{base}/api/answers", params={"limit": 10, "before": first["next"]}).json()
    facets = httpx.get(f"{base}/api/facets").json()
    bad = httpx.get(f"{base}/api/alerts", params={"since": "soon"})

    assert len(first["rows"]) == 10 and first["rows"][-1]["id"] > second["rows"][0]["id"]
    assert facets["streams"] == ["cam1", "cam2"] and facets["rules"] == ["no_hat"]
    assert facets["questions"][BACKPACK] == ["no", "yes"]
    assert bad.status_code == 400 and "since" in bad.json()["error"]


@pytest.mark.parametrize("kind, filters", [
    ("answers", {"question": BACKPACK, "answer": "yes", "stream": "cam1"}),
    ("alerts", {"rule": "no_hat", "since": "3d"}),
    ("tracks", {"zone": "door", "question": HAT, "answer": "no"}),
])
def test_events_cli_when_filtered_then_lists_what_the_api_lists(served, history, capsys, kind,
                                                                filters):
    base = served.address("").rstrip("/")
    api = httpx.get(f"{base}/api/{kind}", params={**filters, "limit": 1000}).json()["rows"]
    options = [f"--{name}={value}" for name, value in filters.items()]

    code = main(["events", str(history[0].parent.parent), "--kind", kind, *options, "--json"])
    listed = json.loads(capsys.readouterr().out)

    assert code == 0 and api and listed == api


def test_events_cli_when_csv_or_table_then_one_line_per_row(history, capsys):
    main(["events", str(history[0]), "--kind", "alerts", "--csv"])
    csv_lines = capsys.readouterr().out.splitlines()
    main(["events", str(history[0]), "--kind", "alerts"])
    table = capsys.readouterr()

    alerts = len(queries.history(history[0], "alerts").rows)
    assert len(csv_lines) == alerts + 1 and csv_lines[0].startswith("id,run_id,")
    assert len(table.out.splitlines()) == alerts + 1 and "no_hat" in table.out
    assert f"{alerts} alerts from" in table.err


def test_events_cli_when_no_store_then_one_line_error(tmp_path, capsys):
    code = main(["events", str(tmp_path / "nowhere")])

    err = capsys.readouterr().err
    assert code == 2 and "no event store at" in err and "Traceback" not in err


def test_media_when_a_row_names_it_then_served_as_jpeg(served: LiveView, history):
    base = served.address("").rstrip("/")
    row = httpx.get(f"{base}/api/answers", params={"limit": 1}).json()["rows"][0]

    response = httpx.get(f"{base}/media/{row['snapshot']}")

    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    assert response.content == (history[0].parent / row["snapshot"]).read_bytes()


@pytest.mark.parametrize("path", [
    "../vidqa.db", "snapshots/../../vidqa.db", "%2e%2e/%2e%2e/etc/passwd", "..%2fvidqa.db",
    "/etc/passwd", "%2fetc%2fpasswd", "snapshots//cam1", "vidqa.db-nope", "outside"])
def test_media_when_path_leaves_the_store_or_is_missing_then_refused(served, history, path):
    folder = history[0].parent
    if not (folder / "outside").exists():
        (folder / "outside").symlink_to("/etc/hostname")  # a link out of the store

    connection = http.client.HTTPConnection("127.0.0.1", served.port, timeout=10)
    try:  # sent as written: httpx would resolve the dot segments before sending
        connection.request("GET", f"/media/{path}")
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()

    assert response.status == 404
    assert b"root:" not in body and b"SQLite" not in body


def test_media_file_when_relative_path_escapes_then_none(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x")

    assert queries_media(tmp_path, "a.jpg") == tmp_path.resolve() / "a.jpg"
    for bad in ("../a.jpg", "/a.jpg", "x/../a.jpg", "", "a.jpg/..", "\\a.jpg"):
        assert queries_media(tmp_path, bad) is None


def queries_media(folder: Path, relative: str) -> Path | None:
    from vidqa.web.history import media_file

    return media_file(folder, relative)


@pytest.mark.parametrize("path", ["/history", "/api/answers", "/api/facets", "/api/runs",
                                  "/media/snapshots/cam1/crop-1.jpg"])
def test_token_when_missing_then_history_api_and_media_refused(guarded: LiveView, path: str):
    base = f"http://127.0.0.1:{guarded.port}"
    snapshot = httpx.get(f"{base}/api/answers", params={"token": "s3cret", "limit": 1}
                         ).json()["rows"][0]["snapshot"]
    path = path.replace("snapshots/cam1/crop-1.jpg", snapshot)

    refused = httpx.get(base + path)
    wrong = httpx.get(base + path, headers={"Authorization": "Bearer nope"})
    allowed = httpx.get(base + path, headers={"Authorization": "Bearer s3cret"})

    assert refused.status_code == wrong.status_code == 401
    assert allowed.status_code == 200


def test_history_page_when_token_set_then_its_urls_carry_it(guarded: LiveView):
    page = httpx.get(guarded.address("history")).text

    assert 'src="static/history.js?token=s3cret"' in page
    assert os.path.basename("history.js") in page


@pytest.mark.browser
@pytest.mark.slow
def test_history_page_when_filtered_in_chromium_then_rows_thumbnails_and_time_range(
        guarded: LiveView, history, tmp_path: Path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    _, now = history
    errors: list[str] = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.goto(guarded.address("history"))
            page.wait_for_selector("#history tbody tr[data-kind=answers]")
            everything = page.locator("#history tbody tr").count()

            page.select_option("select[name=question]", BACKPACK)
            page.select_option("select[name=answer]", "yes")
            shown = _apply(page)
            page.wait_for_function("[...document.querySelectorAll('#history img.thumb')]"
                                   ".every(i => i.complete && i.naturalWidth === 40)")
            thumbs = page.locator("#history img.thumb").count()

            page.fill("input[name=since]", _local(now - 3600))
            recent = _apply(page)
            cells = page.locator("#history tbody tr td:nth-child(3)").all_inner_texts()
            page.click("#clear")
            page.check("input[name=kind][value=alerts]")
            page.wait_for_selector("#history tbody tr[data-kind=alerts]")
            alerts = page.locator("#history tbody tr").count()
            page.screenshot(path=str(tmp_path / "history.png"), full_page=True)
        finally:
            browser.close()

    yes = [t for t in range(1, TRACKS + 1) if answer_of(t, BACKPACK) == "yes"]
    assert everything == 2 * TRACKS
    assert shown == thumbs == len(yes)
    assert recent == 1 and cells == ["4"]  # the one recent track with a backpack
    assert alerts == len(queries.history(history[0], "alerts").rows)
    assert errors == []


def _apply(page) -> int:
    before = page.evaluate("document.body.dataset.loaded || ''")
    page.click("#apply")
    page.wait_for_function(f"(document.body.dataset.loaded || '') !== '{before}'")
    return page.locator("#history tbody tr").count()


def _local(epoch: float) -> str:
    """The value a datetime-local input takes, in the browser's (this machine's) time zone."""
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(epoch))


def test_serve_cli_when_given_a_run_folder_then_serves_its_history_until_ctrl_c(history):
    import signal
    import subprocess
    import sys

    from web.served_run import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "vidqa.cli", "serve",
                             str(history[0].parent.parent), "--serve", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        alerts = httpx.get(f"http://127.0.0.1:{port}/api/alerts").json()["rows"]
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)

    assert f"http://127.0.0.1:{port}/history" in line
    assert alerts == queries.history(history[0], "alerts").rows
    assert proc.returncode == 0
