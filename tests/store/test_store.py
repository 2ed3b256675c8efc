"""The event store: rows, snapshots and the JSONL export from records, migrations, retention,
and a stream's sink that turns frames into records in fixed memory."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
from factories import detections, make_crops, scripted_answers

from vidqa.config import load_config
from vidqa.errors import OutputError
from vidqa.messages import Clip, FrameResult, Segment, VideoFrame
from vidqa.store import EventStore, StoreSink, StreamRecord, connect
from vidqa.store.retention import Retention
from vidqa.store.schema import MIGRATIONS, SCHEMA_VERSION
from vidqa.store.sink import MAX_CROPS
from vidqa.zones import Alert


def open_store(run_dir: Path, *overrides: str, merged: bool = False) -> EventStore:
    cfg = load_config(None, list(overrides))
    return EventStore(cfg, run_dir, run_dir / "events.jsonl" if merged else None).open()


def frame_result(index: int, tracks: list[int], crops: tuple = (), answers: tuple = (),
                 ended: tuple = (), alerts: tuple = ()) -> FrameResult:
    image = np.full((120, 160, 3), 80, np.uint8)
    frame = VideoFrame(image=image, frame_index=index, timestamp=index / 10, source_id="clip",
                       fps=10.0)
    boxes = [(10 + 5 * t, 10, 30 + 5 * t + index, 60) for t in tracks]
    return FrameResult(frame, detections(boxes, tracks), crops=crops, answers=answers,
                       ended_tracks=ended, alerts=alerts)


def stream_record(folder: Path, stream_id: str = "0", segmented: bool = False) -> StreamRecord:
    return StreamRecord(stream_id, "clip", folder, segmented, events=True, alerts=True)


def rows(store_path: Path, sql: str) -> list[sqlite3.Row]:
    with connect(store_path, readonly=True) as conn:
        return conn.execute(sql).fetchall()


def test_store_when_a_stream_is_answered_then_rows_snapshots_and_jsonl_agree(tmp_path):
    store = open_store(tmp_path)
    sink = StoreSink("0", store.put_many)
    store.put_many([stream_record(tmp_path)])
    crops = tuple(make_crops([1, 2], frame=0))
    sink.write(frame_result(0, [1, 2], crops=crops))
    answers = tuple(a for per in scripted_answers(crops, ["q1", "q2"]) for a in per)
    sink.write(frame_result(1, [1, 2], answers=answers))
    sink.write(frame_result(2, [2], ended=(1,)))
    sink.close()
    store.close("completed")

    lines = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    answers_rows = rows(store.path, "SELECT * FROM answers ORDER BY id")
    tracks = {r["track_id"]: r for r in rows(store.path, "SELECT * FROM tracks")}
    assert len(lines) == len(answers_rows) == 4
    assert [line["answer_id"] for line in lines] == [r["id"] for r in answers_rows]
    # one JPEG per crop, shared by the questions asked of it, named by the first answer's id
    snapshots = {r["snapshot"] for r in answers_rows}
    assert len(snapshots) == 2 and all((store.folder / s).stat().st_size > 0 for s in snapshots)
    assert tracks[1]["ended"] == 1 and tracks[1]["last_frame"] == 1
    assert tracks[2]["ended"] == 0 and tracks[2]["last_frame"] == 2  # alive at the close
    assert json.loads(tracks[2]["best_box"]) == [20, 10, 42, 60]  # its largest box
    (run,) = rows(store.path, "SELECT * FROM runs")
    assert run["end_reason"] == "completed" and run["ended_at"] >= run["started_at"]


def test_store_when_an_alert_is_raised_then_row_full_frame_snapshot_and_alerts_jsonl(tmp_path):
    store = open_store(tmp_path)
    sink = StoreSink("0", store.put_many)
    store.put_many([stream_record(tmp_path)])
    alert = Alert("no_hat", 3, "door", "q", "no", 5, 0.5, 2.0, (10, 10, 40, 60))
    sink.write(frame_result(5, [3], alerts=(alert,)))
    store.close("completed")

    (row,) = rows(store.path, "SELECT * FROM alerts")
    (line,) = (tmp_path / "alerts.jsonl").read_text().splitlines()
    image = (store.folder / row["snapshot"]).read_bytes()
    assert json.loads(line)["alert_id"] == row["id"] and row["rule"] == "no_hat"
    assert image[:2] == b"\xff\xd8"  # a JPEG of the whole frame
    assert row["snapshot"] == f"snapshots/0/alert-{row['id']}.jpg"


def test_store_when_records_arrive_then_committed_within_commit_every_s(tmp_path):
    store = open_store(tmp_path, "store.commit_every_s=0.2")
    store.put_many([stream_record(tmp_path)])
    crops = make_crops([1])
    answers = scripted_answers(crops, ["q"])[0]
    StoreSink("0", store.put_many).write_answers(answers)
    deadline = time.monotonic() + 5
    while not rows(store.path, "SELECT id FROM answers") and time.monotonic() < deadline:
        time.sleep(0.05)
    # readable by another connection before the store closes: committed, not just queued
    assert len(rows(store.path, "SELECT id FROM answers")) == 1
    store.close()


def test_store_when_opened_again_then_a_new_run_and_no_id_collides(tmp_path):
    for _ in range(2):
        store = open_store(tmp_path)
        store.put_many([stream_record(tmp_path)])
        crops = make_crops([1, 2])
        StoreSink("0", store.put_many).write_answers(
            [a for per in scripted_answers(crops, ["q"]) for a in per])
        store.close("completed")

    runs = rows(store.path, "SELECT id FROM runs ORDER BY id")
    answers = rows(store.path, "SELECT id, run_id FROM answers")
    assert [r["id"] for r in runs] == [1, 2]
    assert len({r["id"] for r in answers}) == 4
    assert sorted(r["run_id"] for r in answers) == [1, 1, 2, 2]
    (stream,) = rows(store.path, "SELECT * FROM streams")
    assert (stream["first_run"], stream["last_run"]) == (1, 2)


def test_store_when_file_is_newer_than_this_vidqa_then_refused_with_the_fix(tmp_path):
    path = tmp_path / "store" / "vidqa.db"
    path.parent.mkdir()
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(OutputError, match="newer than this vidqa.*store.path"):
        open_store(tmp_path)


def test_store_when_opened_then_wal_and_schema_version(tmp_path):
    store = open_store(tmp_path)
    store.close()
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_store_when_queue_is_full_then_put_never_blocks_and_drops_are_counted(tmp_path):
    cfg = load_config(None, ["store.queue_size=100"])
    store = EventStore(cfg, tmp_path)  # not opened: nothing drains the queue
    started = time.monotonic()
    store.put_many([stream_record(tmp_path)] * 150)
    assert store.dropped == 50 and time.monotonic() - started < 5


def segment(folder: Path, name: str, wall_ended: float, size: int = 1000) -> Segment:
    video = folder / "segments" / f"{name}.mp4"
    video.parent.mkdir(parents=True, exist_ok=True)
    video.write_bytes(b"\0" * size)
    return Segment("0", str(video), (str(video),), 0, 9, 10, 0.0, 1.0, wall_ended - 1,
                   wall_ended, size)


def test_store_when_segment_closes_then_the_streams_jsonl_moves_beside_it(tmp_path):
    store = open_store(tmp_path)
    store.put_many([stream_record(tmp_path, segmented=True)])
    answers = scripted_answers(make_crops([1]), ["q"])[0]
    StoreSink("0", store.put_many).write_answers(answers)
    time.sleep(0.6)  # committed and exported before the segment closes
    store.put_many([segment(tmp_path, "20261203T000000Z-0001", time.time())])
    store.close()

    (row,) = rows(store.path, "SELECT files, bytes FROM segments")
    files = json.loads(row["files"])
    moved = tmp_path / "segments" / "20261203T000000Z-0001.events.jsonl"
    assert files[-1] == str(moved) and len(moved.read_text().splitlines()) == 1
    assert row["bytes"] == 1000 + moved.stat().st_size
    assert (tmp_path / "events.jsonl").read_text() == ""  # a fresh piece


def test_retention_when_over_age_and_size_then_oldest_files_and_rows_go(tmp_path):
    store = open_store(tmp_path, "retain.days=1", "retain.max_gb=0.0000025")  # 2500 bytes
    now = time.time()
    store.put_many([segment(tmp_path, f"s{i}", now - age) for i, age in
                    enumerate([3 * 86400, 3000, 2000, 1000])])
    store.close()
    conn = connect(store.path)
    retention = Retention(store.cfg.retain, store.folder)
    retention.run(conn, now)

    left = [Path(r["video"]).name for r in conn.execute("SELECT video FROM segments "
                                                         "ORDER BY wall_ended")]
    assert left == ["s2.mp4", "s3.mp4"]  # s0 too old, s1 over the cap
    assert sorted(p.name for p in (tmp_path / "segments").iterdir()) == ["s2.mp4", "s3.mp4"]
    assert retention.used_bytes(conn) <= 2500
    # the store's writer ran retention when it opened; this pass had what was left
    deleted = store.summary()["retention_deleted"].get("segments", 0)
    assert deleted + retention.deleted["segments"] == 2


def test_retention_when_snapshots_expire_then_answers_keep_their_rows_without_the_file(
        tmp_path):
    store = open_store(tmp_path, "retain.days=1")
    sink = StoreSink("0", store.put_many)
    store.put_many([stream_record(tmp_path)])
    crops = tuple(make_crops([1]))
    sink.write(frame_result(0, [1], crops=crops))
    sink.write(frame_result(1, [1], answers=tuple(scripted_answers(crops, ["q"])[0])))
    store.close()
    conn = connect(store.path)
    (answer,) = conn.execute("SELECT snapshot FROM answers").fetchall()
    Retention(store.cfg.retain, store.folder).run(conn, time.time() + 0.5 * 86400)
    assert (store.folder / answer["snapshot"]).exists()  # half a day old: kept
    Retention(store.cfg.retain, store.folder).run(conn, time.time() + 1.5 * 86400)
    assert not (store.folder / answer["snapshot"]).exists()
    assert conn.execute("SELECT COUNT(*) FROM snapshots").fetchone()[0] == 0
    assert conn.execute("SELECT COUNT(*) FROM answers").fetchone()[0] == 0  # rows by age too


def test_store_sink_when_many_crops_go_unanswered_then_it_keeps_a_bounded_number(tmp_path):
    sent = []
    sink = StoreSink("0", sent.extend)
    for index in range(MAX_CROPS + 50):
        sink.write(frame_result(index, [index], crops=tuple(make_crops([index], frame=index)),
                                ended=(index,)))
    assert len(sink.crops) == MAX_CROPS and not sink.tracks  # ended tracks are forgotten


@pytest.mark.parametrize("make, expected", [
    (lambda path: path.write_text("not a database, a note"), "not a database"),
    (lambda path: path.mkdir(), "unable to open"),  # a folder where the file should be
])
def test_store_when_path_is_not_a_usable_file_then_output_error_names_it_and_the_fix(
        tmp_path, make, expected):
    path = tmp_path / "elsewhere.db"
    make(path)
    cfg = load_config(None, [f"store.path={path}"])
    with pytest.raises(OutputError, match=f"cannot open the event store {path}: .*{expected}"
                                          f".*--set store.path=PATH.db"):
        EventStore(cfg, tmp_path / "run").open()


def clip_of(folder: Path, name: str, alerts: tuple, wall_ended: float, size: int = 1000
            ) -> Clip:
    relative = f"clips/0/{name}.webm"
    (folder / relative).parent.mkdir(parents=True, exist_ok=True)
    (folder / relative).write_bytes(b"\0" * size)
    return Clip("0", relative, alerts, 0, 9, 10, 0.0, 0.9, 10.0, wall_ended - 1, wall_ended,
                size, "after")


def test_store_when_a_clip_completes_then_its_alerts_point_at_it_and_jsonl_says_so(tmp_path):
    store = open_store(tmp_path)
    sink = StoreSink("0", store.put_many)
    store.put_many([stream_record(tmp_path)])
    alerts = [Alert("no_hat", track, "door", "q", "no", 5, 0.5, 2.0, (10, 10, 40, 60))
              for track in (3, 4)]
    sink.write(frame_result(5, [3, 4], alerts=tuple(alerts)))
    keys = (("no_hat", 3, 5), ("no_hat", 4, 5), ("no_hat", 9, 5))  # track 9's row was dropped
    sink.on_clip(clip_of(store.folder, "alert-1", keys, time.time()))
    store.close("completed")

    alert_rows = rows(store.path, "SELECT id, clip FROM alerts ORDER BY id")
    (clip,) = rows(store.path, "SELECT * FROM clips")
    lines = [json.loads(line) for line in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    assert [r["clip"] for r in alert_rows] == ["clips/0/alert-1.webm"] * 2
    assert (clip["frames"], clip["bytes"], clip["cut"]) == (10, 1000, "after")
    assert [line["event"] for line in lines] == ["alert", "alert", "clip"]
    assert lines[2]["alert_ids"] == [r["id"] for r in alert_rows]
    assert store.summary()["clips"] == 1 and store.summary()["clip_bytes"] == 1000


def test_retention_when_clips_expire_or_pass_the_cap_then_the_oldest_go_and_alerts_keep_rows(
        tmp_path):
    store = open_store(tmp_path, "retain.days=1", "retain.max_gb=0.0000025")
    now = time.time()
    alert = Alert("r", 1, "door", "q", "no", 5, 0.5, 0.0, (1, 1, 9, 9))
    StoreSink("0", store.put_many).write(frame_result(5, [1], alerts=(alert,)))
    store.put_many([clip_of(store.folder, f"c{i}", (("r", 1, 5),), now - age)
                    for i, age in enumerate([3 * 86400, 3000, 2000])])
    store.put_many([segment(tmp_path, "s0", now - 2500)])
    store.close()
    conn = connect(store.path)
    retention = Retention(store.cfg.retain, store.folder)
    retention.run(conn, now)

    left = [r["path"] for r in conn.execute("SELECT path FROM clips ORDER BY created_at")]
    assert left == ["clips/0/c2.webm"]  # c0 too old; c1, then the segment, over the cap
    assert sorted(p.name for p in (store.folder / "clips" / "0").iterdir()) == ["c2.webm"]
    assert conn.execute("SELECT COUNT(*) FROM segments").fetchone()[0] == 0
    assert retention.used_bytes(conn) <= 2500
    Retention(store.cfg.retain, store.folder).run(conn, now + 2 * 86400)
    assert conn.execute("SELECT COUNT(*) FROM clips").fetchone()[0] == 0
    assert not (store.folder / "clips" / "0" / "c2.webm").exists()


def test_store_when_file_has_schema_1_then_migrated_with_alerts_kept_no_clip_no_features(tmp_path):
    path = tmp_path / "store" / "vidqa.db"
    path.parent.mkdir()
    with sqlite3.connect(path) as conn:
        conn.executescript(MIGRATIONS[0] + "PRAGMA user_version = 1;")
        conn.execute("INSERT INTO runs (started_at, run_dir, config) VALUES (1, 'r', '{}')")
        conn.execute("INSERT INTO alerts (run_id, stream_id, track_id, rule, zone, question, "
                     "answer, frame, time_s, dwell_s, raised_at, bbox) VALUES "
                     "(1, '0', 1, 'r', 'z', 'q', 'no', 5, 0.5, 0, ?, '[1, 1, 9, 9]')",
                     (time.time(),))  # recent: retention keeps it
    open_store(tmp_path).close()

    (alert,) = rows(path, "SELECT rule, clip FROM alerts")
    assert (alert["rule"], alert["clip"]) == ("r", None)
    assert rows(path, "SELECT COUNT(*) AS n FROM clips")[0]["n"] == 0
    assert rows(path, "SELECT COUNT(*) AS n FROM features")[0]["n"] == 0
    assert rows(path, "SELECT COUNT(*) AS n FROM answers WHERE ask_id IS NOT NULL")[0]["n"] == 0
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
