"""The store's tables, and the forward migrations that bring an older file up to date.

``PRAGMA user_version`` holds the schema version. Opening a file applies the migrations it
lacks, each in its own transaction; a file written by a newer vidqa is refused rather than
guessed at. WAL mode lets readers (the web page, the CLI, a test) read while the run writes,
and a crash loses at most the transaction in progress, never the file's integrity.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from vidqa.errors import OutputError

STORE_FOLDER = "store"  # under the run folder, when store.path is auto
DB_NAME = "vidqa.db"

# Each entry moves the schema from version i to i + 1; never edit one that has shipped.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY,
        started_at REAL NOT NULL,          -- epoch seconds
        ended_at REAL,
        end_reason TEXT,
        run_dir TEXT NOT NULL,
        host TEXT, pid INTEGER,
        config TEXT NOT NULL,              -- the resolved config, JSON
        summary TEXT                       -- the run's summary.json, when it ended
    );
    CREATE TABLE streams (
        id TEXT PRIMARY KEY,               -- the stream's id in the config
        source TEXT NOT NULL,
        folder TEXT NOT NULL,
        first_run INTEGER NOT NULL REFERENCES runs(id),
        last_run INTEGER NOT NULL REFERENCES runs(id)
    );
    CREATE TABLE tracks (
        id INTEGER PRIMARY KEY,
        run_id INTEGER NOT NULL REFERENCES runs(id),
        stream_id TEXT NOT NULL,
        track_id INTEGER NOT NULL,         -- the tracker's id: unique within a run and stream
        first_frame INTEGER NOT NULL, first_s REAL NOT NULL, first_seen_at REAL NOT NULL,
        last_frame INTEGER NOT NULL, last_s REAL NOT NULL, last_seen_at REAL NOT NULL,
        best_box TEXT NOT NULL,            -- [x1, y1, x2, y2] of its largest box
        best_frame INTEGER NOT NULL,
        ended INTEGER NOT NULL DEFAULT 0,
        UNIQUE (run_id, stream_id, track_id)
    );
    CREATE TABLE answers (
        id INTEGER PRIMARY KEY,
        run_id INTEGER NOT NULL REFERENCES runs(id),
        stream_id TEXT NOT NULL,
        track_id INTEGER NOT NULL,
        question TEXT NOT NULL,
        answer TEXT NOT NULL,
        p_yes REAL, margin REAL,
        compressed INTEGER NOT NULL, plan_id TEXT, model TEXT NOT NULL,
        frame INTEGER NOT NULL,            -- the crop's frame
        time_s REAL NOT NULL,
        answered_frame INTEGER, answered_time_s REAL,
        answered_at REAL NOT NULL,         -- epoch seconds the stream received it
        latency_ms REAL, queue_ms REAL, vlm_ms REAL,
        bbox TEXT NOT NULL,
        snapshot TEXT,                     -- the crop's JPEG, relative to the store's folder
        extra TEXT                         -- stage-specific fields, JSON
    );
    CREATE INDEX answers_by_time ON answers (answered_at);
    CREATE INDEX answers_by_track ON answers (run_id, stream_id, track_id);
    CREATE INDEX answers_by_question ON answers (question, answer);
    CREATE INDEX answers_by_snapshot ON answers (snapshot);
    CREATE TABLE alerts (
        id INTEGER PRIMARY KEY,
        run_id INTEGER NOT NULL REFERENCES runs(id),
        stream_id TEXT NOT NULL,
        track_id INTEGER NOT NULL,
        rule TEXT NOT NULL, zone TEXT NOT NULL, question TEXT NOT NULL, answer TEXT NOT NULL,
        frame INTEGER NOT NULL, time_s REAL NOT NULL, dwell_s REAL NOT NULL,
        raised_at REAL NOT NULL,
        bbox TEXT NOT NULL,
        snapshot TEXT                      -- the full frame with the box, JPEG
    );
    CREATE INDEX alerts_by_time ON alerts (raised_at);
    CREATE TABLE segments (
        id INTEGER PRIMARY KEY,
        run_id INTEGER NOT NULL REFERENCES runs(id),
        stream_id TEXT NOT NULL,
        video TEXT NOT NULL,
        files TEXT NOT NULL,               -- every file of the segment, JSON list
        first_frame INTEGER NOT NULL, last_frame INTEGER NOT NULL, frames INTEGER NOT NULL,
        started_s REAL NOT NULL, ended_s REAL NOT NULL,
        wall_started REAL NOT NULL, wall_ended REAL NOT NULL,
        bytes INTEGER NOT NULL
    );
    CREATE INDEX segments_by_end ON segments (wall_ended);
    CREATE TABLE snapshots (
        path TEXT PRIMARY KEY,             -- relative to the store's folder
        kind TEXT NOT NULL,                -- crop | alert
        created_at REAL NOT NULL,
        bytes INTEGER NOT NULL
    );
    CREATE INDEX snapshots_by_time ON snapshots (created_at);
    """,
    """
    ALTER TABLE alerts ADD COLUMN clip TEXT;  -- its WebM clip, relative to the store's folder
    CREATE TABLE clips (
        path TEXT PRIMARY KEY,             -- relative to the store's folder
        run_id INTEGER NOT NULL REFERENCES runs(id),
        stream_id TEXT NOT NULL,
        first_frame INTEGER NOT NULL, last_frame INTEGER NOT NULL, frames INTEGER NOT NULL,
        started_s REAL NOT NULL, ended_s REAL NOT NULL, fps REAL NOT NULL,
        wall_started REAL NOT NULL,
        created_at REAL NOT NULL,          -- epoch seconds the file was closed
        bytes INTEGER NOT NULL,
        cut TEXT NOT NULL                  -- after | max | end: why it ended
    );
    CREATE INDEX clips_by_time ON clips (created_at);
    CREATE INDEX alerts_by_clip ON alerts (clip);
    """,
    """
    CREATE TABLE features (
        path TEXT PRIMARY KEY,             -- a safetensors shard, relative to the store's folder
        run_id INTEGER NOT NULL REFERENCES runs(id),
        model TEXT NOT NULL, revision TEXT NOT NULL,  -- features are never used for another
        dtype TEXT NOT NULL,
        tokens INTEGER NOT NULL,           -- image tokens per crop
        crops INTEGER NOT NULL,
        created_at REAL NOT NULL,
        bytes INTEGER NOT NULL
    );
    CREATE INDEX features_by_time ON features (created_at);
    CREATE INDEX features_by_run ON features (run_id);
    CREATE TABLE asks (
        id INTEGER PRIMARY KEY,
        tag TEXT UNIQUE,                   -- the web page's handle on an ask it started
        question TEXT NOT NULL,
        model TEXT NOT NULL, revision TEXT NOT NULL,
        filters TEXT NOT NULL,             -- which tracks, JSON
        rule TEXT,                         -- asked for a rule over the past
        started_at REAL NOT NULL,
        ended_at REAL,
        end_reason TEXT,                   -- done | interrupted | failed
        tracks INTEGER NOT NULL,           -- matching tracks
        answered INTEGER NOT NULL DEFAULT 0,
        from_features INTEGER NOT NULL DEFAULT 0,
        from_crops INTEGER NOT NULL DEFAULT 0,
        failed INTEGER NOT NULL DEFAULT 0
    );
    ALTER TABLE answers ADD COLUMN ask_id INTEGER REFERENCES asks(id);  -- NULL: answered live
    ALTER TABLE answers ADD COLUMN source TEXT;  -- asked later: features | crop
    CREATE INDEX answers_by_ask ON answers (ask_id);
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


def connect(path: Path, readonly: bool = False) -> sqlite3.Connection:
    """A connection in WAL mode with the schema up to date (a reader never migrates)."""
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10.0,
                               check_same_thread=False)
        conn.row_factory = sqlite3.Row
        return conn
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a crash never corrupts the file
    conn.execute("PRAGMA foreign_keys=ON")
    migrate(conn, path)
    return conn


def migrate(conn: sqlite3.Connection, path: Path) -> int:
    """Apply the migrations ``conn``'s file lacks; returns the version it had."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise OutputError(f"the store {path} has schema version {version}, newer than this "
                          f"vidqa's {SCHEMA_VERSION}: upgrade vidqa, or give this run another "
                          f"store with --set store.path=NEW.db")
    for target, script in enumerate(MIGRATIONS[version:], start=version + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in script.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {target}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return version
