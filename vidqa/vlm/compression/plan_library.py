"""Plans made ahead of time (``vidqa plan``), stored in a file, used by ``vlm.adaptive.plan``.

A library file holds the plans of one model for several questions::

    {"format": "vidqa-plans/1", "model": {"name": ..., "layers": [...paths...]},
     "plans": [{"question": ..., "plan": {...}, "agreement": 1.0, "paired_ratio": 1.6,
                "planning_s": 12.3, "rois": 16}, ...]}

Plans are **per model**: a plan names layers by module path and was checked against one set
of weights. A library whose layer paths differ from the loaded model is refused; one made on
other weights of the same shape is used but its audits will tell (and the log says so).

The nearest-question rule of the query heuristic lives here too: a question with no plan of
its own may borrow the plan of the most similar question (word overlap), but only after the
borrowed plan agreed with the full model on held-out tracks of the new question.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vidqa.errors import ConfigError
from vidqa.storage import write_json
from vidqa.vlm.compression.plan import Plan

FORMAT = "vidqa-plans/1"


@dataclass(frozen=True)
class LibraryPlan:
    """One stored plan: the question it was made for, the plan and how it was checked."""

    question: str
    plan: Plan
    model: str
    source: str  # the file it came from
    checks: dict[str, Any]  # agreement, paired_ratio, planning_s, rois


def save_library(path: Path, model: str, paths: Sequence[str],
                 entries: Iterable[dict[str, Any]]) -> Path:
    """Write a library file (``entries``: question, plan dict and checks)."""
    write_json(path, {"format": FORMAT, "model": {"name": model, "layers": list(paths)},
                      "plans": list(entries)}, indent=1)
    return path


def load_library(location: str | Path, paths: Sequence[str]) -> list[LibraryPlan]:
    """Every plan in a library file, or in the ``*.json`` files of a folder, made for a model
    with exactly these layer ``paths``; other files are skipped with a ConfigError when
    ``location`` names one file."""
    location = Path(location).expanduser()
    if location.is_dir():
        found = []
        for file in sorted(location.glob("*.json")):
            try:
                found += _load_file(file, paths)
            except ConfigError:
                continue  # another model's library
        return found
    if not location.is_file():
        raise ConfigError(f"vlm.adaptive.plan: {location} is neither a plan file nor a folder "
                          f"of them: make one with `vidqa plan`, or set plan: auto")
    return _load_file(location, paths)


def _load_file(file: Path, paths: Sequence[str]) -> list[LibraryPlan]:
    try:
        data = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"plan file {file} is unreadable ({err}): write it again with "
                          f"`vidqa plan`") from None
    if data.get("format") != FORMAT:
        raise ConfigError(f"plan file {file}: format {data.get('format')!r}, expected {FORMAT!r}")
    layers = data.get("model", {}).get("layers", [])
    if list(layers) != list(paths):
        raise ConfigError(f"plan file {file} was made for a model with {len(layers)} layers "
                          f"named differently from this one ({len(paths)}): plans are per "
                          f"model; make one for this model with `vidqa plan`")
    name = data["model"].get("name", "")
    return [LibraryPlan(entry["question"], Plan.from_dict(entry["plan"]), name, str(file),
                        {k: v for k, v in entry.items() if k not in ("question", "plan")})
            for entry in data.get("plans", [])]


def find(library: Sequence[LibraryPlan], question: str) -> LibraryPlan | None:
    """The plan stored for exactly ``question`` (case and spacing aside)."""
    key = _normal(question)
    return next((entry for entry in library if _normal(entry.question) == key), None)


def similarity(a: str, b: str) -> float:
    """Word overlap (Jaccard) of two questions, 0..1, ignoring case, punctuation and the
    words every question shares ("is", "this", "person")."""
    wa, wb = _words(a), _words(b)
    return len(wa & wb) / len(wa | wb) if wa | wb else 0.0


def nearest(question: str, others: Iterable[str]) -> tuple[str, float] | None:
    """The most similar of ``others`` (not ``question`` itself) and its similarity."""
    scored = [(other, similarity(question, other)) for other in others
              if _normal(other) != _normal(question)]
    return max(scored, key=lambda pair: pair[1], default=None)


_COMMON = {"is", "this", "the", "a", "an", "person", "does", "do", "are", "there", "of"}


def _words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in _COMMON}


def _normal(text: str) -> str:
    return " ".join(text.lower().split())
