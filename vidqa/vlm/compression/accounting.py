"""Honest accounting of one question's VLM time: what it spent, what the full model would
have spent on the same ROIs, and whether compression paid for its own planning.

Only **paired** measurements price the full model: the same crops, in the same batch, run
both ways back to back — the profiled batches re-run under a candidate plan, and audited
batches (answered compressed and full). Full answers taken at other moments (the first
batches, other batch sizes, another load on the machine) are never compared with compressed
ones: that comparison printed 6.0x where the paired ratio was 1.43x.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ANSWER_KINDS = ("full", "compressed", "audit_compressed", "audit")
PLANNING_KINDS = ("profile", "confirm", "borrow", "build")


@dataclass
class Pairs:
    """The batches of one source ("profile": confirmed candidates on profiled batches, or
    "audit") answered both ways, summed as they come: a run of weeks audits without end."""

    full_s: float = 0.0
    compressed_s: float = 0.0
    crops: int = 0
    counted_s: float = 0.0  # compressed seconds of the pairs that know their crops
    count: int = 0

    def add(self, full_s: float, compressed_s: float, crops: int) -> None:
        self.full_s += full_s
        self.compressed_s += compressed_s
        self.crops += crops
        self.counted_s += compressed_s if crops else 0.0
        self.count += 1


@dataclass
class Ledger:
    """Seconds and ROIs of one question by kind, and its paired measurements.

    Answering kinds: ``full`` (full-model answers), ``compressed`` (compressed answers not
    audited), ``audit_compressed`` and ``audit`` (the two sides of an audited batch).
    Planning kinds: ``profile`` (extra profiling passes), ``confirm`` (candidates re-run on
    the profiled batches), ``borrow`` (a borrowed plan checked in the stream), ``build``
    (int8 copies).
    """

    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(
        ANSWER_KINDS + PLANNING_KINDS, 0.0))
    crops: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ANSWER_KINDS, 0))
    pairs: dict[str, Pairs] = field(default_factory=lambda: {"audit": Pairs(),
                                                             "profile": Pairs()})
    cache_saved_s: float = 0.0  # planning seconds a cached or library plan made unnecessary

    def add(self, kind: str, seconds: float, crops: int = 0) -> None:
        self.seconds[kind] += seconds
        if kind in self.crops:
            self.crops[kind] += crops

    def pair(self, full_s: float, compressed_s: float, crops: int, source: str) -> None:
        self.pairs[source].add(full_s, compressed_s, crops)

    @property
    def pair_count(self) -> int:
        return sum(pairs.count for pairs in self.pairs.values())

    @property
    def vlm_s(self) -> float:
        """Seconds spent answering (audits included)."""
        return sum(self.seconds[k] for k in ANSWER_KINDS)

    @property
    def planning_s(self) -> float:
        return sum(self.seconds[k] for k in PLANNING_KINDS)

    def paired_ratio(self) -> tuple[float | None, str]:
        """full / compressed seconds over paired batches (audits when there are any, else
        the profiled batches), and which source priced it."""
        for source in ("audit", "profile"):
            pairs = self.pairs[source]
            if pairs.count and pairs.compressed_s > 0:
                return pairs.full_s / pairs.compressed_s, source
        return None, "none"

    def full_equivalent_s(self) -> float | None:
        """What the full model would have spent on every ROI answered: full answers and the
        full side of audits as measured, unaudited compressed batches priced by the paired
        ratio (None when compressed answers exist but nothing priced them)."""
        ratio, _ = self.paired_ratio()
        if self.seconds["compressed"] and ratio is None:
            return None
        priced = self.seconds["compressed"] * (ratio or 0.0)
        # An audited batch's full side is what the full model spent on those ROIs.
        return self.seconds["full"] + self.seconds["audit"] + priced

    def break_even_crops(self) -> float | None:
        """ROIs answered under the plan that pay back the planning, at the paired per-ROI
        costs and the audits' share; None when the plan does not save per ROI."""
        per_crop = self._per_crop_costs()
        if per_crop is None:
            return None
        full, compressed, audit_share = per_crop
        saving = full - compressed - audit_share * full
        return self.planning_s / saving if saving > 0 else None

    def _per_crop_costs(self) -> tuple[float, float, float] | None:
        ratio, source = self.paired_ratio()
        if ratio is None or not self.pairs[source].crops:
            return None
        compressed = self.pairs[source].counted_s / self.pairs[source].crops
        answered = self.crops["compressed"] + self.crops["audit_compressed"]
        audit_share = self.crops["audit"] / answered if answered else 0.0
        return compressed * ratio, compressed, audit_share

    def summary(self) -> dict[str, Any]:
        """The accounting block of ``summary.json`` → ``vlm.questions[]``."""
        ratio, source = self.paired_ratio()
        full_eq = self.full_equivalent_s()
        spent = self.vlm_s + self.planning_s
        net = None if full_eq is None else full_eq - spent
        return {
            "vlm_s": round(self.vlm_s, 3), "planning_s": round(self.planning_s, 3),
            "planning": {k: round(self.seconds[k], 3) for k in PLANNING_KINDS},
            "spent_s": round(spent, 3),
            "full_equivalent_s": None if full_eq is None else round(full_eq, 3),
            "net_saving_s": None if net is None else round(net, 3),
            "net_ratio": round(full_eq / spent, 3) if full_eq and spent else None,
            "paired_ratio": None if ratio is None else round(ratio, 3),
            "paired_by": source, "pairs": self.pair_count,
            "break_even_rois": _round(self.break_even_crops()),
            "crops": dict(self.crops),
            "cache_saved_s": round(self.cache_saved_s, 3),
        }

    def verdict(self, label: str) -> str:
        """One plain log line: saved or lost, by how much, against what."""
        s = self.summary()
        if s["full_equivalent_s"] is None:
            return (f"question {label!r}: spent {s['spent_s']:.1f} s on the VLM "
                    f"(planning {s['planning_s']:.1f} s); no paired measurement prices the "
                    f"full model, so no saving is claimed")
        net = s["net_saving_s"]
        head = (f"question {label!r}: spent {s['spent_s']:.1f} s (answers {s['vlm_s']:.1f} s + "
                f"planning {s['planning_s']:.1f} s) where the full model would have spent "
                f"{s['full_equivalent_s']:.1f} s (paired ratio {s['paired_ratio']}, "
                f"{s['pairs']} pairs by {s['paired_by']})")
        if net is not None and net < 0:
            return (f"{head}: compression LOST {-net:.1f} s — planning did not pay back "
                    f"(break-even after {_fmt_crops(s['break_even_rois'])} compressed ROIs)")
        return f"{head}: saved {net:.1f} s ({s['net_ratio']}x)"


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _fmt_crops(value: float | None) -> str:
    return "never (no per-ROI saving)" if value is None else f"{value:.0f}"
