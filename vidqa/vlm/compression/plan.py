"""A compression plan: what to do with each layer (keep, int8 or skip), keyed by module path,
and the tile the crops are resized to (None: the model's own; a smaller tile is fewer patches in
the vision tower and fewer image tokens in the prompt: the vision token budget).

Pure data, no torch: plans are chosen by the planner, stored in the plan cache, shared between
streams and applied by the :class:`~vidqa.vlm.compression.compressor.Compressor`.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

Operator = Literal["keep", "int8", "skip"]
OPERATORS: tuple[str, ...] = ("keep", "int8", "skip")


def tower_of(path: str) -> str:
    """"vision" or "text" from a layer's module path."""
    return "vision" if "vision_model" in path else "text"


# --------------------------------------------------------------------------------------------
# Plan


@dataclass(frozen=True, eq=False)
class Plan:
    """What to do with each layer, keyed by module path. Frozen; ``id`` hashes the ops."""

    ops: Mapping[str, str]
    note: str = field(default="", compare=False)  # how it was chosen, for logs and summaries
    tile: int | None = None  # square tile side in px for every crop; None = the model's own

    def __post_init__(self) -> None:
        bad = {path: op for path, op in self.ops.items() if op not in OPERATORS}
        if bad:
            raise ValueError(f"Plan ops must be one of {OPERATORS}, got {bad}")
        if self.tile is not None and (not isinstance(self.tile, int) or self.tile <= 0):
            raise ValueError(f"Plan tile must be a positive number of pixels or None, "
                             f"got {self.tile!r}")
        object.__setattr__(self, "ops", MappingProxyType(dict(sorted(self.ops.items()))))

    @classmethod
    def keep_all(cls, paths: Iterable[str], note: str = "full model") -> Plan:
        return cls({path: "keep" for path in paths}, note)

    @property
    def id(self) -> str:
        """Short hash of the compressed layers (and the tile); plans that do the same thing
        share an id. Plans without a tile keep the ids they had before tiles existed."""
        changed: dict[str, Any] = {path: op for path, op in self.ops.items() if op != "keep"}
        if self.tile is not None:
            changed["tile"] = self.tile
        if not changed:
            return "full"
        digest = hashlib.sha1(json.dumps(changed, sort_keys=True).encode()).hexdigest()
        return digest[:10]

    @property
    def compressed(self) -> bool:
        return self.tile is not None or any(op != "keep" for op in self.ops.values())

    def paths(self, op: str) -> list[str]:
        return [path for path, o in self.ops.items() if o == op]

    def counts(self) -> dict[str, int]:
        counts = Counter(self.ops.values())
        return {op: counts.get(op, 0) for op in OPERATORS}

    def summary(self) -> dict[str, Any]:
        """Id, note and operator counts overall and per tower."""
        towers = {}
        for tower in ("vision", "text"):
            ops = Counter(op for path, op in self.ops.items() if tower_of(path) == tower)
            towers[tower] = {op: ops.get(op, 0) for op in OPERATORS}
        return {"id": self.id, "note": self.note, "counts": self.counts(), "towers": towers,
                "tile": self.tile}

    def with_ops(self, changes: Mapping[str, str], note: str | None = None) -> Plan:
        return Plan({**self.ops, **changes}, self.note if note is None else note, self.tile)

    def with_tile(self, tile: int | None, note: str | None = None) -> Plan:
        return Plan(self.ops, self.note if note is None else note, tile)

    def to_dict(self) -> dict[str, Any]:
        data = {"id": self.id, "note": self.note, "ops": dict(self.ops)}
        return data if self.tile is None else {**data, "tile": self.tile}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Plan:
        plan = cls(data["ops"], data.get("note", ""), data.get("tile"))
        if "id" in data and data["id"] != plan.id:
            raise ValueError(f"plan id {data['id']!r} does not match its ops (hash {plan.id!r})")
        return plan

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Plan) and dict(self.ops) == dict(other.ops) and \
            self.tile == other.tile

    def __hash__(self) -> int:
        return hash((tuple(self.ops.items()), self.tile))

