"""Retention while the streams run: video segments, snapshots, alert clips, feature shards and
rows older than ``retain.days`` are deleted, and the oldest files go first whenever together they
pass ``retain.max_gb``.

Retention is a query, not a directory walk: the store indexes every segment, snapshot, clip
and feature shard with its size and time. It runs on the writer thread between batches, every
``retain.check_s``, and each pass does a bounded amount of work (:data:`CHUNK` files or rows at
a time), so a backlog is worked off over several passes instead of holding up the commits.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any

from loguru import logger

from vidqa.config import RetainConfig

CHUNK = 200  # segments, snapshots or clips deleted per step
# Files indexed by their path relative to the store's folder, and the columns that name them:
# a deleted file's rows stay, the column set to NULL.
FILES = {"snapshots": (("answers", "snapshot"), ("alerts", "snapshot")),
         "clips": (("alerts", "clip"),),
         "features": ()}  # a crop whose shard is gone is asked from its snapshot
ROW_CHUNK = 5000  # old rows deleted per table and pass
DAY_S = 86400.0


class Retention:
    """Deletes what the store no longer keeps; see the module doc."""

    def __init__(self, cfg: RetainConfig, folder: Path) -> None:
        self.cfg = cfg
        self.folder = folder
        self.deleted: Counter[str] = Counter()
        self._due = 0.0  # monotonic time of the next pass: the first runs at once

    def maybe_run(self, conn: sqlite3.Connection | None, final: bool = False) -> None:
        """A pass when one is due, and a last one when the store closes (``final``)."""
        if conn is None or (time.monotonic() < self._due and not final):
            return
        self._due = time.monotonic() + self.cfg.check_s
        try:
            self.run(conn)
        except Exception as err:  # retention must never stop the store
            logger.opt(exception=True).error("retention failed: {}", err)

    def run(self, conn: sqlite3.Connection, now: float | None = None) -> None:
        """One pass: by age, then by size."""
        now = time.time() if now is None else now
        if self.cfg.days > 0:
            cut = now - self.cfg.days * DAY_S
            self._segments(conn, "wall_ended < ?", (cut,))
            for table in FILES:
                self._files(conn, table, "created_at < ?", (cut,))
            for table, column in (("answers", "answered_at"), ("alerts", "raised_at"),
                                  ("tracks", "last_seen_at")):
                self._rows(conn, table, column, cut)
        if self.cfg.max_gb > 0:
            self._cap(conn, int(self.cfg.max_gb * 1e9))

    def used_bytes(self, conn: sqlite3.Connection) -> int:
        """Bytes of every segment, snapshot, clip and feature shard the store indexes."""
        return int(sum(conn.execute(f"SELECT COALESCE(SUM(bytes), 0) FROM {table}").fetchone()[0]
                       for table in ("segments", *FILES)))

    def summary(self) -> dict[str, Any]:
        return {"retention_deleted": dict(self.deleted)}

    def _cap(self, conn: sqlite3.Connection, cap: int) -> None:
        over = self.used_bytes(conn) - cap
        for _ in range(20):  # bounded work per pass
            if over <= 0:
                return
            oldest = conn.execute(
                "SELECT kind FROM (SELECT 'segments' AS kind, MIN(wall_ended) AS at FROM segments "
                "UNION ALL SELECT 'snapshots', MIN(created_at) FROM snapshots "
                "UNION ALL SELECT 'clips', MIN(created_at) FROM clips "
                "UNION ALL SELECT 'features', MIN(created_at) FROM features) "
                "WHERE at IS NOT NULL ORDER BY at LIMIT 1").fetchone()
            if oldest is None:
                return
            if oldest[0] == "segments":
                over -= self._segments(conn, "1", (), limit=1)
            else:  # snapshots are small: a few at a time
                over -= self._files(conn, oldest[0], "1", (),
                                    limit=CHUNK // 4 if oldest[0] == "snapshots" else 1)

    def _segments(self, conn: sqlite3.Connection, where: str, args: tuple,
                  limit: int = CHUNK) -> int:
        rows = conn.execute(f"SELECT id, files, bytes FROM segments WHERE {where} "
                            f"ORDER BY wall_ended LIMIT ?", (*args, limit)).fetchall()
        for row in rows:
            for name in json.loads(row["files"]):
                Path(name).unlink(missing_ok=True)
        self._delete(conn, "segments", "id", [row["id"] for row in rows])
        self.deleted["segments"] += len(rows)
        return sum(row["bytes"] for row in rows)

    def _files(self, conn: sqlite3.Connection, table: str, where: str, args: tuple,
               limit: int = CHUNK) -> int:
        """Delete the oldest files of ``table`` (snapshots, clips, features) that match ``where``;
        the bytes freed."""
        rows = conn.execute(f"SELECT path, bytes FROM {table} WHERE {where} "
                            f"ORDER BY created_at LIMIT ?", (*args, limit)).fetchall()
        paths = [row["path"] for row in rows]
        for path in paths:
            (self.folder / path).unlink(missing_ok=True)
        conn.execute("BEGIN")
        for referrer, column in FILES[table]:
            conn.executemany(f"UPDATE {referrer} SET {column} = NULL WHERE {column} = ?",
                             [(p,) for p in paths])
        conn.executemany(f"DELETE FROM {table} WHERE path = ?", [(p,) for p in paths])
        conn.execute("COMMIT")
        self.deleted[table] += len(paths)
        return sum(row["bytes"] for row in rows)

    def _rows(self, conn: sqlite3.Connection, table: str, column: str, cut: float) -> None:
        cursor = conn.execute(f"DELETE FROM {table} WHERE id IN (SELECT id FROM {table} "
                              f"WHERE {column} < ? LIMIT ?)", (cut, ROW_CHUNK))
        self.deleted[table] += cursor.rowcount

    @staticmethod
    def _delete(conn: sqlite3.Connection, table: str, key: str, ids: list) -> None:
        if ids:
            conn.executemany(f"DELETE FROM {table} WHERE {key} = ?", [(i,) for i in ids])
