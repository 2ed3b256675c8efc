"""Rules over the past: which stored tracks would have raised a rule of the config.

The rule's question is answered (by :func:`vidqa.ask.past.ask`) where a track has no answer to
it yet; then a track would have raised the rule when its newest answer to the question is the
rule's answer and its stored crops stood in the rule's zone for at least the rule's dwell. The
crops are the positions the store has (one per answer), so the dwell is estimated from them,
not from every frame as the live rule engine sees it.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from vidqa.config import PipelineConfig, RuleConfig
from vidqa.errors import ConfigError
from vidqa.store import queries
from vidqa.zones import ZoneMap

DWELL_TOLERANCE_S = 1e-6


def rule_of(cfg: PipelineConfig, name: str) -> tuple[RuleConfig, str]:
    """The rule ``name`` of the config and its question's text; a clear error otherwise."""
    for rule in cfg.rules:
        if rule.name == name:
            question = next((q.question for q in cfg.vlm.questions
                             if rule.question in (q.name, q.question)), rule.question)
            return rule, question
    known = ", ".join(r.name for r in cfg.rules) or "none"
    raise ConfigError(f"no rule {name!r} in the config: its rules are {known} (give the YAML "
                      f"that has it with --config)")


def rule_over_past(store: Path, rule: RuleConfig, question: str, filters: queries.Filters,
                   cfg: PipelineConfig) -> dict[str, Any]:
    """Which matching tracks would have raised ``rule``: the newest answer to its question
    (live or asked) is the rule's answer, and the track's stored crops stood in the rule's
    zone for at least its dwell; beside them, the tracks that raised it live."""
    zones = ZoneMap(cfg.zones)
    tracks: dict[tuple, dict[str, Any]] = {}
    for row in queries.every(store, "answers", replace(filters, question=None, answer=None)):
        key = (row["run_id"], row["stream_id"], row["track_id"])
        track = tracks.setdefault(key, {"answer": None, "at": -1, "in_zone": []})
        if row["question"] == question and row["id"] > track["at"]:
            track["answer"], track["at"] = row["answer"], row["id"]
        if rule.zone in zones.zones_of(tuple(row["bbox"])):
            track["in_zone"].append(row["time_s"])
    raised_live = {(r["run_id"], r["stream_id"], r["track_id"])
                   for r in queries.every(store, "alerts", replace(
                       filters, rule=rule.name, question=None, answer=None, zone=None))}
    would = []
    for key, track in sorted(tracks.items()):
        seen = track["in_zone"]
        dwell = max(seen) - min(seen) if seen else None
        if (track["answer"] == rule.answer and dwell is not None
                and dwell >= rule.dwell_s - DWELL_TOLERANCE_S):
            would.append({"run_id": key[0], "stream_id": key[1], "track_id": key[2],
                          "dwell_s": round(dwell, 2), "raised_live": key in raised_live})
    return {"rule": rule.name, "zone": rule.zone, "answer": rule.answer,
            "dwell_s": rule.dwell_s, "tracks": len(tracks), "would_raise": len(would),
            "raised_live": len(raised_live), "also_live": sum(w["raised_live"] for w in would),
            "which": would}
