"""Experiment 2 (``vidqa compress-report``): what compressing X% of the layers costs and buys.

On N person ROIs, for fractions × operators {int8, skip, int8+skip} × orders {importance by
each metric, random, reverse importance}: latency per ROI (median of repeats, measured in the
same run as the uncompressed baseline — at the start and again at the end — and reported as a
ratio), weight bytes, peak process memory, agreement with the uncompressed model, mean
|Δ p_yes|, and accuracy when labels are given. Writes ``compression_results.json`` and
``compression_impact.png``.

The first ``profile_rois`` ROIs are profiled; every ROI is evaluated, so most of the evaluation
is on ROIs the ranking never saw.

Token-budget rows (operator ``tile``, ``tiles``): the crops at smaller tiles, fewer patches in
the vision tower and fewer image tokens in the prompt. ``tile:by crop size`` gives each crop the
smallest tile (of ``tiles`` and the model's own) that holds its longest side, so small crops are
not upscaled to 512 px; its controls are ``tile:fixed N`` (every crop at N px) and
``tile:random`` (the same tiles dealt to the crops at random: the same token budget, no rule).
Their ``fraction`` is the share of vision patches dropped.

Labels file (optional), keyed by the ROI's track id (or its position when plain crops are
given); answers are "yes" or "no":

- JSON: ``{"12": "yes", "17": "no"}``
- CSV with a header: ``track_id,answer`` then ``12,yes`` …
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from loguru import logger

from vidqa.clock import timed
from vidqa.errors import ConfigError
from vidqa.experiments.common import (
    crops_and_ids,
    load_labels,
    peak_memory,
    peak_memory_reset,
    prepare_out_dir,
)
from vidqa.experiments.plots import plot_impact
from vidqa.messages import Crop
from vidqa.storage import write_json
from vidqa.vlm.compression.compressor import Compressor, compressor_for
from vidqa.vlm.compression.orders import (
    Scope,
    compare,
    importance_order,
    operator_plan,
    random_order,
)
from vidqa.vlm.compression.plan import Plan
from vidqa.vlm.model import VisionLanguageModel, module_bytes, timed_margins
from vidqa.vlm.profiling.importance import TASK_METRICS, profile_crops

RESULTS_JSON = "compression_results.json"
IMPACT_PNG = "compression_impact.png"


@dataclass(frozen=True)
class ReportConfig:
    """What to sweep. Every field is a CLI flag of ``vidqa compress-report``."""

    question: str = "Is this person carrying a backpack?"
    fractions: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75)
    operators: tuple[str, ...] = ("int8", "skip", "int8+skip")
    metrics: tuple[str, ...] = ("block_influence", "activation")  # one importance order each
    controls: tuple[str, ...] = ("random", "reverse")  # reverse = of the first metric
    repeats: int = 3  # timed passes per configuration; the median is reported
    batch_size: int = 8
    profile_crops: int = 10  # the first K ROIs are profiled
    scope: Scope = "global"  # fraction of all layers, or of each tower
    seed: int = 0  # random order
    tiles: tuple[int, ...] = (384, 256)  # token-budget rows (sizes the model does not take: none)

    def __post_init__(self) -> None:
        if not all(0 <= f < 1 for f in self.fractions):
            raise ConfigError(f"fractions must be in [0, 1), got {self.fractions}")
        bad = set(self.operators) - {"int8", "skip", "int8+skip"}
        if bad:
            raise ConfigError(f"unknown operators {sorted(bad)}: choose int8, skip, int8+skip")
        if set(self.controls) - {"random", "reverse"}:
            raise ConfigError(f"controls must be random and/or reverse, got {self.controls}")
        if self.repeats < 1 or self.batch_size < 1 or self.profile_crops < 1:
            raise ConfigError("repeats, batch_size and profile_rois must be >= 1")


@dataclass
class Measurement:
    """One configuration measured on all ROIs."""

    order: str
    operator: str
    fraction: float
    plan: Plan
    margins: np.ndarray
    latency_ms: float  # median over repeats of (pass seconds / N)
    weight_bytes: int
    peak_memory_bytes: int | None
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Inputs


# --------------------------------------------------------------------------------------------
# Measuring


class Bench:
    """Times the prepared batches of all ROIs under a plan."""

    def __init__(self, vlm: VisionLanguageModel, compressor: Compressor,
                 crops: Sequence[np.ndarray], question: str, batch_size: int) -> None:
        self.vlm = vlm
        self.compressor = compressor
        self.count = len(crops)
        self.question, self.batch_size = question, batch_size
        self.batches = [vlm.encode(crops[i:i + batch_size], question)
                        for i in range(0, len(crops), batch_size)]

    def run(self, plan: Plan, repeats: int) -> tuple[np.ndarray, float, int, int | None]:
        """(margins (N,), median ms per ROI, weight bytes, peak memory) under ``plan``."""
        self.compressor.prune()  # this plan's int8 copies only, for a fair memory peak
        peak_memory_reset(self.vlm.device)
        self.compressor.prepare(plan)
        times, margins = [], None
        with self.compressor.using(plan):
            weights = module_bytes(self.vlm.model)
            for _ in range(repeats):
                margins, seconds = timed_margins(self.vlm, self.batches)
                times.append(seconds)
        return margins, 1000 * statistics.median(times) / self.count, weights, \
            peak_memory(self.vlm.device)

    def run_tiles(self, crops: Sequence[np.ndarray], tiles: Sequence[int], repeats: int
                  ) -> tuple[np.ndarray, float, int, int | None]:
        """As :meth:`run` for the full model with each crop at its own tile: crops of one tile
        are batched together, margins come back in the crops' order."""
        peak_memory_reset(self.vlm.device)
        groups: dict[int, list[int]] = {}
        for index, tile in enumerate(tiles):
            groups.setdefault(int(tile), []).append(index)
        batches, order = [], []
        for tile, indices in groups.items():
            for i in range(0, len(indices), self.batch_size):
                chunk = indices[i:i + self.batch_size]
                batches.append(self.vlm.encode([crops[j] for j in chunk], self.question,
                                               tile=tile))
                order += chunk
        times, margins = [], np.zeros(len(crops))
        for _ in range(repeats):
            ran, seconds = timed_margins(self.vlm, batches)
            times.append(seconds)
        margins[order] = ran
        return margins, 1000 * statistics.median(times) / self.count, \
            module_bytes(self.vlm.model), peak_memory(self.vlm.device)


# --------------------------------------------------------------------------------------------
# The experiment


def orders_for(profile: Any, cfg: ReportConfig, paths: Sequence[str]) -> dict[str, list[str]]:
    """Name -> layer order (least important first) for every metric and control."""
    orders = {f"importance:{m}": importance_order(profile, m) for m in cfg.metrics}
    if "random" in cfg.controls:
        orders["random"] = random_order(list(paths), cfg.seed)
    if "reverse" in cfg.controls:
        orders[f"reverse:{cfg.metrics[0]}"] = importance_order(profile, cfg.metrics[0])[::-1]
    return orders


def compression_report(vlm: VisionLanguageModel, crops: Iterable[Crop | np.ndarray],
                       out_dir: str | Path, cfg: ReportConfig = ReportConfig(),
                       labels: str | Path | None = None, profile: Any = None) -> dict[str, Any]:
    """Run Experiment 2 and write its JSON and plot into ``out_dir``; returns the results."""
    out = prepare_out_dir(Path(out_dir))
    images, ids = crops_and_ids(crops)
    truth = load_labels(labels) if labels else None
    compressor = compressor_for(vlm.model)
    seconds: dict[str, float] = {"profile": 0.0}
    with timed(seconds, "profile", vlm.device):
        if profile is None:
            profile = _profile(vlm, images[:cfg.profile_crops], ids[:cfg.profile_crops], cfg)
    bench = Bench(vlm, compressor, images, cfg.question, cfg.batch_size)
    full = Plan.keep_all(compressor.paths)
    baseline = [bench.run(full, cfg.repeats)]
    rows = _sweep(bench, orders_for(profile, cfg, compressor.paths), cfg)
    rows += _tile_rows(bench, images, cfg)
    baseline.append(bench.run(full, cfg.repeats))  # drift check: same model, end of the run
    results = _results(vlm, compressor, cfg, baseline, rows, ids, truth, seconds["profile"])
    write_json(out / RESULTS_JSON, results, indent=1)
    plot_impact(results, out / IMPACT_PNG)
    logger.info("compress-report: {} configurations on {} ROIs -> {}", len(rows), len(images), out)
    return results


def _profile(vlm: VisionLanguageModel, crops: list[np.ndarray], ids: list[str],
             cfg: ReportConfig) -> Any:
    metrics = tuple(m for m in cfg.metrics if m not in TASK_METRICS)
    task = tuple(m for m in cfg.metrics if m in TASK_METRICS)
    track_ids = [int(i) if i.lstrip("-").isdigit() else n for n, i in enumerate(ids)]
    return profile_crops(vlm, crops, cfg.question, track_ids, metrics=metrics or ("activation",),
                        task_impact=task, batch_size=cfg.batch_size)


def _sweep(bench: Bench, orders: dict[str, list[str]], cfg: ReportConfig) -> list[Measurement]:
    rows: list[Measurement] = []
    seen: dict[Plan, Measurement] = {}  # the same plan from two orders is measured once
    for name, order in orders.items():
        for operator in cfg.operators:
            for fraction in (f for f in cfg.fractions if f > 0):
                plan = operator_plan(order, operator, fraction, cfg.scope)
                if plan not in seen:
                    seen[plan] = Measurement(name, operator, fraction, plan,
                                             *bench.run(plan, cfg.repeats))
                    logger.info("{} {} {:.0%}: {:.1f} ms/ROI", name, operator, fraction,
                                seen[plan].latency_ms)
                measured = seen[plan]
                rows.append(Measurement(name, operator, fraction, plan, measured.margins,
                                        measured.latency_ms, measured.weight_bytes,
                                        measured.peak_memory_bytes))
    return rows


def tile_assignments(vlm: VisionLanguageModel, crops: Sequence[np.ndarray], cfg: ReportConfig
                     ) -> dict[str, list[int]]:
    """Each token-budget row's tile per crop: by crop size, its random control and each fixed
    size (see the module doc); sizes the model does not take are left out, said once."""
    full = vlm.tiles.tile
    sizes = []
    for tile in cfg.tiles:
        try:
            sizes.append(vlm.tiles.check_tile(tile))
        except ValueError as err:
            logger.info("compress-report: no token-budget row for {} px: {}", tile, err)
    sizes = sorted(set(sizes) - {full})
    if not sizes:
        return {}
    ladder = [*sizes, full]
    by_size = [next(t for t in ladder if t >= max(c.shape[:2]) or t == full) for c in crops]
    dealt = np.random.default_rng(cfg.seed).permutation(by_size).tolist()
    return {"tile:by crop size": by_size, "tile:random": dealt,
            **{f"tile:fixed {t}": [t] * len(crops) for t in sizes}}


def _tile_rows(bench: Bench, crops: Sequence[np.ndarray], cfg: ReportConfig
               ) -> list[Measurement]:
    full_tile = bench.vlm.tiles.tile
    full = Plan.keep_all(bench.compressor.paths)
    rows = []
    for name, tiles in tile_assignments(bench.vlm, crops, cfg).items():
        margins, ms, weights, peak = bench.run_tiles(crops, tiles, cfg.repeats)
        dropped = 1 - float(np.mean([(t / full_tile) ** 2 for t in tiles]))
        counts = {str(t): tiles.count(t) for t in sorted(set(tiles))}
        rows.append(Measurement(name, "tile", round(dropped, 4), full, margins, ms, weights,
                                peak, {"tiles": counts}))
        logger.info("{}: {:.1f} ms/ROI, {:.0%} of the patches dropped", name, ms, dropped)
    return rows


def _results(vlm: VisionLanguageModel, compressor: Compressor, cfg: ReportConfig,
             baseline: list[tuple], rows: list[Measurement], ids: list[str],
             truth: dict[str, str] | None, profile_s: float) -> dict[str, Any]:
    reference = baseline[0][0]
    base_ms = statistics.fmean(b[1] for b in baseline)
    table = []
    for row in rows:
        agreement, dp = compare(row.margins, reference)
        table.append({
            "order": row.order, "operator": row.operator, "fraction": row.fraction,
            "plan_id": row.plan.id, "counts": row.plan.counts(),
            "latency_ms": round(row.latency_ms, 3), "speedup": round(base_ms / row.latency_ms, 4),
            "weight_bytes": row.weight_bytes,
            "weight_ratio": round(baseline[0][2] / row.weight_bytes, 4),
            "peak_memory_bytes": row.peak_memory_bytes,
            "agreement": round(agreement, 4), "mean_dp_yes": round(dp, 5),
            "accuracy": accuracy(row.margins, ids, truth), **row.extra,
        })
    return {
        "config": asdict(cfg), "model": vlm.info.name, "standin": vlm.info.standin,
        "device": _device_name(vlm.device), "dtype": str(vlm.dtype).replace("torch.", ""),
        "threads": torch.get_num_threads(), "n_rois": len(ids),
        "int8_backend": compressor.int8_backend, "int8_reason": compressor.int8_reason,
        "profile_seconds": round(profile_s, 3),
        "baseline": {"latency_ms": [round(b[1], 3) for b in baseline],
                     "latency_ms_mean": round(base_ms, 3),
                     "drift": round(baseline[1][1] / baseline[0][1] - 1, 4),
                     "weight_bytes": baseline[0][2], "peak_memory_bytes": baseline[0][3],
                     "accuracy": accuracy(reference, ids, truth),
                     "end_agrees_with_start": compare(baseline[1][0], reference)[0] == 1.0},
        "rows": table,
    }


def accuracy(margins: np.ndarray, ids: list[str], truth: dict[str, str] | None
             ) -> dict[str, Any] | None:
    if not truth:
        return None
    pairs = [("yes" if m > 0 else "no", truth[i]) for m, i in zip(margins, ids) if i in truth]
    if not pairs:
        return {"accuracy": None, "labelled": 0}
    return {"accuracy": round(sum(a == b for a, b in pairs) / len(pairs), 4),
            "labelled": len(pairs)}


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


