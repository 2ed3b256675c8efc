"""Benchmark: the VLM uncompressed vs the ``auto`` compression plan on the same ROIs, one run.

What runs is what the stream runs: the first ``--profile`` ROIs are profiled and the auto plan
is searched on them (eager, timed as overhead); then every ROI is answered with the full model
and with the plan, alternating passes so drift hits both alike, and the median pass is kept.
``--plans`` adds fixed plans (e.g. ``skip:0.5``) measured in the same run, to see what the
device rewards. Agreement is over all ROIs and over the ones the planner never saw.

CPU here (the offline stand-in, SmolVLM-256M shape, crops of the sample video):

    .venv/bin/python tools/bench_vlm.py --rois 24 --profile 8 --batch-size 8 --repeats 3

GPU (random-init SmolVLM-256M shape: nothing can be downloaded there; the image's python3 has
torch but transformers 5.17 and no loguru, so carry the wheels in .whl/):

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && \
    PYTHONPATH=/tmp/site:$PWD python3 tools/bench_vlm.py --model random-256m --source synthetic \
        --device cuda --rois 512 --profile 32 --batch-size 32 --repeats 5 --int8 int_mm \
        --task-impact task_skip --plans skip:0.25,skip:0.5,int8:1.0 --out $OUT/bench_gpu.json

``--tiles 384,256`` adds the vision token budget: each tile alone on every crop (fixed-size
controls) and ``auto+tile``, the smallest tile that keeps the answers on the profiled crops on top
of the auto plan (:func:`tile_search`, the planner's guard).

Add ``--compile`` for torch.compile (each plan compiles once, in the untimed warm-up). On CUDA
without it, every plan also runs as CUDA graphs, as a run on CUDA answers: the row ``graphs`` is
the full model's (``vlm.cuda_graphs``), ``<plan>@graphs`` each plan's own (its module at its
tile, :class:`~vidqa.vlm.graphs.PlanGraphs`), measured interleaved with the others.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from loguru import logger

from vidqa import assets
from vidqa.assets.smolvlm import SCALE_FACTOR, TEXT_256M, VISION_256M, build_random_smolvlm
from vidqa.config import PipelineConfig, RoiConfig, VlmConfig
from vidqa.experiments.common import peak_memory, peak_memory_reset
from vidqa.experiments.plan_search import ForwardEvaluator, auto_plan
from vidqa.pipeline import tracked
from vidqa.sources import open_source, source_path
from vidqa.vlm.compression.compiled import plan_module
from vidqa.vlm.compression.compressor import Compressor, compressor_for
from vidqa.vlm.compression.orders import (
    compare,
    importance_order,
    operator_orders,
    operator_plan,
)
from vidqa.vlm.compression.plan import Plan
from vidqa.vlm.graphs import CudaGraphs, buckets
from vidqa.vlm.loading import load_vlm
from vidqa.vlm.model import VisionLanguageModel, module_bytes, timed_margins
from vidqa.vlm.profiling.importance import Profile, profile_crops

QUESTION = "Is this person carrying a backpack?"


# --------------------------------------------------------------------------------------------
# Model and ROIs


def load_model(spec: str, device: str, dtype: str) -> VisionLanguageModel:
    """``random-256m``: a random-weight model of SmolVLM-256M's shape (nothing to download);
    anything else is resolved as ``vlm.model`` is."""
    if spec == "random-256m":
        path = build_random_smolvlm(Path(tempfile.mkdtemp(prefix="vidqa-bench-")) / spec,
                                    vision=VISION_256M, scale_factor=SCALE_FACTOR,
                                    text={**TEXT_256M, "vocab_size": 49152, "head_dim": 64,
                                          "tie_word_embeddings": True})
        info = assets.ModelInfo(requested=spec, resolved=str(path), note="random init, 256M shape")
        return VisionLanguageModel.load(info, device, dtype, local_files_only=True)
    return load_vlm(VlmConfig(model=spec, device=device, dtype=dtype))


def video_crops(count: int, max_frames: int = 400) -> list[np.ndarray]:
    """Person crops of the sample video as a run asks them: each new track, then each track
    every 10 frames."""
    cfg = PipelineConfig(roi=RoiConfig(reask_every=10))
    crops: list[np.ndarray] = []
    with open_source(cfg.source, source_path(cfg.source)) as source:
        for result in tracked(cfg, source, max_frames):
            crops += [crop.image for crop in result.crops]
            if len(crops) >= count:
                break
    return crops[:count]


def synthetic_crops(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (int(rng.integers(120, 300)), int(rng.integers(50, 120)), 3),
                         dtype=np.uint8) for _ in range(count)]


# --------------------------------------------------------------------------------------------
# Timing


def measure(vlm: VisionLanguageModel, compressor: Compressor, batches: dict[int | None, list],
            plans: dict[str, Plan], repeats: int, bodies: dict[str, Any] | None = None
            ) -> dict[str, dict[str, Any]]:
    """Median pass seconds, margins, weights and peak memory of every plan, interleaved, each
    on the batches of its tile; ``bodies``: what runs in place of the model for some of them
    (CUDA graphs: then the model itself stays whole)."""
    bodies = bodies or {}
    out: dict[str, dict[str, Any]] = {name: {"times": []} for name in plans}

    def applied(name: str, plan: Plan) -> Any:
        return compressor.using(Plan.keep_all(compressor.paths) if name in bodies else plan)

    for name, plan in plans.items():  # warm-up (and compile) each state once, untimed
        compressor.prepare(plan)
        with compressor.using(plan):
            out[name]["weight_bytes"] = module_bytes(vlm.model)
        with applied(name, plan):
            peak_memory_reset(vlm.device)
            timed_margins(vlm, batches[plan.tile][:1], bodies.get(name))
    for _ in range(repeats):
        for name, plan in plans.items():
            with applied(name, plan):
                peak_memory_reset(vlm.device)
                margins, seconds = timed_margins(vlm, batches[plan.tile], bodies.get(name))
                out[name]["times"].append(seconds)
                out[name]["margins"] = margins
                out[name]["peak_memory_bytes"] = peak_memory(vlm.device)
    return out


# --------------------------------------------------------------------------------------------
# Main


def main(model: str = "auto", device: str = "auto", dtype: str = "auto", count: int = 24,
         profile: int = 8, batch_size: int = 8, repeats: int = 3, source: str = "video",
         metric: str = "block_influence", compile: bool = False, int8: str = "auto",
         plans: tuple[str, ...] = (), target_agreement: float = 0.98, max_dp_yes: float = 0.05,
         task_impact: tuple[str, ...] = (), profile_json: Path | None = None,
         out: Path | None = None, tiles: tuple[int, ...] = ()) -> dict[str, Any]:
    vlm = load_model(model, device, dtype)
    crops = video_crops(count) if source == "video" else synthetic_crops(count)
    start = time.perf_counter()
    batches = {tile: [vlm.encode(crops[i:i + batch_size], QUESTION, tile=tile)
                      for i in range(0, len(crops), batch_size)] for tile in (None, *tiles)}
    encode_s = time.perf_counter() - start
    compressor = compressor_for(vlm.model, int8=int8)

    start = time.perf_counter()
    if profile_json is not None:  # a stored profile of the same first crops (a cache hit)
        prof = Profile.from_dict(json.loads(profile_json.read_text()))
        if len(prof.crop_ids) != profile:
            raise SystemExit(f"{profile_json} profiles {len(prof.crop_ids)} ROIs, not {profile}")
    else:
        task = tuple(dict.fromkeys(list(task_impact) + ([metric] if metric.startswith("task_")
                                                        else [])))
        prof = profile_crops(vlm, crops[:profile], QUESTION, list(range(profile)),
                            task_impact=task, batch_size=batch_size)
        if out is not None:
            out.with_suffix(".profile.json").write_text(json.dumps(prof.to_dict()))
    profile_s = time.perf_counter() - start
    order = importance_order(prof, metric)
    start = time.perf_counter()
    evaluate = ForwardEvaluator(vlm, compressor, vlm.encode(crops[:profile], QUESTION))
    search = auto_plan(evaluate, order, orders=operator_orders(prof, metric),
                       target_agreement=target_agreement,
                       max_dp_yes=max_dp_yes, int8=compressor.supports("int8"))
    tiled, tile_trials = tile_search(vlm, compressor, crops[:profile], search.plan, tiles,
                                     target_agreement, max_dp_yes, batch_size)
    plan_s = time.perf_counter() - start

    candidates = {"full": Plan.keep_all(compressor.paths), "auto": search.plan}
    if tiles:
        candidates["auto+tile"] = tiled
    for tile in tiles:  # fixed-size controls: each tile alone, every crop
        candidates[f"tile {tile}"] = candidates["full"].with_tile(tile, f"tile {tile}")
    for spec in plans:  # "skip:0.5", "int8:1.0", "int8+skip:0.5"
        operator, fraction = spec.split(":")
        candidates[spec] = operator_plan(order, operator, float(fraction))
    bodies = {}
    if compile:
        vlm.model.model.compile(dynamic=False)  # in place: module paths and swaps still work
    elif vlm.device.type == "cuda":
        start = time.perf_counter()
        bodies.update(plan_graphs(vlm, compressor, candidates, batch_size))
        candidates.update({name: candidates[name.removesuffix("@graphs") if name != "graphs"
                                            else "full"] for name in bodies})
        logger.info("CUDA graphs of {} plans captured in {:.1f} s", len(bodies),
                    time.perf_counter() - start)
    results = measure(vlm, compressor, batches, candidates, repeats, bodies)
    summary = _summary(vlm, results, candidates, search, len(crops), profile,
                       {"encode_s": encode_s, "profile_s": profile_s, "plan_s": plan_s},
                       {"model": model, "source": source, "batch_size": batch_size,
                        "compile": compile, "metric": metric, "repeats": repeats,
                        "tiles": list(tiles)})
    summary["tile_search"] = tile_trials
    _print(summary)
    if out is not None:
        out.write_text(json.dumps(summary, indent=1))
    return summary


def tile_search(vlm: VisionLanguageModel, compressor: Compressor, crops: list[np.ndarray],
                plan: Plan, tiles: tuple[int, ...], target_agreement: float, max_dp_yes: float,
                batch_size: int) -> tuple[Plan, list[dict[str, Any]]]:
    """The vision token budget on top of the auto plan, searched on the profiled crops as the
    planner's guard judges it: the smallest tile that keeps ``target_agreement`` of the full
    model's answers and moves p_yes by at most ``max_dp_yes``, with the auto plan's layers if
    they still pass, else alone; the auto plan itself when no tile passes."""
    def margins(candidate: Plan) -> np.ndarray:
        with compressor.using(candidate):
            return np.concatenate([timed_margins(vlm, [vlm.encode(
                crops[i:i + batch_size], QUESTION, tile=candidate.tile)])[0]
                for i in range(0, len(crops), batch_size)])

    full = margins(Plan.keep_all(compressor.paths))
    trials = []
    for tile in sorted(tiles):
        for base in dict.fromkeys((plan, Plan.keep_all(compressor.paths))):
            candidate = base.with_tile(tile, f"{base.note or 'full'} at tile {tile}")
            agreement, dp = compare(margins(candidate), full)
            ok = agreement >= target_agreement and dp <= max_dp_yes
            trials.append({"plan": candidate.summary(), "agreement": round(agreement, 4),
                           "mean_dp_yes": round(dp, 5), "accepted": ok})
            if ok:
                return candidate, trials
    return plan, trials


def plan_graphs(vlm: VisionLanguageModel, compressor: Compressor, candidates: dict[str, Plan],
                batch_size: int) -> dict[str, CudaGraphs]:
    """Every candidate as CUDA graphs, as a run on CUDA answers: the full model's ("graphs")
    and each plan's module at its tile ("<name>@graphs")."""
    prompt = vlm.prompt(QUESTION)
    bodies = {"graphs": CudaGraphs(vlm, buckets(batch_size)).warm([prompt])}
    for name, plan in candidates.items():
        if not plan.compressed:
            continue
        plan = compressor.effective(plan)
        compressor.prepare(plan)
        inner = plan_module(vlm.model, "model", compressor, plan)
        bodies[f"{name}@graphs"] = CudaGraphs(vlm, buckets(batch_size), inner).warm(
            [prompt], plan.tile)
    return bodies


def _summary(vlm: VisionLanguageModel, results: dict, candidates: dict[str, Plan], search: Any,
             count: int, profile: int, overhead: dict[str, float], settings: dict
             ) -> dict[str, Any]:
    full = results["full"]
    full_s = statistics.median(full["times"])
    graphs_s = statistics.median(results["graphs"]["times"]) if "graphs" in results else None
    rows = {}
    for name, res in results.items():
        seconds = statistics.median(res["times"])
        agreement, dp = compare(res["margins"], full["margins"])
        held_out = compare(res["margins"][profile:], full["margins"][profile:])[0] \
            if count > profile else None
        rows[name] = {"plan": candidates[name].summary(), "roi_per_s": round(count / seconds, 3),
                      "speedup": round(full_s / seconds, 3),
                      "vs_graphs": None if graphs_s is None else round(graphs_s / seconds, 3),
                      "agreement": round(agreement, 4),
                      "held_out_agreement": None if held_out is None else round(held_out, 4),
                      "mean_dp_yes": round(dp, 5), "weight_bytes": res["weight_bytes"],
                      "weight_ratio": round(full["weight_bytes"] / res["weight_bytes"], 3),
                      "peak_memory_bytes": res["peak_memory_bytes"],
                      "times_s": [round(t, 4) for t in res["times"]]}
    return {"model": vlm.info.name, "device": _device(vlm), "dtype": str(vlm.dtype),
            "crops": count, "profiled": profile, "settings": settings,
            "overhead_s": {k: round(v, 2) for k, v in overhead.items()},
            "search": search.to_dict(), "results": rows}


def _device(vlm: VisionLanguageModel) -> str:
    if vlm.device.type == "cuda":
        return torch.cuda.get_device_name(vlm.device)
    return f"cpu, {torch.get_num_threads()} threads"


def _print(summary: dict[str, Any]) -> None:
    print(f"model {summary['model']} on {summary['device']} ({summary['dtype']}), "
          f"{summary['crops']} ROIs, {summary['profiled']} profiled, {summary['settings']}")
    print(f"overhead: {summary['overhead_s']}   auto: {summary['search']['reason']}")
    print("auto search on the profiled ROIs (baseline "
          f"{summary['search']['baseline_seconds']:.2f} s):")
    for trial in summary["search"]["trials"]:
        print(f"  {trial['label']:<48} agree {trial['agreement']:>6.1%}  |dp| "
              f"{trial['mean_dp_yes']:.3f}  saving {trial['saving']:>6.1%}  "
              f"{'accepted' if trial['accepted'] else 'rejected'}")
    print(f"{'plan':<24}{'ROI/s':>9}{'ratio':>8}{'/graphs':>8}{'agree':>8}{'held-out':>10}"
          f"{'|dp|':>8}"
          f"{'weights MiB':>13}{'peak MiB':>10}  counts")
    for name, row in summary["results"].items():
        held = row["held_out_agreement"]
        vs = row["vs_graphs"]
        print(f"{name:<24}{row['roi_per_s']:>9.2f}{row['speedup']:>7.2f}x"
              f"{'' if vs is None else f'{vs:.2f}x':>8}{row['agreement']:>8.1%}"
              f"{'' if held is None else f'{held:.1%}':>10}{row['mean_dp_yes']:>8.3f}"
              f"{row['weight_bytes'] / 2**20:>13.1f}"
              f"{(row['peak_memory_bytes'] or 0) / 2**20:>10.0f}  {row['plan']['towers']}"
              f"{'' if row['plan']['tile'] is None else ', tile ' + str(row['plan']['tile'])}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="auto", help="auto (hub or offline stand-in), "
                        "random-256m, a local directory or a hub id")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto", help="auto = bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--rois", type=int, default=24)
    parser.add_argument("--profile", type=int, default=8, help="ROIs profiled and planned on")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--source", choices=["video", "synthetic"], default="video")
    parser.add_argument("--metric", default="block_influence")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--int8", default="auto", choices=["auto", "ao_dynamic", "int_mm", "none"])
    parser.add_argument("--plans", default="", help="extra fixed plans, e.g. skip:0.5,int8:1.0")
    parser.add_argument("--target-agreement", type=float, default=0.98)
    parser.add_argument("--max-dp-yes", type=float, default=0.05)
    parser.add_argument("--task-impact", default="", help="also profile task_skip and/or "
                        "task_int8 (one pass per layer): auto then orders each operator by its "
                        "own impact")
    parser.add_argument("--profile-json", type=Path, help="reuse a stored profile of the same "
                        "first --profile crops (written next to --out as *.profile.json)")
    parser.add_argument("--out", type=Path, help="write the summary JSON here")
    parser.add_argument("--tiles", default="", help="smaller tiles in px, e.g. 384,256: each "
                        "alone (a fixed-size control) and the smallest that keeps the answers "
                        "on top of the auto plan (row auto+tile)")
    args = parser.parse_args()
    logger.remove()
    logger.add(sys.stderr, level="INFO", format="{time:HH:mm:ss} {message}")
    main(args.model, args.device, args.dtype, args.rois, args.profile, args.batch_size,
         args.repeats, args.source, args.metric, args.compile, args.int8,
         tuple(p for p in args.plans.split(",") if p), args.target_agreement, args.max_dp_yes,
         tuple(t for t in args.task_impact.split(",") if t), args.profile_json, args.out,
         tuple(int(t) for t in args.tiles.split(",") if t))
