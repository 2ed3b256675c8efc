"""The ``vidqa`` command line: run, assets, validate, compress-report."""

from __future__ import annotations

import argparse
import json
import os
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
    from vidqa.config import load_config
    from vidqa.pipeline import Pipeline, prepare_run_dir

    config = args.config or (DEFAULT_CONFIG if Path(DEFAULT_CONFIG).is_file() else None)
    overrides = list(args.set or []) + (["run.overwrite=true"] if args.overwrite else [])
    cfg = load_config(config, overrides)
    logger.info("config: {}", config or "built-in defaults")
    run_dir = prepare_run_dir(cfg, args.out)
    summary = Pipeline.from_config(cfg, run_dir).run()
    _print_run(summary, run_dir)
    return summary["exit_code"]


def cmd_assets(args: argparse.Namespace) -> int:
    from vidqa import assets

    resolved = assets.fetch_all()
    print(json.dumps(resolved, indent=2, default=str))
    return 0


def _print_run(summary: dict, run_dir: Path) -> None:
    print(f"\nvidqa run {summary['end_reason']}: {summary['frames']} frames, "
          f"{summary['tracks']} tracks, {summary['answers']} answers "
          f"in {summary['seconds']:.1f} s ({summary['fps']:.2f} fps)")
    for question, tally in summary["answers_by_question"].items():
        print(f"  {question}  {tally}")
    if summary.get("warning"):
        print(f"  WARNING: {summary['warning']}")
    print(f"  outputs in {run_dir}/: annotated.mp4, events.jsonl, summary.json")


def _setup_logging(verbose: bool) -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
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
    run.set_defaults(handler=cmd_run)

    fetch = commands.add_parser("assets", help="fetch or build the sample video, detector and "
                                               "VLM (offline stand-in when the hub is out of reach)")
    fetch.set_defaults(handler=cmd_assets)
    return parser


if __name__ == "__main__":
    sys.exit(main())
