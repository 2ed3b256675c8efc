"""Asking the past (vidqa ask): a real run on the sample clip (real decoding, the real tracker,
the tiny VLM in fp32 on the CPU) keeps its crops and their vision features in a real SQLite
store; a question asked later must give the live answers, from the features and from the
JPEGs, keep its provenance, resume after a Ctrl-C, and say plainly what it cannot use."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from factories import build_tiny_vlm, write_sample_clip

from vidqa.ask import past
from vidqa.cli import main
from vidqa.config import RetainConfig, load_config
from vidqa.engines import run_pipeline
from vidqa.run import prepare_run_dir
from vidqa.store import queries
from vidqa.store.retention import Retention

pytestmark = pytest.mark.slow

REPO = Path(__file__).parent.parent
JEANS = "Is this person wearing jeans?"
BAG = "Is this person carrying a bag?"


def run_config(tmp: Path, clip: Path, model: Path, **extra: Any) -> Path:
    config = {
        "source": {"kind": "file", "path": str(clip)},
        "tracker": {"imgsz": 320},
        "roi": {"min_width": 8, "min_height": 16, "min_hits": 1, "reask_every": 10},
        "vlm": {"model": str(model), "adaptive": {"enabled": False},
                "questions": [{"question": JEANS, "name": "jeans"}]},
        "zones": [{"name": "all", "polygon": [[0, 0], [320, 0], [320, 240], [0, 240]]}],
        "rules": [{"name": "nojeans", "question": "jeans", "answer": "no", "zone": "all"}],
        "store": {"features": True},
        **extra,
    }
    path = tmp / f"config-{time.monotonic_ns()}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sample_clip(tmp_path_factory.mktemp("clip") / "clip.avi", 100, (320, 240))


@pytest.fixture(scope="module")
def seen(tmp_path_factory: pytest.TempPathFactory, clip: Path, tiny_vlm_dir: Path) -> Path:
    """The store of one finished run that kept its features."""
    tmp = tmp_path_factory.mktemp("seen")
    cfg = load_config(run_config(tmp, clip, tiny_vlm_dir))
    run_dir = prepare_run_dir(cfg, tmp / "run")
    run_pipeline(cfg, run_dir)
    return run_dir / "store" / "vidqa.db"


@pytest.fixture()
def store(seen: Path, tmp_path: Path) -> Path:
    """A copy of the seen store for one test (asks write into it)."""
    folder = tmp_path / "store"
    shutil.copytree(seen.parent, folder)
    return folder / "vidqa.db"


def rows(db: Path, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def test_seen_store_when_features_kept_then_every_answered_crop_has_them(seen: Path):
    crops = rows(seen, "SELECT DISTINCT stream_id, track_id, frame FROM answers")
    shards = rows(seen, "SELECT * FROM features")
    assert shards and sum(s["crops"] for s in shards) == len(crops)
    assert {s["dtype"] for s in shards} == {"float16"} and {s["tokens"] for s in shards} == {4}
    assert sum((seen.parent / s["path"]).stat().st_size for s in shards) == \
        sum(s["bytes"] for s in shards)


def test_ask_when_asked_again_then_features_and_crops_give_the_live_answers(
        store: Path, tiny_vlm_dir: Path):
    cfg = past.store_config(store)
    tracks = len(rows(store, "SELECT DISTINCT run_id, stream_id, track_id FROM answers"))
    from_features = past.ask(store, JEANS, queries.Filters(), cfg, progress=False)
    from_crops = past.ask(store, JEANS, queries.Filters(), cfg, progress=False, features=False,
                         again=True)

    assert from_features.answered == from_features.from_features == tracks > 3
    assert from_crops.answered == from_crops.from_crops == tracks
    for result, margin_tolerance in ((from_features, 1e-3), (from_crops, 5e-3)):
        compared = past.agreement(store, result.ask_id)
        assert compared["crops"] == tracks and compared["agree"] >= 0.995, compared
        # The tiny model's margins differ by ~1e-2 from crop to crop: a wrong crop or wrong
        # features would show here even where the answers agree.
        assert compared["max_dmargin"] < margin_tolerance, compared
    sources = {r["source"] for r in rows(store, "SELECT source FROM answers WHERE ask_id "
                                                "IS NOT NULL")}
    assert sources == {"features", "crop"}


def test_ask_cli_when_asked_then_store_events_and_json_summary_agree(store: Path, capsys):
    assert main(["ask", str(store), BAG, "--json", "--stream", "0"]) == 0
    summary = json.loads(capsys.readouterr().out)
    answered = rows(store, "SELECT * FROM answers WHERE question = ?", (BAG,))
    assert summary["answered"] == len(answered) == summary["tracks"] > 0
    assert sum(summary["answers"].values()) == len(answered)
    assert summary["per_stream"]["0"] == summary["answers"]
    assert {r["ask_id"] for r in answered} == {summary["ask_id"]}

    assert main(["events", str(store), "--question", BAG, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {r["id"] for r in listed} == {r["id"] for r in answered}
    assert {r["source"] for r in listed} == {"features"}
    ask_row = queries.asks(store)[0]
    assert (ask_row["end_reason"], ask_row["answered"]) == ("done", len(answered))

    assert main(["ask", str(store), BAG]) == 0  # asked again: resumes, nothing left
    out = capsys.readouterr().out
    assert f"{len(answered)} answered before" in out and "0 answered now" in out


def test_ask_when_the_store_keeps_no_features_then_crops_and_a_line_says_so(
        store: Path, caplog_lines):
    conn = sqlite3.connect(store)
    with conn:
        conn.execute("DELETE FROM features")
    conn.close()
    result = past.ask(store, BAG, queries.Filters(), past.store_config(store), progress=False)
    assert result.answered == result.from_crops == result.tracks > 0
    assert any("keeps no vision features" in line for line in caplog_lines)


def test_ask_when_features_are_of_another_model_then_never_used(
        store: Path, tmp_path: Path, caplog_lines):
    other = build_tiny_vlm(tmp_path / "other-model", seed=1)
    cfg = load_config(None, [f"vlm.model={other}"])
    result = past.ask(store, BAG, queries.Filters(), cfg, progress=False)
    assert result.answered == result.from_crops == result.tracks > 0
    assert result.from_features == 0
    assert any("features of another model" in line for line in caplog_lines)


def test_ask_when_no_track_matches_then_one_line_and_nothing_written(store: Path, capsys):
    before = rows(store, "SELECT COUNT(*) AS n FROM answers")[0]["n"]
    assert main(["ask", str(store), BAG, "--stream", "nosuch"]) == 0
    out = capsys.readouterr()
    assert "0 matching tracks" in out.out and "no stored track matches" in out.err
    assert rows(store, "SELECT COUNT(*) AS n FROM answers")[0]["n"] == before
    assert main(["ask", str(store)]) == 2  # no question, no rule
    assert "give a question" in capsys.readouterr().err
    assert main(["ask", str(store), "--rule", "nosuch"]) == 2
    assert "its rules are nojeans" in capsys.readouterr().err


def test_ask_rule_when_asked_over_the_past_then_live_alerts_are_among_those_it_finds(
        store: Path, capsys):
    live_alerts = {r["track_id"] for r in rows(store, "SELECT track_id FROM alerts")}
    assert main(["ask", str(store), "--rule", "nojeans", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["rule"]
    found = {t["track_id"] for t in report["which"]}
    nos = {r["track_id"] for r in rows(store, "SELECT track_id FROM answers WHERE question = ? "
                                              "AND answer = 'no'", (JEANS,))}
    assert found == nos  # every crop stands in "all"; dwell 0: each "no" track raises it
    assert live_alerts <= found and report["also_live"] == len(live_alerts)


def test_retention_when_features_age_out_then_shards_and_rows_go(store: Path):
    shards = rows(store, "SELECT path FROM features")
    conn = sqlite3.connect(store, isolation_level=None)
    conn.row_factory = sqlite3.Row
    Retention(RetainConfig(days=1.0), store.parent).run(conn, now=time.time() + 2 * 86400)
    conn.close()
    assert not rows(store, "SELECT path FROM features")
    assert not any((store.parent / s["path"]).exists() for s in shards)
    result = past.ask(store, BAG, queries.Filters(), past.store_config(store), progress=False)
    assert result.from_features == 0  # snapshots went too: nothing left to ask from
    assert result.missing == result.tracks


def test_ask_when_interrupted_then_what_was_answered_is_kept_and_asking_resumes(
        store: Path, tmp_path: Path):
    """A store of many tracks (copies of the seen crops), asked from crops one at a time in a
    real `vidqa ask` process, which gets SIGINT once its first answers are committed."""
    many = _many_tracks(store, 600)
    command = [sys.executable, "-m", "vidqa", "ask", str(store), BAG, "--from-crops", "--quiet",
               "--set", "vlm.batch_size=1", "--json"]
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "VIDQA_OFFLINE": "1"})
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if rows(store, "SELECT COUNT(*) AS n FROM answers WHERE question = ?", (BAG,))[0]["n"]:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    summary = json.loads(out)
    kept = rows(store, "SELECT COUNT(*) AS n FROM answers WHERE question = ?", (BAG,))[0]["n"]
    assert proc.returncode == 130 and summary["end_reason"] == "interrupted", err
    assert 0 < summary["answered"] == kept < many
    assert queries.asks(store)[0]["end_reason"] == "interrupted"

    result = past.ask(store, BAG, queries.Filters(), past.store_config(store), progress=False,
                     features=False)
    assert result.answered_before == kept and result.answered == many - kept
    per_track = rows(store, "SELECT COUNT(*) AS n FROM answers WHERE question = ? "
                            "GROUP BY run_id, stream_id, track_id", (BAG,))
    assert len(per_track) == many and {r["n"] for r in per_track} == {1}


def _many_tracks(db: Path, count: int) -> int:
    """Add tracks (with one answered crop each, a copy of a seen one) up to ``count``."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.row_factory = sqlite3.Row
    seen = conn.execute("SELECT * FROM answers WHERE snapshot IS NOT NULL").fetchall()
    tracks = conn.execute("SELECT * FROM tracks").fetchall()
    have = {(t["run_id"], t["stream_id"], t["track_id"]) for t in tracks}
    conn.execute("BEGIN")
    track_id = 10_000
    while len(have) < count:
        answer, track = seen[track_id % len(seen)], tracks[track_id % len(tracks)]
        values = {**dict(answer), "id": None, "track_id": track_id}
        conn.execute(f"INSERT INTO answers ({', '.join(values)}) VALUES "
                     f"({', '.join('?' * len(values))})", tuple(values.values()))
        values = {**dict(track), "id": None, "track_id": track_id}
        conn.execute(f"INSERT INTO tracks ({', '.join(values)}) VALUES "
                     f"({', '.join('?' * len(values))})", tuple(values.values()))
        have.add((answer["run_id"], answer["stream_id"], track_id))
        track_id += 1
    conn.execute("COMMIT")
    conn.close()
    return len(have)


def test_ask_when_a_live_run_writes_the_same_store_then_both_go_on_and_nothing_breaks(
        tmp_path: Path, tiny_vlm_dir: Path):
    """The run reads a long clip as a file (a replayed camera on two busy cores drops so many
    frames that no track is confirmed): it keeps writing while the asks read and write."""
    clip = write_sample_clip(tmp_path / "long.avi", 500, (320, 240))
    db = tmp_path / "shared" / "vidqa.db"
    config = run_config(tmp_path, clip, tiny_vlm_dir, store={"features": True, "path": str(db)})
    proc = subprocess.Popen(
        [sys.executable, "-m", "vidqa", "run", str(config), "--out", str(tmp_path / "live")],
        cwd=REPO, env={**os.environ, "VIDQA_OFFLINE": "1"}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if _count(db, "SELECT COUNT(DISTINCT track_id) FROM answers") >= 3:
                break
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            time.sleep(0.5)
        else:
            pytest.fail("the live run answered too little")
        results = [past.ask(db, BAG, queries.Filters(), past.store_config(db), progress=False)
                   for _ in range(2)]
        live_before = _count(db, "SELECT COUNT(*) FROM answers WHERE ask_id IS NULL")
        time.sleep(3)
        live_after = _count(db, "SELECT COUNT(*) FROM answers WHERE ask_id IS NULL")
        assert proc.poll() is None
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
        proc.communicate(timeout=60)
    assert results[0].answered == results[0].tracks > 0 and results[0].failed == 0
    assert results[1].answered_before == results[0].answered  # the second resumed
    assert live_after > live_before  # the run kept writing while and after it was asked
    summary = json.loads((tmp_path / "live" / "summary.json").read_text())
    assert summary["store"]["dropped_when_full"] == 0
    assert _count(db, "SELECT COUNT(*) FROM asks WHERE end_reason = 'done'") == 2
    assert rows(db, "PRAGMA integrity_check")[0][0] == "ok"


def _count(db: Path, sql: str) -> int:
    try:
        return rows(db, sql)[0][0]
    except sqlite3.OperationalError:  # the schema is still being created
        return 0


@pytest.fixture()
def caplog_lines() -> list[str]:
    """The lines vidqa logs during the test (loguru, not the logging module)."""
    from loguru import logger

    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message)), level="INFO")
    yield lines
    logger.remove(sink)

