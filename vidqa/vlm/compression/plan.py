"""A compression plan: what to do with each layer (keep, int8 or skip), keyed by module path.

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

    def __post_init__(self) -> None:
        bad = {path: op for path, op in self.ops.items() if op not in OPERATORS}
        if bad:
            raise ValueError(f"Plan ops must be one of {OPERATORS}, got {bad}")
        object.__setattr__(self, "ops", MappingProxyType(dict(sorted(self.ops.items()))))

    @classmethod
    def keep_all(cls, paths: Iterable[str], note: str = "full model") -> Plan:
        return cls({path: "keep" for path in paths}, note)

    @property
    def id(self) -> str:
        """Short hash of the compressed layers; plans that do the same thing share an id."""
        changed = {path: op for path, op in self.ops.items() if op != "keep"}
        if not changed:
            return "full"
        digest = hashlib.sha1(json.dumps(changed, sort_keys=True).encode()).hexdigest()
        return digest[:10]

    @property
    def compressed(self) -> bool:
        return any(op != "keep" for op in self.ops.values())

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
        return {"id": self.id, "note": self.note, "counts": self.counts(), "towers": towers}

    def with_ops(self, changes: Mapping[str, str], note: str | None = None) -> Plan:
        return Plan({**self.ops, **changes}, self.note if note is None else note)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "note": self.note, "ops": dict(self.ops)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Plan:
        plan = cls(data["ops"], data.get("note", ""))
        if "id" in data and data["id"] != plan.id:
            raise ValueError(f"plan id {data['id']!r} does not match its ops (hash {plan.id!r})")
        return plan

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Plan) and dict(self.ops) == dict(other.ops)

    def __hash__(self) -> int:
        return hash(tuple(self.ops.items()))

