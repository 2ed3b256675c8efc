"""Each answered crop's vision features, kept beside the store so a question asked later runs
only the text model (``vidqa ask``; ``store.features: true``).

What is kept is what Idefics3's text model reads in place of the image: the vision encoder and
connector's output for the crop's whole tile, (image tokens, hidden), from the full model (never
a compressed plan's). The model's process writes them (the batching thread, or the VLM worker
process): :class:`FeatureShelf` gathers a batch's rows into a shard and writes the shard as one
safetensors file, atomically (a temporary name, then a rename), when it holds
:data:`SHARD_CROPS` crops, when :data:`FLUSH_S` seconds have passed since its first crop, and at
close — so a crash loses at most the last few seconds' features (those crops are asked from their
JPEG instead). Each shard gets one row in the store's ``features`` table (its schema is the
store's, :mod:`vidqa.store.schema`), written on the shelf's own connection in one short
transaction: retention deletes shards by age and size like the other files, and a reader finds
the shards of a run without walking folders. The run has created and migrated the file before
the model starts: this module only inserts and reads rows.

Tensors are named ``<stream>/<track>/<frame>``; the shard's metadata and its row name the model
and revision. Features from another model (or revision) are never used: the reader says so, and
the crops are asked from their snapshots.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from loguru import logger
from safetensors import safe_open
from safetensors.torch import save_file

from vidqa.assets.types import ModelInfo
from vidqa.messages import Crop

FOLDER = "features"  # under the store's folder
BUSY_TIMEOUT_S = 10.0  # the run's writer holds the file for one short transaction at a time
SHARD_CROPS = 256  # crops per shard file
FLUSH_S = 10.0  # a shard is written at most this long after its first crop
STORED_DTYPE = {torch.float32: torch.float16}  # fp32 features are kept as fp16 (half the disk)


def feature_key(stream_id: str, track_id: int, frame: int) -> str:
    """The name of a crop's tensor in its shard: one crop of one track of one stream."""
    return f"{stream_id}/{track_id}/{frame}"


@dataclass(frozen=True)
class FeatureTarget:
    """Where a run keeps its features: picklable, it crosses to the VLM worker process."""

    db: str  # the store's SQLite file; shards go in its folder's features/
    run_id: int


def feature_target(cfg: Any, store: Any) -> FeatureTarget | None:
    """Where the run's model keeps features: with ``store.features`` on and the store open
    in this process (``cfg``: the run's config, ``store``: its EventStore or None)."""
    if store is None or not cfg.store.features:
        return None
    return FeatureTarget(str(store.path), store.run_id)


def model_of(info: ModelInfo) -> tuple[str, str]:
    """What features are keyed by: the model's id (or folder) and revision."""
    return info.resolved, info.revision or "main"


class FeatureShelf:
    """The writer side, in the model's process: see the module doc."""

    def __init__(self, target: FeatureTarget, info: ModelInfo) -> None:
        self.target = target
        self.model, self.revision = model_of(info)
        self.folder = Path(target.db).parent / FOLDER / f"run-{target.run_id}"
        self._rows: dict[str, torch.Tensor] = {}
        self._first: float | None = None
        self._conn: sqlite3.Connection | None = None
        self.crops = self.shards = self.bytes = self.failed = 0

    def put(self, crops: Sequence[Crop], features: torch.Tensor) -> None:
        """Keep one batch's features: ``features`` holds the crops' image tokens in order,
        (crops × tokens, C) or (crops, tokens, C)."""
        if not crops:
            return
        rows = features.reshape(len(crops), -1, features.shape[-1]).detach()
        rows = rows.to("cpu", STORED_DTYPE.get(rows.dtype, rows.dtype))
        for crop, row in zip(crops, rows, strict=True):
            self._rows[feature_key(crop.stream_id, crop.track_id, crop.frame_index)] = \
                row.clone()
        self._first = self._first if self._first is not None else time.monotonic()
        if len(self._rows) >= SHARD_CROPS or time.monotonic() - self._first >= FLUSH_S:
            self.flush()

    def flush(self) -> None:
        """Write the crops gathered so far as one shard (a failure costs those features, and
        is counted: the crops stay answerable from their JPEG)."""
        rows, self._rows, self._first = self._rows, {}, None
        if not rows:
            return
        try:
            self._write(rows)
        except Exception as err:
            self.failed += len(rows)
            logger.error("could not keep the vision features of {} crops ({}): a later ask "
                         "answers them from their snapshots", len(rows), err)

    def close(self) -> None:
        self.flush()
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def summary(self) -> dict[str, Any]:
        return {"crops": self.crops, "shards": self.shards, "bytes": self.bytes,
                "failed_crops": self.failed}

    def _write(self, rows: dict[str, torch.Tensor]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        first = next(iter(rows.values()))
        name = f"{time.time_ns()}-{os.getpid()}.safetensors"
        path, partial = self.folder / name, self.folder / f".{name}.partial"
        save_file(rows, str(partial), metadata={
            "model": self.model, "revision": self.revision,
            "dtype": str(first.dtype).replace("torch.", ""), "tokens": str(first.shape[0])})
        os.replace(partial, path)
        size = path.stat().st_size
        if self._conn is None:
            self._conn = sqlite3.connect(self.target.db, timeout=BUSY_TIMEOUT_S,
                                         isolation_level=None, check_same_thread=False)
        relative = path.relative_to(Path(self.target.db).parent).as_posix()
        self._conn.execute(
            "INSERT OR REPLACE INTO features (path, run_id, model, revision, dtype, tokens, "
            "crops, created_at, bytes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (relative, self.target.run_id, self.model, self.revision,
             str(first.dtype).replace("torch.", ""), int(first.shape[0]), len(rows),
             time.time(), size))
        self.crops += len(rows)
        self.shards += 1
        self.bytes += size


class FeatureIndex:
    """The reader side: which stored crops have usable features, and loading them."""

    def __init__(self, conn: sqlite3.Connection, folder: Path, runs: Iterable[int],
                 model: str, revision: str) -> None:
        self.folder = folder
        self._where: dict[str, str] = {}  # crop key -> its shard's path
        self.other_models: dict[str, int] = {}  # "model@revision" -> crops kept for it
        marks = ",".join("?" * len(list(runs := list(runs))))
        for row in conn.execute(f"SELECT path, run_id, model, revision, crops FROM features "
                                f"WHERE run_id IN ({marks})", runs):
            if (row["model"], row["revision"]) != (model, revision):
                name = f"{row['model']}@{row['revision']}"
                self.other_models[name] = self.other_models.get(name, 0) + row["crops"]
                continue
            shard = folder / row["path"]
            if not shard.is_file():  # deleted by retention since: its crops use JPEG
                continue
            with safe_open(str(shard), framework="pt") as opened:
                for key in opened.keys():
                    self._where[key] = row["path"]

    def __len__(self) -> int:
        return len(self._where)

    def has(self, key: str) -> bool:
        return key in self._where

    def load(self, keys: Sequence[str]) -> dict[str, torch.Tensor]:
        """The features of ``keys`` (those still on disk), each (tokens, C)."""
        by_shard: dict[str, list[str]] = {}
        for key in keys:
            if key in self._where:
                by_shard.setdefault(self._where[key], []).append(key)
        out: dict[str, torch.Tensor] = {}
        for path, wanted in by_shard.items():
            try:
                with safe_open(str(self.folder / path), framework="pt") as opened:
                    for key in wanted:
                        out[key] = opened.get_tensor(key)
            except (OSError, RuntimeError) as err:  # gone or cut short: asked from JPEG
                logger.warning("features shard {} unreadable ({}): its crops are asked from "
                               "their snapshots", path, err)
        return out
