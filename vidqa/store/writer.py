"""The store's one writer: records from every stream, committed in small transactions.

A stream calls :meth:`EventStore.put` and never waits: the record goes on a bounded queue (a
full queue drops it and counts it). The writer thread commits what arrived at least every
``store.commit_every_s`` seconds, writes the snapshots of the committed answers and alerts,
then their JSONL lines, and between batches runs retention on its timer.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import socket
import sqlite3
import threading
import time
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Any

from loguru import logger

from vidqa.config import PipelineConfig
from vidqa.errors import OutputError
from vidqa.messages import Clip, Segment
from vidqa.notify import Notifiers
from vidqa.store.exports import Exports
from vidqa.store.records import AlertRecord, AnswerRecord, StreamRecord, TrackSeen
from vidqa.store.retention import Retention
from vidqa.store.schema import DB_NAME, STORE_FOLDER, connect

BATCH_MAX = 2000  # records in one transaction, at most
RECENT_CROPS = 1024  # crops whose snapshot a later answer may share


def store_path(cfg: PipelineConfig, run_dir: Path) -> Path:
    """The deployment's SQLite file: ``store.path``, or ``<run folder>/store/vidqa.db``."""
    if cfg.store.path != "auto":
        return Path(cfg.store.path)
    return Path(run_dir) / STORE_FOLDER / DB_NAME


class EventStore:
    """The run's store: one row in ``runs``, a writer thread for everything else."""

    def __init__(self, cfg: PipelineConfig, run_dir: Path, merged_events: Path | None = None
                 ) -> None:
        self.cfg = cfg
        self.path = store_path(cfg, run_dir)
        self.folder = self.path.parent
        self.run_dir = Path(run_dir)
        self._queue: queue.Queue[tuple[float, Any] | None] = queue.Queue(cfg.store.queue_size)
        self._exports = Exports(merged_events)
        self._thread = threading.Thread(target=self._write, name="store-writer", daemon=True)
        self._closed = threading.Event()
        self.counts: Counter[str] = Counter()
        self.dropped = 0
        self._oldest_waiting: float | None = None  # put time of the oldest record not committed
        self.run_id: int | None = None
        self.retention = Retention(cfg.retain, self.folder)
        self._conn = None
        self._crop_snapshots: OrderedDict[tuple, str] = OrderedDict()  # crop -> its JPEG
        self.notify = Notifiers.from_config(cfg)  # MQTT, webhooks: told after each commit

    def open(self) -> EventStore:
        """Open (or create, or migrate) the file, add this run, start the writer."""
        try:
            self._conn = connect(self.path)
        except (OSError, sqlite3.Error) as err:
            raise OutputError(f"cannot open the event store {self.path}: {err}; give it a "
                              f"writable SQLite file with --set store.path=PATH.db") from None
        cursor = self._conn.execute(
            "INSERT INTO runs (started_at, run_dir, host, pid, config) VALUES (?, ?, ?, ?, ?)",
            (time.time(), str(self.run_dir), socket.gethostname(), os.getpid(),
             json.dumps(self.cfg.to_dict(), default=str)))
        self.run_id = cursor.lastrowid
        earlier = self._conn.execute("SELECT COUNT(*) FROM runs WHERE id < ?",
                                     (self.run_id,)).fetchone()[0]
        logger.info("event store {}: run {}{}", self.path, self.run_id,
                    f", after {earlier} earlier run(s) of this store" if earlier else "")
        self._thread.start()
        self.notify.start(self.run_id, self.run_dir, self.folder)
        return self

    def put(self, record: Any) -> None:
        """Hand a record to the writer; never blocks (a full queue drops it, counted)."""
        if self._closed.is_set():
            return
        now = time.monotonic()
        try:
            self._queue.put_nowait((now, record))
        except queue.Full:
            self.dropped += 1
            return
        if self._oldest_waiting is None:
            self._oldest_waiting = now

    def put_many(self, records: list[Any]) -> None:
        for record in records:
            self.put(record)

    @property
    def write_lag_s(self) -> float:
        """How long the oldest record not yet committed has waited (0 when none)."""
        oldest = self._oldest_waiting
        return time.monotonic() - oldest if oldest is not None else 0.0

    def close(self, end_reason: str | None = None, summary: dict[str, Any] | None = None
              ) -> None:
        """Commit everything queued, end the run's row, close the files (idempotent)."""
        if self._closed.is_set() or self._conn is None:
            return
        self._closed.set()
        self._queue.put((time.monotonic(), None))  # may wait: the writer is draining
        self._thread.join()
        self.notify.close(end_reason)
        self._exports.close()
        self._conn.execute("UPDATE runs SET ended_at = ?, end_reason = ? WHERE id = ?",
                           (time.time(), end_reason, self.run_id))
        self._conn.close()
        if summary is not None:
            self.record_summary(summary)

    def record_summary(self, summary: dict[str, Any]) -> None:
        """The run's summary into its row (after :meth:`close`: the writer has ended)."""
        with contextlib.closing(connect(self.path)) as conn:
            conn.execute("UPDATE runs SET end_reason = ?, summary = ? WHERE id = ?",
                         (summary.get("end_reason"), json.dumps(summary, default=str),
                          self.run_id))

    def summary(self) -> dict[str, Any]:
        return {"path": str(self.path), "run_id": self.run_id, **dict(self.counts),
                "dropped_when_full": self.dropped, **self.retention.summary(),
                **({"notify": self.notify.summary()} if self.notify else {})}

    # --------------------------------------------------------------------------- writer thread

    def _write(self) -> None:
        period = self.cfg.store.commit_every_s
        ending = False
        while not ending:
            batch, ending = self._take(period)
            if batch:
                try:
                    self._commit(batch)
                except Exception as err:  # a bad record must not stop the store
                    logger.opt(exception=True).error("the store could not write {} records: "
                                                     "{}", len(batch), err)
                    self.counts["failed_writes"] += len(batch)
            self._oldest_waiting = None if self._queue.empty() else time.monotonic()
            self.retention.maybe_run(self._conn, final=ending)

    def _take(self, period: float) -> tuple[list[Any], bool]:
        """Records until ``period`` after the first, or the batch is full, or the end."""
        try:
            first = self._queue.get(timeout=period)
        except queue.Empty:
            return [], False
        batch, deadline = [], first[0] + period
        item = first
        while True:
            if item[1] is None:
                return batch, True
            batch.append(item[1])
            if len(batch) >= BATCH_MAX:
                return batch, False
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return batch, False

    def _commit(self, batch: list[Any]) -> None:
        lines: list[tuple[str, str, dict[str, Any]]] = []
        conn = self._conn
        conn.execute("BEGIN")
        try:
            for record in batch:
                self._insert(conn, record, lines)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self._exports.write(lines)
        self.notify.committed(lines)  # only queued: the network is the notifiers' threads'

    def _insert(self, conn: Any, record: Any, lines: list) -> None:
        if isinstance(record, AnswerRecord):
            self._answer(conn, record, lines)
        elif isinstance(record, TrackSeen):
            self._track(conn, record)
        elif isinstance(record, AlertRecord):
            self._alert(conn, record, lines)
        elif isinstance(record, Segment):
            self._segment(conn, record)
        elif isinstance(record, Clip):
            self._clip(conn, record, lines)
        elif isinstance(record, StreamRecord):
            self._stream(conn, record)
            lines.append((record.stream_id, "streams", {"source": record.source}))
        else:
            raise TypeError(f"the store cannot write a {type(record).__name__}")

    def _answer(self, conn: Any, record: AnswerRecord, lines: list) -> None:
        a = record.answer
        cursor = conn.execute(
            "INSERT INTO answers (run_id, stream_id, track_id, question, answer, p_yes, margin, "
            "compressed, plan_id, model, frame, time_s, answered_frame, answered_time_s, "
            "answered_at, latency_ms, queue_ms, vlm_ms, bbox, extra) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (self.run_id, a.stream_id, a.track_id, a.question, a.answer, a.p_yes, a.margin,
             int(a.compressed), a.plan_id, a.model, a.frame_index, a.time_s,
             a.answered_frame_index, a.answered_time_s, record.answered_at, a.latency_ms,
             a.queue_ms, a.vlm_ms, json.dumps(list(a.bbox)),
             json.dumps(a.extra, default=str) if a.extra else None))
        event = a.to_event()
        if record.snapshot is not None and self.cfg.store.snapshots:
            key = (a.stream_id, a.track_id, a.frame_index)  # one crop, several questions
            path = self._crop_snapshots.get(key)
            if path is None:
                path = self._snapshot(conn, record.snapshot, a.stream_id, "crop",
                                      cursor.lastrowid, record.answered_at)
                self._crop_snapshots[key] = path
                while len(self._crop_snapshots) > RECENT_CROPS:
                    self._crop_snapshots.popitem(last=False)
            conn.execute("UPDATE answers SET snapshot = ? WHERE id = ?", (path, cursor.lastrowid))
            event["snapshot"] = path
        self.counts["answers"] += 1
        lines.append((a.stream_id, "events", {"answer_id": cursor.lastrowid, **event}))

    def _alert(self, conn: Any, record: AlertRecord, lines: list) -> None:
        a = record.alert
        cursor = conn.execute(
            "INSERT INTO alerts (run_id, stream_id, track_id, rule, zone, question, answer, "
            "frame, time_s, dwell_s, raised_at, bbox) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (self.run_id, a.stream_id, a.track_id, a.rule, a.zone, a.question, a.answer,
             a.frame_index, a.time_s, a.dwell_s, record.raised_at, json.dumps(list(a.bbox))))
        event = a.to_event()
        if record.snapshot is not None and self.cfg.store.snapshots:
            path = self._snapshot(conn, record.snapshot, a.stream_id, "alert", cursor.lastrowid,
                                  record.raised_at)
            conn.execute("UPDATE alerts SET snapshot = ? WHERE id = ?", (path, cursor.lastrowid))
            event["snapshot"] = path
        self.counts["alerts"] += 1
        lines.append((a.stream_id, "alerts", {"alert_id": cursor.lastrowid, **event}))

    def _snapshot(self, conn: Any, jpeg: bytes, stream_id: str, kind: str, row_id: int,
                  created_at: float) -> str:
        """Write the JPEG as ``snapshots/<stream>/<kind>-<row id>.jpg``; its relative path."""
        relative = f"snapshots/{stream_id}/{kind}-{row_id}.jpg"
        path = self.folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(jpeg)
        conn.execute("INSERT OR REPLACE INTO snapshots (path, kind, created_at, bytes) "
                     "VALUES (?, ?, ?, ?)", (relative, kind, created_at, len(jpeg)))
        self.counts["snapshots"] += 1
        return relative

    def _track(self, conn: Any, t: TrackSeen) -> None:
        upsert_track(conn, self.run_id, t)
        self.counts["track_updates"] += 1

    def _segment(self, conn: Any, s: Segment) -> None:
        files = [*s.files, *self._exports.rotate(s)]
        size = s.bytes + sum(Path(f).stat().st_size for f in files[len(s.files):])
        conn.execute(
            "INSERT INTO segments (run_id, stream_id, video, files, first_frame, last_frame, "
            "frames, started_s, ended_s, wall_started, wall_ended, bytes) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (self.run_id, s.stream_id, s.video, json.dumps(files), s.first_frame, s.last_frame,
             s.frames, s.started_s, s.ended_s, s.wall_started, s.wall_ended, size))
        self.counts["segments"] += 1

    def _clip(self, conn: Any, clip: Clip, lines: list) -> None:
        ids = index_clip(conn, self.run_id, clip)
        self.counts["clips"] += 1
        self.counts["clip_bytes"] += clip.bytes
        lines.append((clip.stream_id, "alerts", clip_event(clip, ids)))

    def _stream(self, conn: Any, s: StreamRecord) -> None:
        conn.execute(
            "INSERT INTO streams (id, source, folder, first_run, last_run) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET source = excluded.source, folder = excluded.folder, "
            "last_run = excluded.last_run",
            (s.stream_id, s.source, str(s.folder), self.run_id, self.run_id))
        self._exports.add(s)


def upsert_track(conn: Any, run_id: int, t: TrackSeen) -> None:
    """The track's row: added when it first appears, brought up to date after."""
    conn.execute(
        "INSERT INTO tracks (run_id, stream_id, track_id, first_frame, first_s, "
        "first_seen_at, last_frame, last_s, last_seen_at, best_box, best_frame, ended) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (run_id, stream_id, track_id) DO UPDATE SET last_frame = "
        "excluded.last_frame, last_s = excluded.last_s, last_seen_at = excluded.last_seen_at, "
        "best_box = excluded.best_box, best_frame = excluded.best_frame, "
        "ended = excluded.ended",
        (run_id, t.stream_id, t.track_id, t.first_frame, t.first_s, t.first_seen_at,
         t.last_frame, t.last_s, t.last_seen_at, json.dumps(list(t.best_box)), t.best_frame,
         int(t.ended)))


def index_clip(conn: Any, run_id: int, c: Clip) -> list[int]:
    """Index the clip and point the alerts it shows at it; their ids (an alert whose record
    was dropped, the queue being full, has no row)."""
    conn.execute(
        "INSERT OR REPLACE INTO clips (path, run_id, stream_id, first_frame, last_frame, "
        "frames, started_s, ended_s, fps, wall_started, created_at, bytes, cut) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (c.path, run_id, c.stream_id, c.first_frame, c.last_frame, c.frames, c.started_s,
         c.ended_s, c.fps, c.wall_started, c.wall_ended, c.bytes, c.cut))
    ids = []
    for rule, track_id, frame in c.alerts:
        row = conn.execute("SELECT id FROM alerts WHERE run_id = ? AND stream_id = ? AND "
                           "rule = ? AND track_id = ? AND frame = ?",
                           (run_id, c.stream_id, rule, track_id, frame)).fetchone()
        if row is not None:
            conn.execute("UPDATE alerts SET clip = ? WHERE id = ?", (c.path, row[0]))
            ids.append(row[0])
    return ids


def clip_event(c: Clip, alert_ids: list[int]) -> dict[str, Any]:
    """The clip's line in the stream's alerts JSONL: the alerts' own lines, written when they
    were raised, lack it."""
    return {"event": "clip", "stream_id": c.stream_id, "clip": c.path, "alert_ids": alert_ids,
            "first_frame": c.first_frame, "last_frame": c.last_frame, "frames": c.frames,
            "started_s": round(c.started_s, 4), "ended_s": round(c.ended_s, 4),
            "bytes": c.bytes, "cut": c.cut}
