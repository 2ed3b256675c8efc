"""The seed's Experiment 1 as a tool: is per-layer importance stable across people?

:func:`run_validation` takes person crops of DISTINCT tracks from a video with the pipeline's
own tracker and cropper (the first crop the ROI policy emits for each new track), asks every
question about them with the full model, measures per-layer importance
(:mod:`vidqa.vlm.profiling.importance`), computes the stability statistics with their null baselines
(:mod:`vidqa.experiments.stats`) and writes two files into ``out_dir``:

``validation_results.json`` — every raw number. Top-level fields:

- ``schema``: "vidqa.validation/1".
- ``created``: UTC time of the run, ISO 8601.
- ``model``: ``id`` (hub id or directory), ``name``, ``requested``, ``standin`` (True = the
  offline stand-in: random vision encoder, answers carry no visual meaning), ``note``,
  ``device``, ``dtype``.
- ``warning``: the stand-in warning, or null.
- ``config``: the arguments of the run (source, questions, n_rois, metrics, task_impact,
  batch_size, seed, primary_metric, detector, device, dtype) and the ``tracker`` and ``roi``
  settings used.
- ``source``: what the source reported (frames read, fps, size, ...).
- ``rois``: one entry per ROI: ``track_id``, ``frame_index``, ``time_s``, ``bbox``,
  ``crop_box``, ``size`` ([w, h] of the crop).
- ``layers``: ``path``, ``tower``, ``index`` per layer, in the column order of every matrix.
- ``questions``: one entry per question: ``question``; ``answers`` (per ROI: ``track_id``,
  ``answer``, ``p_yes``, ``margin`` of the full model); ``profile`` — ``Profile.to_dict()``:
  ``scores`` (metric -> n_rois x n_layers raw values, higher = more important), ``deltas``
  (signed Δ margin / Δ p_yes of the task metrics), ``stats`` (per metric: pearson, spearman,
  jaccard_bottom_25, jaccard_bottom_50, each with value / null_mean / null_std / p_null, the
  seed's ``verdict``, and ``by_tower``), ``seconds`` and ``passes`` (cost per metric group),
  ``skipped`` (metrics not measured, and why).
- ``cross_question``: per metric, within-question vs across-question similarity
  (:func:`vidqa.experiments.stats.cross_question`); null with a single question.
- ``decision``: ``table`` (the seed's table, verbatim), ``primary_metric``, ``pearson`` (mean
  over questions of its mean pairwise Pearson), ``verdict``, and ``verdicts`` (metric ->
  question -> verdict).
- ``timings``: seconds for ``load_model``, ``extract_rois``, ``profile`` (per question),
  ``plot`` and ``total``.
- ``outputs``: paths of the JSON and the PNG.

``layer_importance.png`` — per metric: the ROI x layer heatmap (each ROI's vector scaled to sum
1, the normalisation the ranking uses) and the mean with its spread (± one standard deviation
over ROIs) per layer, one line per question, the vision/text boundary marked.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger

from vidqa.assets import STANDIN_WARNING
from vidqa.clock import timed
from vidqa.config import PipelineConfig, SourceConfig
from vidqa.errors import ConfigError, SourceError
from vidqa.experiments.common import prepare_out_dir
from vidqa.experiments.plots import plot_importance
from vidqa.experiments.stats import DECISION_TABLE, cross_question, summarize, verdict
from vidqa.messages import Crop
from vidqa.pipeline import collect_crops
from vidqa.roi import distinct_tracks
from vidqa.storage import write_json
from vidqa.vlm.loading import load_vlm
from vidqa.vlm.model import VisionLanguageModel
from vidqa.vlm.profiling.importance import TASK_METRICS, TRACE_METRICS, Profile, profile_crops

SCHEMA = "vidqa.validation/2"
RESULTS_NAME = "validation_results.json"
PLOT_NAME = "layer_importance.png"

# Documented top-level fields and the type of each (see the module docstring).
RESULT_FIELDS: dict[str, type | tuple[type, ...]] = {
    "schema": str, "created": str, "model": dict, "warning": (str, type(None)), "config": dict,
    "source": dict, "rois": list, "layers": list, "questions": list,
    "cross_question": (dict, type(None)), "decision": dict, "timings": dict, "outputs": dict,
}
MODEL_FIELDS = ("id", "name", "requested", "standin", "note", "device", "dtype")
PROFILE_FIELDS = ("scores", "deltas", "stats", "seconds", "passes", "skipped", "roi_ids",
                  "margins", "p_yes", "layers")
STAT_FIELDS = ("pearson", "spearman", "jaccard_bottom_25", "jaccard_bottom_50")
DECISION_FIELDS = ("table", "primary_metric", "pearson", "verdict", "verdicts")


def run_validation(source: Path | str | None, questions: Sequence[str], out_dir: Path,
                   n_crops: int = 8, model: str = "auto",
                   metrics: Sequence[str] = TRACE_METRICS,
                   task_impact: bool | Sequence[str] = True,
                   device: str = "auto", dtype: str = "auto", detector: str = "auto",
                   seed: int = 0, batch_size: int = 8, primary_metric: str = "block_influence",
                   max_frames: int = 0, config: PipelineConfig | None = None,
                   crops: Iterable[Crop] | None = None,
                   vlm: VisionLanguageModel | None = None) -> dict[str, Any]:
    """Run Experiment 1 and write ``validation_results.json`` and ``layer_importance.png``.

    ``source``: video file or MOT sequence folder (None or "auto" = the sample video).
    ``config``: the pipeline config whose ``tracker`` and ``roi`` sections, and
    ``vlm.image_splitting`` / ``vlm.revision``, are used (default: built-in defaults);
    ``detector`` replaces ``tracker.weights`` unless "auto".
    ``task_impact``: True = task_skip and task_int8, False = none, or a list of them.
    ``max_frames``: stop reading after this many frames (0 = until ``n_rois`` tracks are found).
    ``rois`` / ``vlm``: inject crops or a loaded model instead (tests, notebooks).
    Returns the results (the JSON's content); :func:`format_summary` makes the terminal text.
    """
    task = _check_arguments(questions, n_crops, metrics, primary_metric, task_impact)
    started = time.perf_counter()
    out_dir = prepare_out_dir(Path(out_dir))
    cfg = config or PipelineConfig()
    if detector != "auto":
        cfg = dataclasses.replace(cfg, tracker=dataclasses.replace(cfg.tracker, weights=detector))
    timings: dict[str, Any] = {}
    with timed(timings, "extract_rois"):
        crops, source_label, source_stats = _crops(source, crops, n_crops, cfg, max_frames)
    with timed(timings, "load_model"):
        vlm = vlm or _load_vlm(model, device, dtype, cfg)
    profiles = _profile_all(vlm, crops, questions, metrics, task, batch_size, timings)
    settings = {"source": source_label, "questions": list(questions), "n_rois": n_crops,
                "metrics": list(metrics), "task_impact": list(task), "batch_size": batch_size,
                "image_splitting": cfg.vlm.image_splitting, "seed": seed,
                "primary_metric": primary_metric, "detector": detector, "device": device,
                "dtype": dtype, "max_frames": max_frames,
                "tracker": dataclasses.asdict(cfg.tracker), "roi": dataclasses.asdict(cfg.roi)}
    results = _results(vlm, crops, profiles, settings, source_stats, primary_metric, seed)
    with timed(timings, "plot"):
        plot_importance(profiles, out_dir / PLOT_NAME, title=_plot_title(vlm, len(crops)))
    timings["total"] = time.perf_counter() - started
    results["timings"] = _rounded(timings)
    results["outputs"] = {"json": str(out_dir / RESULTS_NAME), "png": str(out_dir / PLOT_NAME)}
    write_json(out_dir / RESULTS_NAME, results)
    logger.info("validation written to {}", out_dir)
    return results


def _check_arguments(questions: Sequence[str], n_crops: int, metrics: Sequence[str],
                     primary_metric: str, task_impact: bool | Sequence[str]) -> tuple[str, ...]:
    """The task metrics to measure; a ConfigError for anything that would fail later."""
    if not questions or not all(q.strip() for q in questions):
        raise ConfigError("vidqa validate needs at least one non-empty question (--question)")
    if n_crops < 1:
        raise ConfigError(f"n_rois = {n_crops}: expected at least 1 (2 or more for statistics)")
    task = TASK_METRICS if task_impact is True else () if task_impact is False \
        else tuple(task_impact)
    unknown = [m for m in metrics if m not in TRACE_METRICS] + \
        [t for t in task if t not in TASK_METRICS]
    if unknown:
        raise ConfigError(f"unknown metric(s) {', '.join(unknown)}: choose from "
                          f"{', '.join(TRACE_METRICS + TASK_METRICS)}")
    if primary_metric not in [*metrics, *task]:
        raise ConfigError(f"primary metric {primary_metric!r} is not measured: choose one of "
                          f"{', '.join([*metrics, *task])}")
    return task


def _crops(source: Path | str | None, crops: Iterable[Crop] | None, n_crops: int,
          cfg: PipelineConfig, max_frames: int) -> tuple[list[Crop], str, dict[str, Any]]:
    """(ROIs of distinct tracks, a label of where they came from, the source's stats)."""
    if crops is not None:
        return distinct_tracks(crops, n_crops), str(source or "injected ROIs"), {}
    cfg = dataclasses.replace(cfg, source=_source_config(source, cfg.source))
    chosen, stats = collect_crops(cfg, n_crops, max_frames)
    return chosen, cfg.source.path, stats


def _source_config(source: Path | str | None, base: SourceConfig) -> SourceConfig:
    """A file or MOT source for ``source`` (None or "auto" = the sample video)."""
    if source is None or str(source) == "auto":
        return dataclasses.replace(base, kind="file", path="auto")
    path = Path(source).expanduser()
    if not path.exists():
        raise SourceError(f"source {path} not found: give a video file or a MOT sequence "
                          f"folder, or 'auto' for the sample video")
    return dataclasses.replace(base, kind="mot" if path.is_dir() else "file", path=str(path))


def _load_vlm(model: str, device: str, dtype: str, cfg: PipelineConfig) -> VisionLanguageModel:
    """The VLM as the pipeline loads it (image splitting and revision from ``cfg.vlm``)."""
    return load_vlm(dataclasses.replace(cfg.vlm, model=model, device=device, dtype=dtype))


# --------------------------------------------------------------------------------------------
# Profiling and statistics


def _profile_all(vlm: VisionLanguageModel, crops: list[Crop], questions: Sequence[str],
                 metrics: Sequence[str], task: Sequence[str], batch_size: int,
                 timings: dict[str, Any]) -> list[Profile]:
    images = [crop.image for crop in crops]
    track_ids = [crop.track_id for crop in crops]
    profiles, timings["profile"] = [], {}
    for question in questions:
        with timed(timings["profile"], question):
            profiles.append(profile_crops(vlm, images, question, track_ids, metrics=metrics,
                                         task_impact=task, batch_size=batch_size))
    return profiles


def stability_stats(profile: Profile, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Per metric: the stability statistics of the profile's raw scores, with null baselines."""
    towers = [layer.tower for layer in profile.layers]
    return {metric: summarize(scores, towers, seed=seed)
            for metric, scores in profile.scores.items()}


def decide(profiles: Sequence[Profile], stats: Sequence[dict[str, Any]],
           primary_metric: str) -> dict[str, Any]:
    """The seed's verdict on ``primary_metric`` (mean Pearson over questions), and every
    metric's verdict per question. ``stats[i]`` is :func:`stability_stats` of ``profiles[i]``."""
    verdicts = {metric: {p.question: st[metric]["verdict"] for p, st in zip(profiles, stats)}
                for metric in profiles[0].scores}
    values = [st[primary_metric]["pearson"]["value"] for st in stats if primary_metric in st]
    values = [v for v in values if v is not None]
    pearson = float(np.mean(values)) if values else None
    decision = {"table": DECISION_TABLE, "primary_metric": primary_metric, "pearson": pearson,
                "verdict": verdict(pearson), "verdicts": verdicts}
    skipped = profiles[0].skipped.get(primary_metric)
    if skipped:
        decision["verdict"] = f"undefined: {primary_metric} was not measured ({skipped})"
    return decision


def _results(vlm: VisionLanguageModel, crops: list[Crop], profiles: list[Profile],
             settings: dict[str, Any], source_stats: dict[str, Any], primary_metric: str,
             seed: int) -> dict[str, Any]:
    info = vlm.info
    stats = [stability_stats(p, seed) for p in profiles]
    crossed = None
    if len(profiles) > 1:
        crossed = {metric: cross_question(profiles, metric, seed=seed)
                   for metric in profiles[0].scores}
    return {
        "schema": SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": {"id": info.resolved, "name": info.name, "requested": info.requested,
                  "standin": info.standin, "note": info.note, "device": str(vlm.device),
                  "dtype": str(vlm.dtype).replace("torch.", "")},
        "warning": STANDIN_WARNING if info.standin else None,
        "config": settings,
        "source": source_stats,
        "rois": [_crop_entry(crop) for crop in crops],
        "layers": profiles[0].to_dict()["layers"],
        "questions": [_question_entry(p, st) for p, st in zip(profiles, stats)],
        "cross_question": crossed,
        "decision": decide(profiles, stats, primary_metric),
    }


def _crop_entry(crop: Crop) -> dict[str, Any]:
    height, width = crop.image.shape[:2]
    return {"track_id": int(crop.track_id), "frame_index": int(crop.frame_index),
            "time_s": round(float(crop.time_s), 4), "bbox": [int(v) for v in crop.bbox],
            "crop_box": [int(v) for v in crop.crop_box], "size": [width, height]}


def _question_entry(profile: Profile, stats: dict[str, Any]) -> dict[str, Any]:
    answers = [{"track_id": int(t), "answer": a, "p_yes": float(p), "margin": float(m)}
               for t, a, p, m in zip(profile.crop_ids, profile.answers, profile.p_yes,
                                     profile.margins, strict=True)]
    return {"question": profile.question, "answers": answers,
            "profile": {**profile.to_dict(), "stats": stats}}


def _rounded(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return round(value, 3) if isinstance(value, float) else value


def check_results(data: dict[str, Any]) -> list[str]:
    """Problems of a ``validation_results.json`` against the documented fields ([] = valid)."""
    problems = [f"{key}: missing" for key in RESULT_FIELDS if key not in data]
    problems += [f"{key}: expected {kind}, got {type(data[key]).__name__}"
                 for key, kind in RESULT_FIELDS.items()
                 if key in data and not isinstance(data[key], kind)]
    if problems:
        return problems
    problems += [f"model.{k}: missing" for k in MODEL_FIELDS if k not in data["model"]]
    problems += [f"decision.{k}: missing" for k in DECISION_FIELDS if k not in data["decision"]]
    n_crops, n_layers = len(data["rois"]), len(data["layers"])
    for entry in data["questions"]:
        problems += _check_question(entry, n_crops, n_layers)
    return problems


def _check_question(entry: dict[str, Any], n_crops: int, n_layers: int) -> list[str]:
    where = f"questions[{entry.get('question')!r}]"
    profile = entry.get("profile", {})
    problems = [f"{where}.profile.{k}: missing" for k in PROFILE_FIELDS if k not in profile]
    if len(entry.get("answers", [])) != n_crops:
        problems.append(f"{where}.answers: expected {n_crops} entries")
    for metric, matrix in profile.get("scores", {}).items():
        shape = np.asarray(matrix).shape
        if shape != (n_crops, n_layers):
            problems.append(f"{where}.scores.{metric}: shape {shape}, expected "
                            f"{(n_crops, n_layers)}")
        stats = profile.get("stats", {}).get(metric, {})
        problems += [f"{where}.stats.{metric}.{k}: missing" for k in (*STAT_FIELDS, "verdict")
                     if k not in stats]
    return problems


def _plot_title(vlm: VisionLanguageModel, n_crops: int) -> str:
    standin = " — OFFLINE STAND-IN: random vision encoder" if vlm.info.standin else ""
    return f"Layer importance, {n_crops} ROIs of distinct tracks — {vlm.info.resolved}{standin}"


# --------------------------------------------------------------------------------------------
# Terminal summary


def format_summary(results: dict[str, Any]) -> str:
    """A short text summary of a validation for the terminal (the CLI prints it)."""
    model = results["model"]
    lines = [f"vidqa validate: {len(results['rois'])} ROIs of distinct tracks, model "
             f"{model['name']} on {model['device']}"]
    if results.get("warning"):
        lines.append(f"  WARNING: {results['warning']}")
    lines.append(f"decision table (seed): {DECISION_TABLE}")
    for entry in results["questions"]:
        lines += _question_lines(entry)
    for metric, crossed in (results.get("cross_question") or {}).items():
        if "interpretation" in crossed:
            lines.append(f"across questions, {metric}: {crossed['interpretation']}")
    decision = results["decision"]
    pearson = decision["pearson"]
    lines.append(f"DECISION ({decision['primary_metric']}, mean Pearson "
                 f"{'n/a' if pearson is None else f'{pearson:.3f}'}): {decision['verdict']}")
    lines.append(_timing_line(results))
    outputs = results.get("outputs", {})
    if outputs:
        lines.append(f"outputs: {outputs['json']}, {outputs['png']}")
    return "\n".join(lines)


def _question_lines(entry: dict[str, Any]) -> list[str]:
    answers = [a["answer"] for a in entry["answers"]]
    profile = entry["profile"]
    lines = [f"question {entry['question']!r}: {answers.count('yes')} yes / "
             f"{answers.count('no')} no",
             f"  {'metric':<16}{'pearson':>15}{'spearman':>15}{'jacc bot25%':>15}"
             f"{'jacc bot50%':>15}  verdict (Pearson)   cells: value [null mean]"]
    for metric, stats in profile["stats"].items():
        cells = "".join(f"{_cell(stats[name]):>15}" for name in STAT_FIELDS)
        lines.append(f"  {metric:<16}{cells}  {stats['verdict']}")
    for metric, reason in profile.get("skipped", {}).items():
        lines.append(f"  {metric:<16}skipped: {reason}")
    return lines


def _cell(stat: dict[str, float | None]) -> str:
    if stat["value"] is None:
        return "n/a"
    null = stat["null_mean"]
    return f"{stat['value']:.3f} [{null:.2f}]" if null is not None else f"{stat['value']:.3f}"


def _timing_line(results: dict[str, Any]) -> str:
    timings = results.get("timings", {})
    profile = timings.get("profile", {})
    task = sum(q["profile"]["seconds"].get(m, 0.0) for q in results["questions"]
               for m in TASK_METRICS)
    return (f"time: ROIs {timings.get('extract_rois', 0):.1f} s, model "
            f"{timings.get('load_model', 0):.1f} s, profiling {sum(profile.values()):.1f} s "
            f"(task impact {task:.1f} s), total {timings.get('total', 0):.1f} s")
