"""Reading the store: the history the web page, its JSON API and ``vidqa events`` show, each
question on its own read-only connection (the writer is never held up).

One :class:`Filters` serves every kind of row. Pages are keyset pages, newest first: a page
ends with ``next``, the id to pass as ``before`` for the following one, so paging through a
store of millions of rows costs the same on the last page as on the first.

A zone filter on answers and tracks places the box's foot point in the zone's polygon as the
run that wrote the row had it configured (``runs.config``), exactly as the run's rules did.
"""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from vidqa.config import ZoneConfig
from vidqa.errors import ConfigError
from vidqa.store.schema import DB_NAME, SCHEMA_VERSION, STORE_FOLDER, connect
from vidqa.zones import ZoneMap

MAX_ROWS = 1000  # the most rows one page holds
KINDS = ("answers", "alerts", "tracks")
_AGO = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class Filters:
    """Which rows: every field left None matches everything."""

    run: int | None = None
    stream: str | None = None
    track: int | None = None
    question: str | None = None
    answer: str | None = None
    zone: str | None = None  # answers/tracks: the box stands in it; alerts: raised in it
    rule: str | None = None  # answers/tracks: of tracks that raised it
    since: float | None = None  # epoch seconds
    until: float | None = None
    ask: int | None = None  # answers: those a `vidqa ask` gave

    @classmethod
    def parse(cls, given: dict[str, str | None]) -> Filters:
        """From text (query parameters, command-line options): ints and times are parsed,
        empty values ignored; a bad value raises :class:`ConfigError` naming it."""
        values: dict[str, Any] = {}
        for field in fields(cls):
            text = given.get(field.name)
            if text is None or str(text).strip() == "":
                continue
            text = str(text).strip()
            if field.name in ("run", "track", "ask"):
                try:
                    values[field.name] = int(text)
                except ValueError:
                    raise ConfigError(f"{field.name} must be an integer, got {text!r}") from None
            elif field.name in ("since", "until"):
                values[field.name] = parse_time(text, field.name)
            else:
                values[field.name] = text
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)
                if getattr(self, f.name) is not None}


def parse_time(text: str, name: str = "time") -> float:
    """Epoch seconds from ``1733300000``, ``2h`` / ``30m`` / ``1d`` (ago) or an ISO 8601 time
    (local time unless it names its zone)."""
    text = text.strip()
    with contextlib.suppress(ValueError):
        return float(text)
    ago = _AGO.match(text)
    if ago:
        return time.time() - float(ago.group(1)) * _SECONDS[ago.group(2)]
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise ConfigError(f"{name} = {text!r}: expected epoch seconds, a time ago such as 2h, "
                          f"30m or 1d, or an ISO time such as 2026-12-04T09:30") from None


@dataclass(frozen=True)
class Page:
    rows: list[dict[str, Any]]
    next: int | None  # ``before`` for the next page; None on the last

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "next": self.next}


def find_store(given: str | Path) -> Path:
    """The store file ``given`` names: a ``vidqa.db``, a store folder, or a run folder."""
    path = Path(given)
    for candidate in (path, path / DB_NAME, path / STORE_FOLDER / DB_NAME):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"no event store at {path}: give a store file (vidqa.db), its folder, or "
                      f"a run folder that has store/vidqa.db")


def runs(path: Path) -> list[dict[str, Any]]:
    """Every run of the store, newest first, with its answer and alert counts."""
    with _reading(path) as conn:
        rows = conn.execute(
            "SELECT r.id, r.started_at, r.ended_at, r.end_reason, r.run_dir, "
            "(SELECT COUNT(*) FROM answers a WHERE a.run_id = r.id) AS answers, "
            "(SELECT COUNT(*) FROM alerts a WHERE a.run_id = r.id) AS alerts, "
            "(SELECT COUNT(*) FROM tracks t WHERE t.run_id = r.id) AS tracks "
            "FROM runs r ORDER BY r.id DESC").fetchall()
    return [dict(row) for row in rows]


def history(path: Path, kind: str, filters: Filters = Filters(), limit: int = 100,
            before: int | None = None) -> Page:
    """One page of ``kind`` rows (answers, alerts or tracks), newest first."""
    if kind not in KINDS:
        raise ConfigError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    limit = max(1, min(int(limit), MAX_ROWS))
    select, where, args = _QUERIES[kind](filters)
    if before is not None:
        where.append(f"{_ALIAS[kind]}.id < ?")
        args.append(before)
    sql = (select + (" WHERE " + " AND ".join(where) if where else "")
           + f" ORDER BY {_ALIAS[kind]}.id DESC LIMIT ?")
    with _reading(path) as conn:
        rows = [_row(kind, row) for row in conn.execute(sql, (*args, limit + 1)).fetchall()]
        if kind == "tracks":
            _add_answers(conn, rows[:limit])
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(rows, rows[-1]["id"] if more else None)


def every(path: Path, kind: str, filters: Filters = Filters(), limit: int = 0
          ) -> Iterator[dict[str, Any]]:
    """Every matching row, page by page (at most ``limit``, 0: all)."""
    before, given = None, 0
    while True:
        page = history(path, kind, filters, MAX_ROWS if not limit else
                       min(MAX_ROWS, limit - given), before)
        for row in page.rows:
            yield row
        given += len(page.rows)
        if page.next is None or (limit and given >= limit):
            return
        before = page.next


def facets(path: Path) -> dict[str, Any]:
    """What the filters can take: streams, questions with their answers, zones, rules (from the
    rows and the runs' configs), and the time span of the answers and alerts."""
    with _reading(path) as conn:
        streams = [r[0] for r in conn.execute(
            "SELECT id FROM streams UNION SELECT DISTINCT stream_id FROM answers ORDER BY 1")]
        answers: dict[str, list[str]] = {}
        for question, answer in conn.execute(
                "SELECT DISTINCT question, answer FROM answers ORDER BY question, answer"):
            answers.setdefault(question, []).append(answer)
        zones, rules = set(), set()
        for zone, rule in conn.execute("SELECT DISTINCT zone, rule FROM alerts"):
            zones.add(zone)
            rules.add(rule)
        for (config,) in conn.execute("SELECT config FROM runs"):
            configured = json.loads(config)
            zones.update(z["name"] for z in configured.get("zones") or ())
            rules.update(r["name"] for r in configured.get("rules") or ())
        first, last = conn.execute(
            "SELECT MIN(t), MAX(t) FROM (SELECT answered_at AS t FROM answers UNION ALL "
            "SELECT raised_at FROM alerts)").fetchone()
    return {"streams": streams, "questions": answers, "zones": sorted(zones),
            "rules": sorted(rules), "first_at": first, "last_at": last,
            "runs": [r["id"] for r in runs(path)]}


def ask_targets(path: Path, filters: Filters, question: str, live_too: bool = False,
                again: bool = False) -> tuple[list[dict[str, Any]], int]:
    """The tracks a new ``question`` is asked about: each matching track's newest crop that
    was answered live (its frame, box and snapshot), oldest track first; and how many of them
    a `vidqa ask` answered before (they are left out: asking again resumes, unless
    ``again``). ``live_too``: tracks answered live are left out too."""
    select, where, args = _tracks(replace(filters, question=None, answer=None))
    asked = ("EXISTS (SELECT 1 FROM answers d WHERE d.run_id = t.run_id AND d.stream_id = "
             "t.stream_id AND d.track_id = t.track_id AND d.question = ?"
             + ("" if live_too else " AND d.ask_id IS NOT NULL") + ")")
    sql = ("SELECT t.run_id, t.stream_id, t.track_id, a.frame, a.time_s, a.bbox, a.snapshot, "
           f"a.answered_at, {asked} AS asked FROM tracks t JOIN answers a ON a.id = "
           "(SELECT MAX(b.id) FROM answers b WHERE b.run_id = t.run_id AND b.stream_id = "
           "t.stream_id AND b.track_id = t.track_id AND b.ask_id IS NULL)"
           + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY t.id")
    with _reading(path) as conn:
        rows = [dict(row) for row in conn.execute(sql, (question, *args)).fetchall()]
    todo = [row for row in rows if not row.pop("asked") or again]
    return todo, len(rows) - len(todo)


def asks(path: Path, tag: str | None = None) -> list[dict[str, Any]]:
    """The questions asked later (newest first), or the one the web page started as ``tag``."""
    with _reading(path) as conn:
        if not _has_table(conn, "asks"):
            return []
        rows = conn.execute("SELECT * FROM asks" + (" WHERE tag = ?" if tag else "")
                            + " ORDER BY id DESC LIMIT 100", (tag,) if tag else ()).fetchall()
    return [{**dict(row), "filters": json.loads(row["filters"])} for row in rows]


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                        (name,)).fetchone() is not None


# ------------------------------------------------------------------------------ the queries

_ALIAS = {"answers": "a", "alerts": "l", "tracks": "t"}


def _answers(f: Filters) -> tuple[str, list[str], list[Any]]:
    where, args = _common("a", f, "answered_at")
    _equal(where, args, (("a.question", f.question), ("a.answer", f.answer),
                         ("a.ask_id", f.ask)))
    if f.zone is not None:
        where.append("in_zone(a.run_id, a.bbox, ?)")
        args.append(f.zone)
    if f.rule is not None:
        where.append("EXISTS (SELECT 1 FROM alerts l WHERE l.run_id = a.run_id AND "
                     "l.stream_id = a.stream_id AND l.track_id = a.track_id AND l.rule = ?)")
        args.append(f.rule)
    return ("SELECT a.id, a.run_id, a.stream_id, a.track_id, a.question, a.answer, a.p_yes, "
            "a.compressed, a.model, a.frame, a.time_s, a.answered_at, a.latency_ms, a.bbox, "
            "a.snapshot, a.ask_id, a.source FROM answers a"), where, args


def _alerts(f: Filters) -> tuple[str, list[str], list[Any]]:
    where, args = _common("l", f, "raised_at")
    _equal(where, args, (("l.question", f.question), ("l.answer", f.answer),
                         ("l.zone", f.zone), ("l.rule", f.rule)))
    return ("SELECT l.id, l.run_id, l.stream_id, l.track_id, l.rule, l.zone, l.question, "
            "l.answer, l.frame, l.time_s, l.dwell_s, l.raised_at, l.bbox, l.snapshot, l.clip "
            "FROM alerts l"), where, args


def _tracks(f: Filters) -> tuple[str, list[str], list[Any]]:
    where, args = [], []
    _equal(where, args, (("t.run_id", f.run), ("t.stream_id", f.stream),
                         ("t.track_id", f.track)))
    if f.since is not None:  # seen at some time in the range
        where.append("t.last_seen_at >= ?")
        args.append(f.since)
    if f.until is not None:
        where.append("t.first_seen_at <= ?")
        args.append(f.until)
    asked = [("question", f.question), ("answer", f.answer)]
    if any(value is not None for _, value in asked):
        conditions = [f"a.{column} = ?" for column, value in asked if value is not None]
        where.append("EXISTS (SELECT 1 FROM answers a WHERE a.run_id = t.run_id AND "
                     "a.stream_id = t.stream_id AND a.track_id = t.track_id AND "
                     + " AND ".join(conditions) + ")")
        args += [value for _, value in asked if value is not None]
    if f.zone is not None:
        where.append("in_zone(t.run_id, t.best_box, ?)")
        args.append(f.zone)
    if f.rule is not None:
        where.append("EXISTS (SELECT 1 FROM alerts l WHERE l.run_id = t.run_id AND "
                     "l.stream_id = t.stream_id AND l.track_id = t.track_id AND l.rule = ?)")
        args.append(f.rule)
    return ("SELECT t.id, t.run_id, t.stream_id, t.track_id, t.first_frame, t.first_s, "
            "t.first_seen_at, t.last_frame, t.last_s, t.last_seen_at, t.best_box AS bbox, "
            "t.ended FROM tracks t"), where, args


_QUERIES = {"answers": _answers, "alerts": _alerts, "tracks": _tracks}


def _common(alias: str, f: Filters, at: str) -> tuple[list[str], list[Any]]:
    where: list[str] = []
    args: list[Any] = []
    _equal(where, args, ((f"{alias}.run_id", f.run), (f"{alias}.stream_id", f.stream),
                         (f"{alias}.track_id", f.track)))
    if f.since is not None:
        where.append(f"{alias}.{at} >= ?")
        args.append(f.since)
    if f.until is not None:
        where.append(f"{alias}.{at} <= ?")
        args.append(f.until)
    return where, args


def _equal(where: list[str], args: list[Any], pairs: tuple[tuple[str, Any], ...]) -> None:
    for column, value in pairs:
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)


def _row(kind: str, row: sqlite3.Row) -> dict[str, Any]:
    out = dict(row)
    out["bbox"] = json.loads(out["bbox"])
    if kind == "tracks":
        out["ended"] = bool(out["ended"])
    return out


def _add_answers(conn: sqlite3.Connection, tracks: list[dict[str, Any]]) -> None:
    """Each track's newest answer per question, and the snapshot of its newest crop."""
    for track in tracks:
        rows = conn.execute(
            "SELECT question, answer, p_yes, snapshot, answered_at FROM answers WHERE "
            "run_id = ? AND stream_id = ? AND track_id = ? ORDER BY id DESC",
            (track["run_id"], track["stream_id"], track["track_id"])).fetchall()
        newest: dict[str, dict[str, Any]] = {}
        for row in rows:
            newest.setdefault(row["question"], {"answer": row["answer"], "p_yes": row["p_yes"]})
        track["answers"] = newest
        track["snapshot"] = next((row["snapshot"] for row in rows if row["snapshot"]), None)


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection with ``in_zone(run_id, bbox_json, zone)``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no event store at {path}: give the store's vidqa.db (a run's "
                          f"<run folder>/store/vidqa.db, or its store.path)")
    with contextlib.closing(connect(path, readonly=True)) as conn:
        if conn.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
            connect(path).close()  # a store of an older vidqa: brought up to date once
        polygons = _Polygons(conn)
        conn.create_function("in_zone", 3, polygons.contains, deterministic=True)
        yield conn


class _Polygons:
    """Each run's zones, read from its config once per connection."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._runs: dict[int, ZoneMap] = {}

    def contains(self, run_id: int, bbox: str, zone: str) -> bool:
        zones = self._runs.get(run_id)
        if zones is None:
            row = self._conn.execute("SELECT config FROM runs WHERE id = ?", (run_id,)).fetchone()
            configured = (json.loads(row[0]).get("zones") or ()) if row else ()
            zones = self._runs[run_id] = ZoneMap([
                ZoneConfig(z["name"], tuple(tuple(p) for p in z["polygon"]))
                for z in configured])
        return zone in zones.zones_of(tuple(json.loads(bbox)))
