"""A disk cache of plans (and the profiles behind them), so a restarted stream skips profiling.

One JSON file per key. The key is a hash of everything that decides the plan: the model (hub id
and revision, or a local directory plus the size and mtime of its weight files, so a rebuilt
stand-in is not mistaken for the old one), device type and dtype, the question and its answer
kind, and the adaptive settings. The file stores the key's fields in clear, for humans.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from loguru import logger

from vidqa.assets.fetch import cache_dir
from vidqa.storage import write_json

CACHE_VERSION = 2  # bump when the stored format or the planning recipe changes


def default_cache_dir() -> Path:
    return cache_dir() / "plans"


def model_fingerprint(resolved: str, revision: str | None) -> dict[str, Any]:
    """What identifies the weights: hub id + revision, or a directory's weight files."""
    path = Path(resolved)
    if not path.is_dir():
        return {"model": resolved, "revision": revision}
    files = sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin"))
    return {"model": str(path.resolve()), "revision": None,
            "weights": [[f.name, f.stat().st_size, int(f.stat().st_mtime)] for f in files]}


def cache_key_fields(info: Any, device: str, dtype: str, question: str, answer: str,
                     settings: Any, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The fields hashed into the key (``settings`` is an AdaptiveConfig or a dict)."""
    settings = dataclasses.asdict(settings) if dataclasses.is_dataclass(settings) else settings
    settings = {k: v for k, v in dict(settings).items()
                # These do not change the plan, only how it is watched or stored.
                if k not in ("enabled", "audit_every", "audit_window", "cache_dir")}
    settings = json.loads(json.dumps(settings))  # as stored: tuples (tile_scales) are lists
    return {"version": CACHE_VERSION, **model_fingerprint(info.resolved, info.revision),
            "device": device, "dtype": dtype, "question": question, "answer": answer,
            "settings": settings, **(extra or {})}


class PlanCache:
    """Profiles and plans on disk, one JSON per key; counts hits and misses."""

    def __init__(self, directory: str | Path | None) -> None:
        self.directory = Path(directory) if directory is not None else None
        self.hits = 0
        self.misses = 0

    @classmethod
    def from_setting(cls, cache_dir: str) -> PlanCache:
        """``"auto"`` = the user cache dir, ``""`` or ``"off"`` = no cache, else a path."""
        if cache_dir in ("", "off", "none"):
            return cls(None)
        return cls(default_cache_dir() if cache_dir == "auto" else Path(cache_dir))

    @staticmethod
    def key(fields: dict[str, Any]) -> str:
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:20]

    def get(self, fields: dict[str, Any]) -> dict[str, Any] | None:
        """The stored entry for ``fields``, or None (a miss); unreadable files are misses."""
        path = self._path(fields)
        if path is None or not path.is_file():
            self.misses += 1
            return None
        try:
            entry = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            logger.warning("plan cache {} unreadable ({}): profiling again", path, err)
            self.misses += 1
            return None
        self.hits += 1
        return entry

    def put(self, fields: dict[str, Any], entry: dict[str, Any]) -> Path | None:
        """Store ``entry`` atomically (write then rename); a failure only logs."""
        path = self._path(fields)
        if path is None:
            return None
        try:
            write_json(path, {"key": fields, **entry}, indent=1)
        except OSError as err:
            logger.warning("cannot write plan cache {}: {}", path, err)
            return None
        return path

    def delete(self, fields: dict[str, Any]) -> None:
        path = self._path(fields)
        if path is not None:
            path.unlink(missing_ok=True)

    def neighbours(self, fields: dict[str, Any]) -> list[dict[str, Any]]:
        """Stored entries whose key equals ``fields`` in everything but the question: the
        plans of other questions on the same model, device, dtype and settings."""
        if self.directory is None or not self.directory.is_dir():
            return []
        same = {k: v for k, v in fields.items() if k != "question"}
        found = []
        for path in sorted(self.directory.glob("*.json")):
            try:
                entry = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            key = entry.get("key", {})
            if {k: v for k, v in key.items() if k != "question"} == same and \
                    key.get("question") != fields.get("question"):
                found.append(entry)
        return found

    def stats(self) -> dict[str, Any]:
        lookups = self.hits + self.misses
        return {"dir": None if self.directory is None else str(self.directory),
                "hits": self.hits, "misses": self.misses,
                "hit_rate": round(self.hits / lookups, 3) if lookups else None}

    def _path(self, fields: dict[str, Any]) -> Path | None:
        return None if self.directory is None else self.directory / f"{self.key(fields)}.json"
