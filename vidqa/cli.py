"""The ``vidqa`` command line: run, events, serve, assets, eval, plan, validate,
compress-report."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

from loguru import logger

from vidqa.errors import VidqaError

DEFAULT_CONFIG = "pipeline.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return args.handler(args)
    except VidqaError as err:
        logger.remove()
        print(f"vidqa: error: {err}", file=sys.stderr)
        return 2


def cmd_run(args: argparse.Namespace) -> int:
    # A run started in the background of a script inherits SIGINT ignored; `kill -INT` (what
    # Ctrl-C sends) must still stop it cleanly, as SIGTERM does.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from vidqa.config import load_config
    from vidqa.engines import run_pipeline
    from vidqa.engines.common import segmented
    from vidqa.run import exit_now, prepare_run_dir

    config = args.config or (DEFAULT_CONFIG if Path(DEFAULT_CONFIG).is_file() else None)
    overrides = list(args.set or []) + (["run.overwrite=true"] if args.overwrite else [])
    if args.engine:
        overrides.append(f"run.engine={args.engine}")
    cfg = load_config(config, overrides)
    serve = _serve_address(args.serve) if args.serve else None
    metrics = _serve_address(args.metrics, "--metrics") if args.metrics else None
    run_dir = prepare_run_dir(cfg, args.out, continuable=segmented(cfg))
    summary = run_pipeline(cfg, run_dir, config_name=str(config or ""), serve=serve,
                           token=args.token or os.environ.get("VIDQA_TOKEN"), metrics=metrics)
    _print_run(summary, run_dir)
    if summary["end_reason"] in ("interrupted", "terminated"):
        exit_now(summary["exit_code"])  # a stop takes seconds, not the teardown's too
    return summary["exit_code"]


def _serve_address(text: str, flag: str = "--serve") -> tuple[str, int]:
    """``PORT`` or ``HOST:PORT`` (``[::1]:PORT`` for IPv6); the host defaults to loopback."""
    host, _, port = text.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise VidqaError(f"{flag} {text!r}: expected PORT or HOST:PORT, e.g. {flag} 8765 or "
                         f"{flag} 127.0.0.1:8765")
    return host, int(port)


EVENT_COLUMNS = {  # what `vidqa events` prints as a table, per kind
    "answers": ("id", "answered_at", "stream_id", "track_id", "question", "answer", "p_yes",
                "source", "snapshot"),
    "alerts": ("id", "raised_at", "stream_id", "track_id", "rule", "zone", "answer", "dwell_s",
               "snapshot", "clip"),
    "tracks": ("id", "first_seen_at", "last_seen_at", "stream_id", "track_id", "answers"),
}


def cmd_events(args: argparse.Namespace) -> int:
    from vidqa.store import queries

    store = queries.find_store(args.store)
    filters = queries.Filters.parse({name: getattr(args, name) for name in (
        "run", "stream", "track", "question", "answer", "zone", "rule", "since", "until")})
    rows = list(queries.every(store, args.kind, filters, args.limit))
    if args.json:
        print(json.dumps(rows, indent=2))
    elif args.csv:
        _print_csv(rows)
    else:
        _print_table(rows, EVENT_COLUMNS[args.kind])
        print(f"{len(rows)} {args.kind} from {store}", file=sys.stderr)
    return 0


def _print_csv(rows: list[dict]) -> None:
    import csv

    if not rows:
        return
    writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: json.dumps(value) if isinstance(value, (list, dict)) else value
                         for key, value in row.items()})


def _print_table(rows: list[dict], columns: tuple[str, ...]) -> None:
    import time

    def cell(column: str, value: object) -> str:
        if value is None:
            return ""
        if column.endswith("_at"):
            return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(value)))
        if column == "answers":
            return "; ".join(f"{q}: {a['answer']}" for q, a in value.items())
        if isinstance(value, float):
            return f"{value:.2f}"
        return str(value)

    table = [[cell(c, row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in table)]) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip())
    for line in table:
        print("  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip())


def cmd_ask(args: argparse.Namespace) -> int:
    from vidqa.ask import command

    return command(args)


def cmd_serve(args: argparse.Namespace) -> int:
    import threading

    from vidqa.store import queries
    from vidqa.web import LiveView

    store = queries.find_store(args.store)
    host, port = _serve_address(args.serve)
    with LiveView(host, port, token=args.token or os.environ.get("VIDQA_TOKEN"),
                  store=store) as view:
        print(f"history of {store}: {view.address('history')} (Ctrl-C to stop)", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
    return 0


def cmd_eval_tracks(args: argparse.Namespace) -> int:
    tracks = _evaluation("tracks")
    scores = tracks.score_tracks(args.pred, args.gt, args.seqinfo)
    print(json.dumps(scores, indent=2) if args.json else tracks.format_scores(scores))
    return 0


def cmd_eval_answers(args: argparse.Namespace) -> int:
    answers = _evaluation("answers")
    from vidqa.evaluation.labels import load_labels

    report = answers.score_answers(load_labels(args.labels), args.run_dir, args.stream)
    print(json.dumps(report, indent=2) if args.json else answers.format_report(report))
    return 0


def _evaluation(name: str):
    """``vidqa.evaluation.<name>``, or a one-line error when the eval extra is missing."""
    import importlib

    try:
        return importlib.import_module(f"vidqa.evaluation.{name}")
    except ImportError as err:
        raise VidqaError(f"vidqa eval needs {err.name}: pip install 'vidqa[eval]'") from None


def cmd_assets(args: argparse.Namespace) -> int:
    from vidqa import assets

    resolved = assets.fetch_all()
    print(json.dumps(resolved, indent=2, default=str))
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from vidqa.config import load_config
    from vidqa.experiments.layer_stability import format_summary, run_validation

    cfg = load_config(args.config, args.set or [])
    results = run_validation(
        args.source, args.question or [q.question for q in cfg.vlm.questions], args.out,
        n_crops=args.crops, model=args.model or cfg.vlm.model, task_impact=not args.no_task_impact,
        device=args.device, batch_size=args.batch_size, seed=args.seed,
        primary_metric=args.metric, max_frames=args.max_frames, config=cfg)
    print(format_summary(results))
    return 0


def cmd_compress_report(args: argparse.Namespace) -> int:
    from vidqa.config import load_config
    from vidqa.experiments.compression_sweep import ReportConfig, compression_report
    from vidqa.pipeline import collect_crops
    from vidqa.vlm.loading import load_vlm

    overrides = list(args.set or [])
    if args.source:
        overrides.append(f"source.path={args.source}")
    if args.model:
        overrides.append(f"vlm.model={args.model}")
    cfg = load_config(args.config, overrides + [f"vlm.device={args.device}"])
    report_cfg = ReportConfig(
        question=args.question or cfg.vlm.questions[0].question, fractions=tuple(args.fractions),
        operators=tuple(args.operators), metrics=tuple(args.metrics), repeats=args.repeats,
        batch_size=args.batch_size, profile_crops=args.profile, controls=tuple(args.controls),
        scope=args.scope, seed=args.seed, tiles=tuple(args.tiles))
    crops, _ = collect_crops(cfg, args.crops)
    results = compression_report(load_vlm(cfg.vlm), crops, args.out, report_cfg, args.labels)
    _print_report(results, args.out)
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    """Plan each question on sample crops now and store the plans in one file."""
    import dataclasses

    from vidqa.config import QuestionConfig, load_config
    from vidqa.pipeline import collect_crops
    from vidqa.vlm.adaptive import plan_offline
    from vidqa.vlm.compression.compressor import compressor_for
    from vidqa.vlm.compression.plan_library import save_library
    from vidqa.vlm.loading import load_vlm

    overrides = list(args.set or []) + [f"vlm.device={args.device}"]
    overrides += [f"source.path={args.source}"] if args.source else []
    overrides += [f"vlm.model={args.model}"] if args.model else []
    cfg = load_config(args.config, overrides)
    questions = [QuestionConfig(q) for q in args.question] or \
        [q for q in cfg.vlm.questions if q.answer == "yesno"]
    crops, _ = collect_crops(cfg, args.crops)
    vlm = load_vlm(cfg.vlm)
    adaptive = dataclasses.replace(cfg.vlm.adaptive, profile_tracks=args.profile)
    entries = [plan_offline(vlm, q, crops, adaptive, args.batch_size) for q in questions]
    save_library(args.out, vlm.info.name, compressor_for(vlm.model).paths, entries)
    for entry in entries:
        print(f"{entry['question']}: plan {entry['plan']['id']} — {entry['reason']} "
              f"(held-out agreement {entry['agreement_held_out']}, paired ratio "
              f"{entry['paired_ratio']})")
    print(f"wrote {args.out}: use it with --set vlm.adaptive.plan={args.out}")
    return 0


def _print_run(summary: dict, run_dir: Path) -> None:
    print(f"\nvidqa run {summary['end_reason']}: {summary['frames']} frames, "
          f"{summary['answers']} answers in {summary['seconds']:.1f} s "
          f"({summary['fps']:.2f} fps)")
    streams = summary.get("streams") or {"": summary}
    for stream_id, stream in streams.items():
        name = f"  stream {stream_id}: " if stream_id else "  "
        line = (f"{stream['end_reason']}, {stream.get('frames', 0)} frames, "
                f"{stream.get('tracks', 0)} tracks, {stream.get('answers', 0)} answers")
        print(name + (line if not stream.get("error") else f"{line} ({stream['error']})"))
        for question, tally in (stream.get("answers_by_question") or {}).items():
            print(f"    {question}  {tally}")
    if (summary.get("models") or {}).get("standin_used"):
        print(f"  WARNING: {assets_warning()}")
    folders = [run_dir / sid for sid in summary["streams"]] if summary.get("streams") \
        else [run_dir]
    stream = "<stream id>/" if summary.get("streams") else ""
    video = "segments/" if any((f / "segments").is_dir() for f in folders) \
        else "annotated.mp4, mot.txt"
    print(f"  outputs in {run_dir}/: {stream}{video}, {stream}events.jsonl, summary.json, "
          f"vidqa.log, store/vidqa.db")


def assets_warning() -> str:
    from vidqa.assets import STANDIN_WARNING

    return STANDIN_WARNING


def _print_report(results: dict, out: Path) -> None:
    base = results["baseline"]
    print(f"\n{results['model']} on {results['device']}, {results['n_rois']} ROIs; full model "
          f"{base['latency_ms_mean']:.1f} ms/ROI (drift over the run {base['drift']:+.1%})")
    print(f"{'order':30} {'operator':10} {'frac':>5} {'speedup':>8} {'weights':>8} "
          f"{'agree':>7} {'|dp|':>7}")
    for row in results["rows"]:
        print(f"{row['order']:30} {row['operator']:10} {row['fraction']:5.2f} "
              f"{row['speedup']:7.2f}x {row['weight_ratio']:7.2f}x {row['agreement']:7.1%} "
              f"{row['mean_dp_yes']:7.3f}")
    if results.get("standin"):
        print("WARNING: offline stand-in VLM (random vision encoder): agreement is measured "
              "against a model whose answers carry no visual meaning")
    print(f"outputs in {out}/: compression_results.json, compression_impact.png")


def _setup_logging(verbose: bool) -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # FFmpeg's own lines ("Connection refused", "Stream timeout") duplicate vidqa's reconnect log.
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    logger.remove()
    logger.add(sys.stderr, level="DEBUG" if verbose else "INFO",
               format="<green>{time:HH:mm:ss}</green> <level>{level: <7}</level> {message}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vidqa", description="Track people in video and ask a small VLM about each of them.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run a pipeline YAML on its source",
                              description="Run the pipeline: source → tracker → ROI cropper → "
                                          "VLM → annotated video, events.jsonl, summary.json.")
    run.add_argument("config", nargs="?", help=f"pipeline YAML (default: ./{DEFAULT_CONFIG} if "
                                               f"present, else built-in defaults)")
    run.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                     help="override one config value, e.g. --set vlm.batch_size=4 (repeatable)")
    run.add_argument("--out", type=Path, help="output directory (default: run.out_dir/run.name)")
    run.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    run.add_argument("--serve", metavar="[HOST:]PORT",
                     help="serve a live web view of the run (binds 127.0.0.1 unless HOST is "
                          "given; any other host needs --token); it also serves /metrics and "
                          "/healthz")
    run.add_argument("--metrics", metavar="[HOST:]PORT",
                     help="serve only /metrics (Prometheus) and /healthz on this port, no page")
    run.add_argument("--token", help="token every web-view request must carry (default: "
                                     "$VIDQA_TOKEN)")
    run.add_argument("--engine", choices=["local", "ray"],
                     help="run.engine: local threads (default) or Ray actors + Ray Serve")
    run.set_defaults(handler=cmd_run)

    events = commands.add_parser(
        "events", help="list a store's answers, alerts or tracks, filtered",
        description="What the history page lists, on the command line: rows of the event "
                    "store, newest first.")
    events.add_argument("store", metavar="STORE",
                        help="the event store: its vidqa.db, its folder, or a run folder")
    events.add_argument("--kind", choices=["answers", "alerts", "tracks"], default="answers")
    _filter_args(events)
    events.add_argument("--limit", type=int, default=100, help="rows at most (0: all)")
    shape = events.add_mutually_exclusive_group()
    shape.add_argument("--json", action="store_true", help="print a JSON list")
    shape.add_argument("--csv", action="store_true", help="print CSV with a header")
    events.set_defaults(handler=cmd_events)

    serve = commands.add_parser(
        "serve", help="serve a store's history page and API without running a pipeline")
    serve.add_argument("store", metavar="STORE",
                       help="the event store: its vidqa.db, its folder, or a run folder")
    serve.add_argument("--serve", metavar="[HOST:]PORT", default="8765",
                       help="where (default 127.0.0.1:8765; any other host needs --token)")
    serve.add_argument("--token", help="token every request must carry (default: "
                                       "$VIDQA_TOKEN)")
    serve.set_defaults(handler=cmd_serve)

    from vidqa.ask import add_parser as add_ask

    add_ask(commands, cmd_ask)

    evaluate = commands.add_parser("eval", help="score a run: tracks (MOT16) or answers "
                                               "(labels)")
    scores = evaluate.add_subparsers(dest="what", required=True, metavar="WHAT")
    tracks = scores.add_parser("tracks", help="HOTA, MOTA, IDF1 of a mot.txt against a MOT16 "
                                              "gt.txt (TrackEval, MOT16 pedestrian rules)")
    tracks.add_argument("pred", type=Path, help="a run's mot.txt")
    tracks.add_argument("gt", type=Path, help="the sequence's gt/gt.txt")
    tracks.add_argument("--seqinfo", type=Path,
                        help="the sequence folder or its seqinfo.ini (its length)")
    tracks.add_argument("--json", action="store_true", help="print the scores as JSON")
    tracks.set_defaults(handler=cmd_eval_tracks)
    answers = scores.add_parser("answers", help="accuracy of a run's answers against labels")
    answers.add_argument("run_dir", type=Path, metavar="RUN_DIR",
                         help="a run folder (events.jsonl, mot.txt)")
    answers.add_argument("--labels", type=Path, required=True,
                         help="labels YAML/JSON, e.g. samples/labels/vtest.yaml")
    answers.add_argument("--stream", help="the stream of a multi-stream run the labels are for")
    answers.add_argument("--json", action="store_true", help="print the report as JSON")
    answers.set_defaults(handler=cmd_eval_answers)

    fetch = commands.add_parser("assets", help="fetch or build the sample video, detector and "
                                               "VLM (offline stand-in when the hub is out of "
                                               "reach)")
    fetch.set_defaults(handler=cmd_assets)

    validate = commands.add_parser(
        "validate", help="Experiment 1: is per-layer importance stable across people?",
        description="Profile per-layer importance of the VLM on crops of distinct tracks and "
                    "test its stability (Pearson, Spearman, bottom-k Jaccard, null baselines). "
                    "Writes validation_results.json and layer_importance.png.")
    _experiment_args(validate, default_out="runs/validate", default_crops=8)
    validate.add_argument("--query", dest="question", action=Renamed, help=argparse.SUPPRESS)
    validate.add_argument("--question", action="append", metavar="QUESTION",
                          help="question to profile (repeatable; default: the config's "
                               "vlm.questions)")
    validate.add_argument("--metric", default="block_influence",
                          help="metric the verdict is based on (default: block_influence)")
    validate.add_argument("--no-task-impact", action="store_true",
                          help="skip the task-impact metrics (one extra pass per layer each)")
    validate.add_argument("--max-frames", type=int, default=0,
                          help="read at most this many frames looking for tracks (0 = no limit)")
    validate.add_argument("--seed", type=int, default=0, help="seed of the null baselines")
    validate.set_defaults(handler=cmd_validate)

    report = commands.add_parser(
        "compress-report", help="Experiment 2: speed, memory and agreement of compressed layers",
        description="Compress 0-75%% of the layers (int8, skip, both) in importance, random and "
                    "reverse order; measure latency, memory and agreement with the full model. "
                    "Writes compression_results.json and compression_impact.png.")
    _experiment_args(report, default_out="runs/compress-report", default_crops=16)
    report.add_argument("--question", help="question (default: the config's first query)")
    report.add_argument("--profile", type=int, default=8, help="ROIs profiled for the ranking")
    report.add_argument("--fractions", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75])
    report.add_argument("--operators", nargs="+", default=["int8", "skip", "int8+skip"])
    report.add_argument("--metrics", nargs="+", default=["block_influence", "activation"],
                        help="importance metrics whose order is tried")
    report.add_argument("--controls", nargs="*", default=["random", "reverse"],
                        help="control orders: random and/or reverse (of the first metric)")
    report.add_argument("--scope", choices=["global", "per_tower"], default="global",
                        help="fraction of all layers, or of each tower")
    report.add_argument("--seed", type=int, default=0, help="seed of the random order")
    report.add_argument("--tiles", type=int, nargs="*", default=[384, 256],
                        help="token-budget rows: smaller tiles in px (by crop size, random and "
                             "fixed-size controls)")
    report.add_argument("--repeats", type=int, default=3, help="timed passes per configuration")
    report.add_argument("--labels", type=Path,
                        help="ground truth: JSON {track_id: yes|no} or CSV track_id,answer")
    report.set_defaults(handler=cmd_compress_report)

    plan = commands.add_parser(
        "plan", help="precompute compression plans for questions on sample crops",
        description="Profile and confirm a plan per question on crops of the source's first "
                    "tracks (the rest are held-out checks) and write a plan file for "
                    "vlm.adaptive.plan. Plans are per model.")
    _experiment_args(plan, default_out="plans.json", default_crops=24)
    plan.set_defaults(out=Path("plans.json"))
    plan.add_argument("--question", action="append", default=[],
                      help="a yes/no question (repeatable; default: the config's questions)")
    plan.add_argument("--profile", type=int, default=10, help="tracks profiled per question")
    plan.set_defaults(handler=cmd_plan)
    return parser


class Renamed(argparse.Action):
    """An option under its old name: still accepted, with a line naming the new one."""

    NEW = {"--rois": "--crops", "--query": "--question"}

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        new = self.NEW.get(option_string or "", self.dest)
        print(f"vidqa: {option_string} is now {new}; the old name still works for now",
              file=sys.stderr)
        if new == "--question":  # repeatable
            values = [*(getattr(namespace, self.dest, None) or []), values]
        setattr(namespace, self.dest, values)


def _filter_args(parser: argparse.ArgumentParser) -> None:
    """The history's filters, as the page and /api/... take them."""
    parser.add_argument("--run", help="a run's id")
    parser.add_argument("--stream", help="a stream's id")
    parser.add_argument("--track", help="a track's id (within its stream)")
    parser.add_argument("--question", help="the question's text")
    parser.add_argument("--answer", help="the answer, e.g. yes")
    parser.add_argument("--zone", help="answers/tracks standing in the zone; alerts raised in it")
    parser.add_argument("--rule", help="alerts of the rule; answers/tracks of tracks that "
                                       "raised it")
    parser.add_argument("--since", help="from: epoch seconds, 2h / 30m / 1d ago, or ISO time")
    parser.add_argument("--until", help="to: the same forms")


def _experiment_args(parser: argparse.ArgumentParser, default_out: str, default_crops: int
                     ) -> None:
    parser.add_argument("--source", help="video file or MOT sequence (default: the sample video)")
    parser.add_argument("--crops", type=int, default=default_crops,
                        help=f"person crops of distinct tracks (default {default_crops})")
    parser.add_argument("--rois", type=int, dest="crops", action=Renamed, help=argparse.SUPPRESS)
    parser.add_argument("--model", help="VLM hub id or folder (default: the config's vlm.model)")
    parser.add_argument("--config", help="pipeline YAML whose tracker/roi/vlm settings to use")
    parser.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                        help="override a config value (repeatable)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path(default_out), help="output folder")


if __name__ == "__main__":
    sys.exit(main())
