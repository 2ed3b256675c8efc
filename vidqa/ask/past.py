"""Ask the past: a new yes/no question answered about every stored track, without the video.

The store keeps each answered crop (its JPEG snapshot) and, with ``store.features: true``, its
full model's vision features (:mod:`vidqa.vlm.features`). ``vidqa ask STORE "question"`` picks
each matching track's newest crop answered live, and asks the question through the same batched
VLM service a run uses: from the stored features when they are there and from this model (only
the text model runs), else from the JPEG (vision too). The answers go into the store as answers
of the track, marked with the ask that gave them (``answers.ask_id``) and where they came from
(``answers.source``: features or crop), so the history page and ``vidqa events`` show them.

Answers are committed every :data:`COMMIT_S` seconds on the ask's own connection (a live run
writing the same store is not held up: WAL, short transactions). A Ctrl-C keeps what was
answered; asking the same question again skips the tracks an ask answered before (it resumes).

For a rule (:mod:`vidqa.ask.rules`), the rule's question is answered only where a track has
no answer to it yet, live or asked.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from loguru import logger

from vidqa import assets
from vidqa.config import RENAMED_KEYS, PipelineConfig, QuestionConfig, RuleConfig, load_config
from vidqa.config_schema import apply_override, from_dict
from vidqa.errors import ConfigError
from vidqa.messages import Answer, Crop
from vidqa.serving.base import Abandoned
from vidqa.store import queries
from vidqa.store.schema import connect
from vidqa.vlm.features import FeatureIndex, feature_key, model_of

LOAD_BATCH = 256  # tracks whose features are read (or JPEGs decoded) and submitted at a time
COMMIT_S = 0.5  # answers are committed at least this often


@dataclass
class AskResult:
    """What an ask did, for the summary line, ``--json`` and the web page."""

    ask_id: int | None
    question: str
    model: str
    tracks: int = 0  # matching tracks with a crop answered live
    answered_before: int = 0  # left out: an earlier ask answered them
    answered: int = 0
    from_features: int = 0
    from_crops: int = 0
    missing: int = 0  # neither features nor a snapshot left (retention deleted them)
    failed: int = 0
    seconds: float = 0.0  # the whole ask, model load included
    answering_s: float = 0.0  # from the first crop handed to the model to the last commit
    end_reason: str = "done"
    answers: Counter[str] = field(default_factory=Counter)
    per_stream: dict[str, Counter[str]] = field(default_factory=dict)
    rule: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k not in ("answers", "per_stream")}
        out["answers"] = dict(self.answers)
        out["per_stream"] = {s: dict(c) for s, c in sorted(self.per_stream.items())}
        out["answers_per_s"] = round(self.answered / self.seconds, 2) if self.seconds else None
        return out


def store_config(store: Path, path: str | Path | None = None, overrides: Sequence[str] = ()
                 ) -> PipelineConfig:
    """The config an ask uses (its model, zones, rules): the YAML at ``path``, else the store's
    newest run's, with ``overrides`` (``section.key=value``) applied."""
    if path is not None:
        return load_config(path, overrides)
    conn = connect(store, readonly=True)
    try:
        newest = conn.execute("SELECT config FROM runs ORDER BY id DESC LIMIT 1").fetchone()
    finally:
        conn.close()
    if newest is None:
        raise ConfigError(f"the store {store} has no run: nothing has been seen to ask about")
    data = json.loads(newest[0])
    for item in overrides:
        apply_override(data, item)
    return from_dict(PipelineConfig, data, "", RENAMED_KEYS)


def ask(store: Path, question: str, filters: queries.Filters, cfg: PipelineConfig,
        tag: str | None = None, rule: RuleConfig | None = None, progress: bool = True,
        features: bool = True, again: bool = False) -> AskResult:
    """Ask ``question`` about every stored track ``filters`` match; see the module doc
    (``features=False``: every crop from its JPEG, as if the store kept no features;
    ``again``: the tracks an earlier ask answered too)."""
    started = time.perf_counter()
    targets, before = queries.ask_targets(store, filters, question, live_too=rule is not None,
                                          again=again)
    vlm_cfg = replace(cfg.vlm, questions=(QuestionConfig(question=question),), worker="thread",
                      adaptive=replace(cfg.vlm.adaptive, enabled=False))
    info = assets.resolve_vlm(vlm_cfg.model, vlm_cfg.revision)
    model, revision = model_of(info)
    result = AskResult(None, question, info.name, tracks=len(targets) + before,
                       answered_before=before)
    conn = connect(store)
    try:
        result.ask_id = _open_ask(conn, result, revision, filters, tag, rule)
        if not targets:
            logger.info("ask: {}", "every matching track has an answer already"
                        if before else f"no stored track matches "
                        f"{filters.to_dict() or 'the store'}: nothing to ask")
        else:
            index = _features(conn, store, targets, model, revision) if features else \
                FeatureIndex(conn, store.parent, (), model, revision)
            _answer_all(store, conn, targets, index, vlm_cfg, result, progress)
    except KeyboardInterrupt:
        result.end_reason = "interrupted"
    except BaseException:
        result.end_reason = "failed"
        raise
    finally:
        result.seconds = round(time.perf_counter() - started, 3)
        if result.ask_id is not None:
            _close_ask(conn, result)
        conn.close()
    return result


def _features(conn: Any, store: Path, targets: list[dict[str, Any]], model: str,
              revision: str) -> FeatureIndex:
    """The stored features usable for ``targets``, and a line saying what is not."""
    index = FeatureIndex(conn, store.parent, {t["run_id"] for t in targets}, model, revision)
    usable = sum(index.has(_key(t)) for t in targets)
    for other, crops in index.other_models.items():
        logger.warning("ask: {} crops keep features of another model ({}); this ask runs {}"
                       "@{}: those are asked from their snapshots", crops, other, model, revision)
    if not len(index) and not index.other_models:
        logger.info("ask: the store keeps no vision features for these runs (store.features "
                    "was off): every track is asked from its snapshot, vision included")
    logger.info("ask: {} tracks, {} from stored features, {} from their snapshots",
                len(targets), usable, len(targets) - usable)
    return index


def _answer_all(store: Path, conn: Any, targets: list[dict[str, Any]], index: FeatureIndex,
                vlm_cfg: Any, result: AskResult, progress: bool) -> None:
    from tqdm import tqdm

    from vidqa.engines.local import start_service

    _, service, _ = start_service(vlm_cfg, store.parent / "ask.log")
    bar = tqdm(total=len(targets), unit="track", disable=not progress, desc="ask")
    started = time.perf_counter()
    pending: list[tuple[dict[str, Any], str, Future[list[Answer]]]] = []
    done: list[tuple[dict[str, Any], str, Answer]] = []
    last_commit = time.monotonic()
    try:
        for chunk in _chunks(targets, LOAD_BATCH):
            for target, source, crop in _crops(store, chunk, index, result):
                pending.append((target, source, service.submit(crop, [result.question])))
            pending = _collect(pending, done, result, bar, wait=False)
            if time.monotonic() - last_commit >= COMMIT_S:
                _commit(conn, done, result)
                last_commit = time.monotonic()
        while pending:
            pending = _collect(pending, done, result, bar, wait=True)
            if time.monotonic() - last_commit >= COMMIT_S or not pending:
                _commit(conn, done, result)
                last_commit = time.monotonic()
        service.close()
    except BaseException:
        service.close(abandon=True)
        _collect(pending, done, result, bar, wait=False)
        _commit(conn, done, result)
        raise
    finally:
        bar.close()
        result.answering_s = round(time.perf_counter() - started, 3)


def _crops(store: Path, chunk: list[dict[str, Any]], index: FeatureIndex, result: AskResult
           ) -> Iterator[tuple[dict[str, Any], str, Crop]]:
    """Each target as a crop: with its stored features, else its JPEG decoded."""
    features = index.load([_key(t) for t in chunk])
    for target in chunk:
        bbox = tuple(json.loads(target["bbox"]))
        kept = features.get(_key(target))
        if kept is not None:
            yield target, "features", _crop(target, bbox, np.zeros((1, 1, 3), np.uint8), kept)
            continue
        image = _jpeg(store.parent, target["snapshot"])
        if image is None:
            result.missing += 1
            continue
        yield target, "crop", _crop(target, bbox, image, None)


def _crop(target: dict[str, Any], bbox: tuple, image: np.ndarray, features: Any) -> Crop:
    return Crop(track_id=target["track_id"], frame_index=target["frame"],
                time_s=target["time_s"], bbox=bbox, crop_box=bbox, image=image, reason="asked",
                stream_id=target["stream_id"], features=features)


def _jpeg(folder: Path, snapshot: str | None) -> np.ndarray | None:
    if not snapshot:
        return None
    return cv2.imread(str(folder / snapshot), cv2.IMREAD_COLOR)


def _collect(pending: list, done: list, result: AskResult, bar: Any, wait: bool) -> list:
    """Move the answered crops of ``pending`` to ``done`` (the first one waited for with
    ``wait``); the rest stay pending."""
    still = []
    for position, (target, source, future) in enumerate(pending):
        if not future.done() and not (wait and position == 0):
            still.append((target, source, future))
            continue
        try:
            done.append((target, source, future.result()[0]))
        except Abandoned:  # interrupted: asked again by the next ask
            continue
        except Exception as err:
            result.failed += 1
            logger.warning("ask: track {} of stream {} failed: {}", target["track_id"],
                           target["stream_id"], err)
        bar.update(1)
    return still


def _commit(conn: Any, done: list, result: AskResult) -> None:
    """Write the answers gathered, in one short transaction."""
    if not done:
        return
    now = time.time()
    rows = []
    for target, source, a in done:
        rows.append((target["run_id"], a.stream_id, a.track_id, a.question, a.answer, a.p_yes,
                     a.margin, a.model, a.frame_index, a.time_s, target["answered_at"],
                     a.vlm_ms, target["bbox"], target["snapshot"],
                     json.dumps({"asked_at": now}), result.ask_id, source))
        result.answered += 1
        result.from_features += source == "features"
        result.from_crops += source == "crop"
        result.answers[a.answer] += 1
        result.per_stream.setdefault(a.stream_id, Counter())[a.answer] += 1
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(
        "INSERT INTO answers (run_id, stream_id, track_id, question, answer, p_yes, margin, "
        "compressed, model, frame, time_s, answered_at, vlm_ms, bbox, snapshot, extra, ask_id, "
        "source) VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    conn.execute("UPDATE asks SET answered = ?, from_features = ?, from_crops = ?, failed = ? "
                 "WHERE id = ?", (result.answered, result.from_features, result.from_crops,
                                  result.failed, result.ask_id))
    conn.execute("COMMIT")
    done.clear()


def _open_ask(conn: Any, result: AskResult, revision: str, filters: queries.Filters,
              tag: str | None, rule: RuleConfig | None) -> int:
    cursor = conn.execute(
        "INSERT INTO asks (tag, question, model, revision, filters, rule, started_at, tracks) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (tag, result.question, result.model, revision, json.dumps(filters.to_dict()),
         rule.name if rule else None, time.time(), result.tracks))
    return cursor.lastrowid


def _close_ask(conn: Any, result: AskResult) -> None:
    conn.execute("UPDATE asks SET ended_at = ?, end_reason = ?, answered = ?, from_features = ?, "
                 "from_crops = ?, failed = ? WHERE id = ?",
                 (time.time(), result.end_reason, result.answered, result.from_features,
                  result.from_crops, result.failed, result.ask_id))


def _key(target: dict[str, Any]) -> str:
    return feature_key(target["stream_id"], target["track_id"], target["frame"])


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def agreement(store: Path, ask_id: int) -> dict[str, Any]:
    """How an ask's answers compare with the live answers of the full model (not those of a
    compressed plan) to the same question about the same crops: the share that agree, the
    largest |Δ p_yes| and |Δ margin|."""
    conn = connect(store, readonly=True)
    try:
        pairs = conn.execute(
            "SELECT a.answer, l.answer, a.p_yes, l.p_yes, a.margin, l.margin FROM answers a "
            "JOIN answers l ON l.run_id = a.run_id AND l.stream_id = a.stream_id AND "
            "l.track_id = a.track_id AND l.frame = a.frame AND l.question = a.question AND "
            "l.ask_id IS NULL AND l.compressed = 0 WHERE a.ask_id = ?", (ask_id,)).fetchall()
    finally:
        conn.close()
    if not pairs:
        return {"crops": 0, "agree": None, "max_dp_yes": None, "max_dmargin": None}
    return {"crops": len(pairs), "agree": sum(p[0] == p[1] for p in pairs) / len(pairs),
            "max_dp_yes": max(abs(p[2] - p[3]) for p in pairs),
            "max_dmargin": max(abs(p[4] - p[5]) for p in pairs)}
