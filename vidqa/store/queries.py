"""Reading the store: what the web view and scripts ask of it, each on its own read-only
connection (the writer is never held up)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from vidqa.store.schema import connect

MAX_ROWS = 1000  # the most rows one question returns


def runs(path: Path) -> list[dict[str, Any]]:
    """Every run of the store, newest first, with its answer and alert counts."""
    with contextlib.closing(connect(path, readonly=True)) as conn:
        rows = conn.execute(
            "SELECT r.id, r.started_at, r.ended_at, r.end_reason, r.run_dir, "
            "(SELECT COUNT(*) FROM answers a WHERE a.run_id = r.id) AS answers, "
            "(SELECT COUNT(*) FROM alerts a WHERE a.run_id = r.id) AS alerts, "
            "(SELECT COUNT(*) FROM tracks t WHERE t.run_id = r.id) AS tracks "
            "FROM runs r ORDER BY r.id DESC").fetchall()
    return [dict(row) for row in rows]


def answers(path: Path, run: int | None = None, stream: str | None = None,
            question: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """The newest answers, optionally of one run, stream or question."""
    where, args = [], []
    for column, value in (("run_id", run), ("stream_id", stream), ("question", question)):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    sql = ("SELECT id, run_id, stream_id, track_id, question, answer, p_yes, compressed, frame, "
           "time_s, answered_at, latency_ms, bbox, snapshot FROM answers"
           + (" WHERE " + " AND ".join(where) if where else "")
           + " ORDER BY id DESC LIMIT ?")
    with contextlib.closing(connect(path, readonly=True)) as conn:
        rows = conn.execute(sql, (*args, max(1, min(limit, MAX_ROWS)))).fetchall()
    return [{**dict(row), "bbox": json.loads(row["bbox"])} for row in rows]
