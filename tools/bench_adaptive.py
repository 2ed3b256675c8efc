"""Benchmark: full model, static plan and query-adaptive compression in ONE process, on the
sample clip and on a 5-minute stream (the clip looped), cold and warm plan cache.

Every mode answers the same ROIs, in arrival order, in batches of ``--batch-size`` (as the
VLM service gathers them), through :class:`~vidqa.vlm.stage.BatchAnswerer` — what a run executes.
Reported per mode: VLM seconds (wall time of the stage), planning seconds, the paired ratio
(audits and confirmations, same crops and batch both ways), the net ratio the stage claims
(full-equivalent / spent), the ratio to the full mode's own run, and agreement with the full
mode's answers (all ROIs, and the held-out ones after the first K tracks). Then vision-feature
reuse with 1, 3 and 5 questions.

The token budget (``--tiles 384,256``, the clip): ``tile N fixed`` answers every crop at an N px
tile (a fixed-size control: the full model's layers, no planner, no audits), and ``adaptive,
layers only`` plans without tile candidates (``tile_scales: []``) beside ``adaptive cold``, which
has them: what the tile axis adds to the planner, on the same crops in the same process.

CPU (the offline stand-in; the crops come from the tracker once and are kept in a file):

    .venv/bin/python tools/bench_adaptive.py --crops /tmp/clip_rois.pkl --out bench.json

GPU (no ultralytics there: synthetic crops or a crops file; random-init 256M shape):

    PYTHONPATH=/tmp/site:$PWD python3 tools/bench_adaptive.py --model random-256m \
        --device cuda --source synthetic --batch-size 32 --compile --out $OUT/bench.json

The 5-minute stream replays the clip's crops with new track ids and shifted times per loop.
The full model's time on it is the clip's full time times the loops (the same crops: measured
once, labelled ``extrapolated``); ``--full-stream`` measures it instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pickle
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from loguru import logger

from vidqa.config import AdaptiveConfig, QuestionConfig, VlmConfig
from vidqa.messages import Crop
from vidqa.vlm.batch import BatchAnswerer
from vidqa.vlm.compression.compressor import compressor_for
from vidqa.vlm.compression.plan import Plan
from vidqa.vlm.compression.plan_library import save_library

QUESTIONS = ("Is this person carrying a backpack?", "Is this person wearing a hat?",
             "Is this person riding a bicycle?", "Is this person walking?",
             "Is this person holding a phone?")


# --------------------------------------------------------------------------------------------
# ROIs


def clip_crops(source: str, crops_file: Path | None, count: int) -> list[Crop]:
    """The ROIs a run of the sample clip asks (one per new track), a crops file, or
    synthetic crops (``count`` tracks at 1 per second)."""
    if crops_file is not None and crops_file.is_file():
        return pickle.loads(crops_file.read_bytes())
    if source == "synthetic":
        rng = np.random.default_rng(0)
        return [Crop(i, i * 10, float(i), (0, 0, 1, 1), (0, 0, 1, 1),
                    rng.integers(0, 256, (int(rng.integers(120, 300)),
                                          int(rng.integers(50, 120)), 3), dtype=np.uint8), "new")
                for i in range(count)]
    from vidqa.config import PipelineConfig
    from vidqa.pipeline import tracked
    from vidqa.sources import open_source, source_path

    cfg = PipelineConfig()
    tracked_crops: list[Crop] = []
    with open_source(cfg.source, source_path(cfg.source)) as src:
        for result in tracked(cfg, src):
            tracked_crops += list(result.crops)
    if crops_file is not None:
        crops_file.write_bytes(pickle.dumps(tracked_crops))
    return tracked_crops


def looped(crops: list[Crop], seconds: float) -> list[Crop]:
    """The clip replayed until ``seconds`` of stream: new track ids and times per loop."""
    span = max(r.time_s for r in crops) + 1.0
    loops = int(np.ceil(seconds / span)) if seconds > 0 else 0
    out = []
    for loop in range(loops):
        out += [dataclasses.replace(r, track_id=r.track_id + 100_000 * loop,
                                    time_s=r.time_s + loop * span) for r in crops]
    return out


# --------------------------------------------------------------------------------------------
# One mode on one stream


def run_mode(vlm: Any, crops: list[Crop], adaptive: AdaptiveConfig, batch_size: int,
             questions: tuple[str, ...] = QUESTIONS[:1], share: bool = True
             ) -> dict[str, Any]:
    cfg = VlmConfig(questions=tuple(QuestionConfig(q) for q in questions),
                    batch_size=batch_size, adaptive=adaptive)
    stage = BatchAnswerer(vlm, cfg, share_vision=share)
    stage.expect(crops=len(crops))
    answers: list[list[Any]] = []
    start = time.perf_counter()
    for i in range(0, len(crops), batch_size):
        answers += stage.answer(crops[i:i + batch_size])
    seconds = time.perf_counter() - start
    summary = stage.summary()
    logger.info("bench: {} ROIs x {} question(s), adaptive {} mode {}: {:.1f} s", len(crops),
                len(questions), adaptive.enabled, adaptive.mode, seconds)
    return {"seconds": seconds, "answers": [[a.answer for a in per] for per in answers],
            "summary": summary, "load_1m": os.getloadavg()[0]}


def row(name: str, result: dict[str, Any], full: dict[str, Any], held_from: int,
        full_seconds: float) -> dict[str, Any]:
    question = result["summary"]["questions"][0]
    acc = question.get("accounting", {})
    mine = [a[0] for a in result["answers"]]
    ref = [a[0] for a in full["answers"]][:len(mine)]
    ref = (ref * (len(mine) // max(len(ref), 1) + 1))[:len(mine)]  # looped stream
    agree = float(np.mean([a == b for a, b in zip(mine, ref, strict=True)]))
    held = [a == b for a, b in zip(mine[held_from:], ref[held_from:], strict=True)]
    return {"mode": name, "crops": len(mine), "vlm_s": round(result["seconds"], 2),
            "planning_s": acc.get("planning_s"), "paired_ratio": acc.get("paired_ratio"),
            "net_ratio_claimed": acc.get("net_ratio"),
            "vs_full_run": round(full_seconds / result["seconds"], 3),
            "overhead_share": round((acc.get("planning_s") or 0) / result["seconds"], 4),
            "agreement": round(agree, 4),
            "held_out_agreement": round(float(np.mean(held)), 4) if held else None,
            "audit_agreement": question.get("agreement", {}).get("audit"),
            "plan": question.get("plan", {}).get("note"), "phase": question.get("phase"),
            "plan_source": question.get("plan_source"), "reason": question.get("reason"),
            "cache_saved_s": acc.get("cache_saved_s"), "load_1m": result["load_1m"]}


# --------------------------------------------------------------------------------------------
# Main


def main(model: str = "auto", device: str = "auto", source: str = "video",
         crops: Path | None = None, batch_size: int = 8, stream_s: float = 300.0,
         full_stream: bool = False, compile: bool = False, reuse_crops: int = 8,
         count: int = 60, out: Path | None = None, tiles: tuple[int, ...] = (384, 256)
         ) -> dict[str, Any]:
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_vlm import load_model  # the stand-in, random-256m or a model, as bench_vlm

    vlm = load_model(model, device, "auto")
    if vlm.device.type == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)  # importing ultralytics leaves it at 1
    clip = clip_crops(source, crops, count)
    stream = looped(clip, stream_s)
    load_before = os.getloadavg()
    warmup = None
    if compile:
        # Each plan's graph compiles at its first call. One untimed pass of every mode first
        # (graphs are kept per model), so no timed mode below pays for compiling: the timed
        # pass's own counters show whether anything still compiled while timing.
        counters, start = _compile_counters(compile), time.perf_counter()
        measure(vlm, clip, stream, batch_size, compile, full_stream, tiles)
        warmup = {"seconds": round(time.perf_counter() - start, 1),
                  "counters": _diff(counters, _compile_counters(compile))}
    counters = _compile_counters(compile)
    tables = measure(vlm, clip, stream, batch_size, compile, full_stream, tiles)
    tables["vision_reuse"] = vision_reuse(vlm, clip[:reuse_crops], batch_size)
    summary = {"model": vlm.info.name, "device": str(vlm.device), "batch_size": batch_size,
               "clip_rois": len(clip), "stream_rois": len(stream), "tiles": list(tiles),
               "loops": len(stream) // len(clip), "compile": compile,
               "compile_warmup": warmup,
               "compile_counters_timed": _diff(counters, _compile_counters(compile)),
               "load_1_5_15": {"before": load_before, "after": os.getloadavg()},
               "tables": tables}
    _print(summary)
    if out is not None:
        out.write_text(json.dumps(summary, indent=1))
    return summary


def measure(vlm: Any, clip: list[Crop], stream: list[Crop], batch_size: int, compile: bool,
            full_stream: bool, tiles: tuple[int, ...] = ()) -> dict[str, list[dict[str, Any]]]:
    """Every mode on the clip and, if there is one, the stream, with fresh plan caches; the
    token-budget modes (``tiles``) on the clip."""
    base = AdaptiveConfig(cache_dir=tempfile.mkdtemp(prefix="vidqa-plans-"), compile=compile)
    cold_cache = dataclasses.replace(base, cache_dir=tempfile.mkdtemp(prefix="vidqa-cold-"))
    modes = {"full": dataclasses.replace(base, enabled=False),
             "static": dataclasses.replace(base, mode="static"),
             "adaptive cold": cold_cache, "adaptive warm": base}
    full_clip = run_mode(vlm, clip, modes["full"], batch_size)
    held = _held_from(clip, base.profile_tracks)
    # The 5-minute stream's cold run fills the cache the warm runs use; without a stream
    # (--stream-s 0) the clip's own cold run with a fresh cache does.
    results_stream = {"adaptive cold": run_mode(vlm, stream, base, batch_size)} if stream \
        else {}
    results_clip = {"full": full_clip,
                    "static": run_mode(vlm, clip, modes["static"], batch_size),
                    "adaptive cold": run_mode(vlm, clip, cold_cache if stream else base,
                                              batch_size),
                    "adaptive warm": run_mode(vlm, clip, base, batch_size)}
    results_clip |= {name: run_mode(vlm, clip, mode, batch_size)
                     for name, mode in token_budget_modes(vlm, base, tiles).items()}
    tables = {"clip": [row(k, r, full_clip, held, full_clip["seconds"])
                       for k, r in results_clip.items()], "stream": []}
    if stream:
        tables["stream"] = stream_table(vlm, clip, stream, full_clip, results_stream, modes,
                                        batch_size, full_stream, held)
    return tables


def stream_table(vlm: Any, clip: list[Crop], stream: list[Crop], full_clip: dict[str, Any],
                 results: dict[str, Any], modes: dict[str, AdaptiveConfig], batch_size: int,
                 measure_full: bool, held: int) -> list[dict[str, Any]]:
    loops = len(stream) // len(clip)
    full_run = run_mode(vlm, stream, modes["full"], batch_size) if measure_full else None
    full_s = full_run["seconds"] if full_run else loops * full_clip["seconds"]
    results["static"] = run_mode(vlm, stream, modes["static"], batch_size)
    results["adaptive warm"] = run_mode(vlm, stream, modes["adaptive warm"], batch_size)
    table = [{"mode": "full", "crops": len(stream), "vlm_s": round(full_s, 2),
              "load_1m": full_run["load_1m"] if full_run else None,
              "note": "measured" if full_run else f"clip full x {loops} loops (same crops), "
                      "extrapolated"}]
    return table + [row(k, r, full_clip, held, full_s) for k, r in results.items()]


def token_budget_modes(vlm: Any, base: AdaptiveConfig, tiles: tuple[int, ...]
                       ) -> dict[str, AdaptiveConfig]:
    """``adaptive, layers only`` (no tile candidates, a cold cache of its own) and, per tile,
    ``tile N fixed``: a plan file holding the full model at that tile, no audits."""
    if not tiles:
        return {}
    paths = compressor_for(vlm.model).paths
    folder = Path(tempfile.mkdtemp(prefix="vidqa-tiles-"))
    modes = {"adaptive, layers only": dataclasses.replace(
        base, tile_scales=(), cache_dir=tempfile.mkdtemp(prefix="vidqa-layers-"))}
    for tile in tiles:
        plan = Plan.keep_all(paths).with_tile(vlm.tiles.check_tile(tile), f"tile {tile}")
        library = save_library(folder / f"tile-{tile}.json", vlm.info.name, paths,
                               [{"question": QUESTIONS[0], "plan": plan.to_dict()}])
        modes[f"tile {tile} fixed"] = dataclasses.replace(base, plan=str(library),
                                                          audit_every=0)
    return modes


def vision_reuse(vlm: Any, crops: list[Crop], batch_size: int) -> list[dict[str, Any]]:
    """1, 3 and 5 questions about the same crops: independent passes vs one vision pass."""
    off = AdaptiveConfig(enabled=False)
    rows = []
    for n in (1, 3, 5):
        alone = run_mode(vlm, crops, off, batch_size, QUESTIONS[:n], share=False)
        shared = run_mode(vlm, crops, off, batch_size, QUESTIONS[:n], share=True)
        rows.append({"questions": n, "independent_s": round(alone["seconds"], 2),
                     "shared_s": round(shared["seconds"], 2),
                     "ratio": round(alone["seconds"] / shared["seconds"], 3),
                     "identical_answers": alone["answers"] == shared["answers"]})
    return rows


def _held_from(crops: list[Crop], k: int) -> int:
    """Index of the first ROI after the first ``k`` distinct tracks."""
    seen: set[Any] = set()
    for i, crop in enumerate(crops):
        seen.add(crop.key)
        if len(seen) > k:
            return i
    return len(crops)


def _compile_counters(enabled: bool) -> dict[str, int]:
    if not enabled:
        return {}
    from vidqa.vlm.compression.compiled import compile_counters

    return compile_counters()


def _diff(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after}


def _print(summary: dict[str, Any]) -> None:
    print(f"model {summary['model']} on {summary['device']}, batch {summary['batch_size']}, "
          f"clip {summary['clip_rois']} ROIs, stream {summary['stream_rois']} ROIs "
          f"({summary['loops']} loops), load (1, 5, 15 min) {summary['load_1_5_15']}")
    if summary["compile"]:
        print(f"compile: untimed warm-up pass of every mode {summary['compile_warmup']}; "
              f"while timing {summary['compile_counters_timed']}")
    for name in ("clip", "stream"):
        print(f"\n{name}:")
        print(f"{'mode':<22}{'ROIs':>6}{'VLM s':>9}{'plan s':>8}{'paired':>8}{'claimed':>9}"
              f"{'vs full':>9}{'agree':>8}{'held-out':>9}{'audits':>8}{'load':>6}  plan / reason")
        for r in summary["tables"][name]:
            if "note" in r:
                print(f"{r['mode']:<22}{r['crops']:>6}{r['vlm_s']:>9.1f}  ({r['note']})")
                continue
            print(f"{r['mode']:<22}{r['crops']:>6}{r['vlm_s']:>9.1f}{_f(r['planning_s']):>8}"
                  f"{_f(r['paired_ratio']):>8}{_f(r['net_ratio_claimed']):>9}"
                  f"{r['vs_full_run']:>8.2f}x{r['agreement']:>8.1%}"
                  f"{_f(r['held_out_agreement']):>9}{_f(r['audit_agreement']):>8}"
                  f"{r['load_1m']:>6.1f}  {r['plan']} / {r['phase']}: {r['reason']}")
    print("\nvision reuse:")
    for r in summary["tables"]["vision_reuse"]:
        print(f"  {r['questions']} question(s): independent {r['independent_s']:.1f} s, "
              f"shared {r['shared_s']:.1f} s, {r['ratio']:.2f}x, identical answers "
              f"{r['identical_answers']}")


def _f(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}" if isinstance(value, float) else str(value)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="auto", help="auto, random-256m, a folder or hub id")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--source", choices=["video", "synthetic"], default="video")
    parser.add_argument("--crops", type=Path, help="a crops file (read if present, else "
                        "written after tracking the sample clip)")
    parser.add_argument("--count", type=int, default=60, help="synthetic: ROIs in the clip")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--stream-s", type=float, default=300.0)
    parser.add_argument("--full-stream", action="store_true",
                        help="measure the full model on the whole stream too")
    parser.add_argument("--compile", action="store_true", help="one compiled graph per plan")
    parser.add_argument("--reuse-rois", type=int, default=8)
    parser.add_argument("--tiles", default="384,256", help="token-budget rows: tile sizes in "
                        "px ('' = none)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    logger.remove()
    logger.add(sys.stderr, level="INFO", format="{time:HH:mm:ss} {message}")
    main(args.model, args.device, args.source, args.crops, args.batch_size, args.stream_s,
         args.full_stream, args.compile, args.reuse_rois, args.count, args.out,
         tuple(int(t) for t in args.tiles.split(",") if t))
