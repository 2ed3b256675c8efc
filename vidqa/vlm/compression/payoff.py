"""Will a plan pay for itself? Forecast the ROIs still to come, rank candidate plans from what
profiling already measured, and price each confirmation before running it.

A candidate's return, if it passes, is ``R * c_full * (saving - audit_share)``: ``R`` ROIs
still to come, each saving its share of the full per-ROI cost, minus the audits (an audited ROI
is also answered by the full model). Whether it passes is a prior, ``p_pass = exp(-risk)``, from
the block influence the plan removes: int8 rarely flips a yes/no answer, skipping a layer often
does, and a smaller tile (the vision token budget) sits between them. A confirmation costs a
compressed pass over the profiled batches (plus building its int8
copies), paid whether the candidate passes or not. So candidates are confirmed in order of
expected saving, ``est_saving * p_pass`` (the safe plan first), each only while its expected
value, ``p_pass * return - confirmation``, is positive and the planning spent so far plus the
confirmation stays below the return, at most ``confirm`` of them: on a file, planning never
spends more than the plan can return on that file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vidqa.vlm.compression.plan import Plan, tower_of

SKIP_FRACTIONS = (0.25, 0.5, 0.75)
BURST_S = 2.0  # a stream's first seconds: everyone in view is a new track at once
MIN_ARRIVALS = 10  # new ROIs after the burst before a live rate is trusted (n - 2 sqrt(n) ~ n/3)
# The rate is counted at the lower end of a ~95% Poisson interval (n - 2 sqrt(n) arrivals): on
# make run's clip n - sqrt(n) still forecast 104 ROIs where 46 came (new people arrive early in
# a clip), and a 28 s confirmation of a 30% plan was paid that 46 ROIs could not return.
POISSON_Z = 2.0
# Returns are estimates, and optimistic ones: on make run's clip (2-core CPU) the estimated
# saving was 1.45x the paired one and the forecast 1.3x the crops that came. A confirmation is
# paid for sure, so a candidate must be expected to return twice what confirming it costs.
RETURN_DISCOUNT = 0.5
INT8_GAIN = 0.4  # share of a layer's time int8 saves on CPU (1.5-2.1x per layer measured)
# Risk per unit of a tower's block influence (p_pass = exp(-risk)). Priors, not fits: skipping
# layers that carry a fifth of a tower's influence passes ~1 time in e (the stand-in's skip
# plans agreed on 69% of its profiled ROIs where 98% was needed), int8 on a whole tower ~4 in 5
# (int8 on the stand-in's vision tower kept every answer). ShortV and TALE find the same order:
# a removed layer moves a task's answer far more than a quantized one.
SKIP_RISK = 5.0
INT8_RISK = 0.25
# Risk per share of the vision tower's patches a smaller tile drops: a prior too. A person crop
# is 40-120 px wide, upscaled to the 512 px tile anyway, so a 384 px tile (44% fewer patches,
# p_pass ~0.80) loses little detail and a 256 px one (75% fewer, ~0.69) more; the confirmation
# on the profiled crops decides.
TILE_RISK = 0.5


# --------------------------------------------------------------------------------------------
# How many ROIs are still to come


@dataclass
class _Span:
    """One stream's ROIs as the forecast sees them: its first and latest time, and how many came
    after its first :data:`BURST_S` seconds."""

    first: float
    last: float
    arrivals: int = 0

    @property
    def timed_s(self) -> float:
        """Stream seconds after the burst."""
        return self.last - self.first - BURST_S


class CropForecast:
    """ROIs still to come for one question, from an explicit count, a stream time still to
    come, or the rate of new ROIs (per second of stream time) times the live horizon.

    The rate leaves out each stream's first :data:`BURST_S` seconds of ROIs — everyone already
    in view when a stream starts is a new track at once, a burst that never comes again — and
    is the lower end of a Poisson rate (``n - 2 sqrt(n)`` arrivals): planning spends only what
    the stream is likely to pay back."""

    def __init__(self, horizon_s: float) -> None:
        self.horizon_s = horizon_s
        self._expected: int | None = None  # ROIs announced by the caller
        self._seconds: float | None = None  # stream seconds still to come, announced
        self._since = 0  # ROIs seen since the announcement
        self._spans: dict[str, _Span] = {}  # per stream: one per camera, bounded
        self.seen = 0

    def expect(self, crops: int | None = None, seconds: float | None = None) -> None:
        """Announce what is still to come: ``crops`` (exact), or ``seconds`` of stream from
        the first ROI on (a file's duration: ``frame_count / fps``)."""
        self._expected, self._seconds, self._since = crops, seconds, 0

    def observe(self, stream_id: str, time_s: float) -> None:
        self.seen += 1
        self._since += 1
        span = self._spans.setdefault(stream_id, _Span(time_s, time_s))
        span.first, span.last = min(span.first, time_s), max(span.last, time_s)
        if time_s - span.first > BURST_S:
            span.arrivals += 1

    def rate(self) -> float | None:
        """New ROIs per second of stream time after the start's burst, summed over the streams
        (they run side by side: each stream's own rate, added up), at the lower end of what
        their arrivals suggest (None before any stream has 1 s of that)."""
        timed = [span for span in self._spans.values() if span.timed_s >= 1.0]
        if not timed:
            return None
        arrivals = sum(span.arrivals for span in timed)
        point = sum(span.arrivals / span.timed_s for span in timed)
        return point * max(0.0, 1 - POISSON_Z / math.sqrt(arrivals)) if arrivals else 0.0

    def known(self) -> bool:
        """Whether anything is known of what is still to come: announced, or a rate (on a
        file of announced length, as soon as there is one; live, resting on at least
        :data:`MIN_ARRIVALS` new ROIs after the streams' first seconds)."""
        arrivals = sum(span.arrivals for span in self._spans.values())
        return self._expected is not None or (self.rate() is not None and (
            self._seconds is not None or arrivals >= MIN_ARRIVALS))

    def remaining(self) -> tuple[float, str]:
        """(ROIs expected from now on, how that was estimated)."""
        if self._expected is not None:
            return max(0.0, self._expected - self._since), "announced ROI count"
        rate = self.rate()
        if rate is None:
            return 0.0, f"no rate yet (under 1 s of stream seen after the first {BURST_S:g} s)"
        if self._seconds is not None:
            # Streams run side by side: the longest span seen is the stream time elapsed.
            elapsed = max(span.last - span.first for span in self._spans.values())
            left = max(0.0, self._seconds - elapsed)
            return rate * left, f"{rate:.2f} ROI/s x {left:.0f} s of {self._seconds:.0f} s left"
        return rate * self.horizon_s, f"{rate:.2f} ROI/s x horizon {self.horizon_s:.0f} s"


# --------------------------------------------------------------------------------------------
# Candidates ranked from profiling signals


@dataclass(frozen=True)
class Candidate:
    """A plan, its saving estimated from measured layer times, and its risk from block
    influence (each tower's share of influence it touches, times ``SKIP_RISK`` where it
    skips and ``INT8_RISK`` where it quantizes)."""

    label: str
    plan: Plan
    est_saving: float  # share of the full per-ROI time
    risk: float

    @property
    def p_pass(self) -> float:
        """Prior probability that the candidate keeps the answers on the profiled ROIs."""
        return float(np.exp(-self.risk))

    @property
    def score(self) -> float:
        """Expected share of the full time saved per ROI: the ranking's key."""
        return self.est_saving * self.p_pass

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "plan_id": self.plan.id, "counts": self.plan.counts(),
                "est_saving": round(self.est_saving, 4), "risk": round(self.risk, 4),
                "p_pass": round(self.p_pass, 4)}


@dataclass(frozen=True)
class TileOption:
    """A tile smaller than the model's: the shares of the vision tower's patches and of the
    text model's prompt tokens it keeps (each layer's time scales with its tokens, roughly)."""

    tile: int  # px
    patches: float  # (tile / model tile)^2
    tokens: float  # prompt tokens at this tile / at the model's tile


def candidates(paths: Sequence[str], influence: np.ndarray, layer_s: np.ndarray,
               total_s: float, int8: bool, tiles: Sequence[TileOption] = ()
               ) -> list[Candidate]:
    """Every candidate, best first: skip the least influential 1/4, 1/2, 3/4 of a tower, int8
    a whole tower (where an int8 kernel exists) and int8 with the skips, and the union of the
    towers' best; each smaller tile alone and with the two best of those. Ranked by expected
    saving, ``est_saving * p_pass``: the safe int8 plan before the aggressive skip plan that
    promises more but rarely keeps the answers."""
    found = _layer_candidates(paths, influence, layer_s, total_s, int8)
    best = sorted(found, key=lambda c: -c.score)[:2]
    shares = _tower_shares(paths, influence)
    for option in tiles:
        found.append(_candidate(f"tile {option.tile}", paths, {}, shares, layer_s, total_s,
                                option))
        for layers in best:
            ops = {paths.index(p): op for p, op in layers.plan.ops.items() if op != "keep"}
            found.append(_candidate(f"tile {option.tile} + {layers.label}", paths, ops, shares,
                                    layer_s, total_s, option))
    return sorted((c for c in found if c.est_saving > 0), key=lambda c: -c.score)


def _layer_candidates(paths: Sequence[str], influence: np.ndarray, layer_s: np.ndarray,
                      total_s: float, int8: bool) -> list[Candidate]:
    """The layer-only candidates of :func:`candidates`, unsorted."""
    shares = _tower_shares(paths, influence)
    found: list[Candidate] = []
    for tower in ("vision", "text"):
        layers = sorted((i for i, p in enumerate(paths) if tower_of(p) == tower),
                        key=lambda i: influence[i])
        for fraction in SKIP_FRACTIONS:
            skipped = layers[:int(fraction * len(layers) + 0.5)]
            if skipped:
                found.append(_candidate(f"skip {fraction:g} of {tower}", paths,
                                        {i: "skip" for i in skipped}, shares, layer_s, total_s))
                if int8:
                    ops = {**{i: "int8" for i in layers}, **{i: "skip" for i in skipped}}
                    found.append(_candidate(f"skip {fraction:g} + int8 rest of {tower}", paths,
                                            ops, shares, layer_s, total_s))
        if int8 and layers:
            found.append(_candidate(f"int8 {tower}", paths, {i: "int8" for i in layers},
                                    shares, layer_s, total_s))
    found = [c for c in found if c.est_saving > 0]
    return found + _unions(found, paths, shares, layer_s, total_s)


def next_candidate(ranked: Sequence[Candidate], rejected: Sequence[Candidate],
                   tried: Sequence[Candidate] = ()) -> Candidate | None:
    """The best-ranked candidate not tried. After one changed the answers (``rejected``),
    only candidates safer than half its risk among those that touch what it touched (a
    smaller tile, layers, or both): a tile that moved the answers says nothing of int8 on
    the layers, and the other way round. One that kept the answers but did not pay (in
    ``tried`` only) rules out nothing else."""
    seen = {c.plan for c in (*rejected, *tried)}
    for candidate in ranked:
        if candidate.plan in seen:
            continue
        if any(_axes(r) <= _axes(candidate) and candidate.risk > r.risk / 2 for r in rejected):
            continue
        return candidate
    return None


def _axes(candidate: Candidate) -> frozenset[str]:
    """What a candidate changes: "tile", "layers" or both."""
    plan = candidate.plan
    return frozenset({"tile"} if plan.tile is not None else set()) | \
        frozenset({"layers"} if any(op != "keep" for op in plan.ops.values()) else set())


def expected_return(crops: float, full_per_crop_s: float, saving: float,
                    audit_every: int) -> float:
    """Seconds a plan saving ``saving`` returns over ``crops`` ROIs, audits paid."""
    audit_share = 1 / audit_every if audit_every else 0.0
    return crops * full_per_crop_s * (saving - audit_share)


def expected_value(candidate: Candidate, returns: float, confirm_s: float) -> float:
    """Seconds confirming ``candidate`` is expected to win: its ``returns`` if it passes,
    weighted by ``p_pass`` and counted at :data:`RETURN_DISCOUNT`, minus the confirmation,
    which is paid either way."""
    return candidate.p_pass * returns * RETURN_DISCOUNT - confirm_s


def static_plan(paths: Sequence[str], int8: bool) -> Plan:
    """The fixed, profile-free plan per model (``mode: static``): int8 on the whole vision
    tower where an int8 kernel exists, else skip the last third of the vision tower but its
    final layer (ShortGPT: deep layers but the last are the most redundant)."""
    vision = [p for p in paths if tower_of(p) == "vision"]
    if int8:
        ops = {p: "int8" for p in vision}
        note = "static: int8 on the vision tower"
    else:
        third = max(1, len(vision) // 3)
        ops = {p: "skip" for p in vision[-third - 1:-1]}
        note = f"static: skip {len(ops)} deep vision layers (not the last)"
    return Plan({**{p: "keep" for p in paths}, **ops}, note)


def _tower_shares(paths: Sequence[str], influence: np.ndarray) -> np.ndarray:
    """Each layer's share of its tower's total block influence, (n_layers,)."""
    shares = np.zeros(len(paths))
    for tower in ("vision", "text"):
        index = [i for i, p in enumerate(paths) if tower_of(p) == tower]
        total = float(np.sum(influence[index])) if index else 0.0
        for i in index:
            shares[i] = influence[i] / total if total > 0 else 1 / len(index)
    return shares


def _candidate(label: str, paths: Sequence[str], ops: dict[int, str], shares: np.ndarray,
               layer_s: np.ndarray, total_s: float, tile: TileOption | None = None
               ) -> Candidate:
    kept = layer_s.astype(np.float64)  # (n_layers,) each layer's time at the plan's tile
    risk = 0.0
    if tile is not None:
        kept = kept * np.asarray([tile.patches if tower_of(p) == "vision" else tile.tokens
                                  for p in paths])
        risk += TILE_RISK * (1 - tile.patches)
    saved = float(np.sum(layer_s) - np.sum(kept))
    saved += sum(kept[i] * (1.0 if op == "skip" else INT8_GAIN) for i, op in ops.items())
    risk += sum(shares[i] * (SKIP_RISK if op == "skip" else INT8_RISK) for i, op in ops.items())
    plan = Plan({**{p: "keep" for p in paths}, **{paths[i]: op for i, op in ops.items()}},
                label, None if tile is None else tile.tile)
    return Candidate(label, plan, float(saved / total_s) if total_s > 0 else 0.0, float(risk))


def _unions(found: list[Candidate], paths: Sequence[str], shares: np.ndarray,
            layer_s: np.ndarray, total_s: float) -> list[Candidate]:
    """The vision and text candidates of the same rank merged (damage is roughly additive,
    and so is risk: p_pass of the union is the product of its parts')."""
    by_tower = {t: sorted((c for c in found if c.label.endswith(t)), key=lambda c: -c.score)[:2]
                for t in ("vision", "text")}
    merged = []
    for vision, text in zip(by_tower["vision"], by_tower["text"], strict=False):
        ops = {paths.index(p): op for c in (vision, text) for p, op in c.plan.ops.items()
               if op != "keep"}
        merged.append(_candidate(f"{vision.label} + {text.label}", paths, ops, shares,
                                 layer_s, total_s))
    return merged
