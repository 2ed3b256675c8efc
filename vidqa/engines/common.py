"""What every engine does the same way: the questions the model answers, opening each stream's
source (or skipping it), telling the model how long the files are, showing a stream in the live
view and on /metrics, stopping every stream on Ctrl-C or SIGTERM, and the run's
``summary.json``."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import psutil
from loguru import logger

from vidqa.config import PipelineConfig, QuestionConfig, StreamConfig, VlmConfig
from vidqa.errors import VidqaError
from vidqa.pipeline import Pipeline
from vidqa.run import (
    EXIT_CODES,
    SCHEMA_VERSION,
    Terminated,
    exit_on_second_signal,
    sigterm_raises,
)
from vidqa.serving.base import AnswerService
from vidqa.sources import Source, is_live, open_source
from vidqa.storage import write_json


def run_vlm_config(cfg: PipelineConfig) -> VlmConfig:
    """The model's config for the whole run: every question any stream asks."""
    return dataclasses.replace(cfg.vlm, questions=all_questions(cfg.stream_configs()))


def all_questions(specs: Iterable[StreamConfig]) -> tuple[QuestionConfig, ...]:
    """Every question asked by any stream, once, in order of first appearance."""
    seen: dict[str, QuestionConfig] = {}
    for spec in specs:
        for question in spec.questions:
            seen.setdefault(question.question, question)
    return tuple(seen.values())


def segmented(cfg: PipelineConfig) -> bool:
    """Every stream records in segments (live streams, by default): the run writes no file an
    earlier run of the same folder wrote, so it can continue that folder and its store."""
    return all(cfg.sinks.segment_seconds(is_live(spec.source)) > 0
               for spec in cfg.stream_configs())


def open_or_skip(spec: StreamConfig, path: Path | None, failed: dict[str, str],
                 multi: bool) -> Source | None:
    """The stream's source, open; in a multi-stream run one that cannot open is recorded in
    ``failed`` and skipped (None), alone it raises."""
    try:
        return open_source(spec.source, path)
    except VidqaError as err:
        if not multi:
            raise
        logger.error("stream {} cannot start and is skipped: {}", spec.id, err)
        failed[spec.id] = str(err)
        return None


def files_seconds(specs: Iterable[StreamConfig], stats: Iterable[dict[str, Any]],
                  max_frames: int = 0) -> float | None:
    """Seconds of stream still to come when every stream is a file: the longest file's
    (``run.max_frames`` counted). None when a stream is live (no end) or a length is unknown:
    adaptive planning then uses its live horizon."""
    if any(is_live(spec.source) for spec in specs):
        return None
    seconds = []
    for stat in stats:
        frames, fps = stat.get("frame_count") or 0, stat.get("fps") or 0
        if stat.get("is_live") or not frames or not fps:
            return None
        seconds.append((min(frames, max_frames) if max_frames else frames) / fps)
    return max(seconds) if seconds else None


def wait_or_stop(wait: Callable[[], None], stop: Callable[[str], None],
                 wait_stopped: Callable[[], None] | None = None) -> None:
    """``wait()`` for every stream; Ctrl-C or SIGTERM meanwhile stops them all at their next
    frame (``stop(reason)``), then waits for them to close their outputs (``wait_stopped``,
    else ``wait`` again)."""
    with sigterm_raises():
        try:
            wait()
        except (KeyboardInterrupt, Terminated) as err:
            reason = "interrupted" if isinstance(err, KeyboardInterrupt) else "terminated"
            exit_on_second_signal()
            logger.warning("{}: stopping every stream (a second signal exits at once)", reason)
            stop(reason)
            (wait_stopped or wait)()


def serve_stream(pipeline: Pipeline, spec: StreamConfig, view: Any, monitor: Any,
                 service: AnswerService, answerer: Any = None) -> None:
    """The sinks that serve a stream to the live view (``view``: a LiveView, or a RelayView in a
    stream process or actor) and count it for /metrics and /healthz (``monitor``), when given;
    ``answerer``: the run's BatchAnswerer where it runs in this process (its phases)."""
    if view is not None:
        from vidqa.web import LiveViewSink  # the server's packages load only when served

        pipeline.extra_sinks.append(LiveViewSink(
            view, spec.id, pipeline.board, counters=lambda: _counters(pipeline, service,
                                                                      answerer)))
    if monitor is not None:
        pipeline.extra_sinks.append(monitor.watch(
            spec.id, is_live(spec.source), spec.source.stall_timeout_s,
            stats=lambda: _stream_stats(pipeline)))


def _counters(pipeline: Pipeline, service: AnswerService, answerer: Any) -> dict[str, Any]:
    """What the live view shows of a stream besides its frames: drops, the model's queue
    and each question's phase (profiling, compressed, full)."""
    stage = pipeline.answer_stage
    return {"frames_dropped": pipeline.source.stats().get("frames_dropped", 0),
            "vlm_queue": service.waiting, "vlm_in_flight": stage.in_flight,
            "tracks_waiting": len(stage.waiting),
            "phase": {a.question.label: getattr(a, "phase", "full")
                      for a in (answerer.answerers if answerer else ())}}


def _stream_stats(pipeline: Pipeline) -> dict[str, Any]:
    """A stream's counters for /metrics, read at scrape time."""
    stage = pipeline.answer_stage
    return {**pipeline.source.stats(), "tracks": pipeline.policy.tracks_seen,
            "failed": stage.failed, "tracks_waiting": len(stage.waiting)}


def run_summary(cfg: PipelineConfig, run_dir: Path, summaries: dict[str, dict[str, Any]],
                failed: dict[str, str], vlm: dict[str, Any], seconds: float) -> dict[str, Any]:
    """The run's ``summary.json``: one stream's own summary with the model's, or (several
    streams) the totals, each stream in brief and the streams that could not start."""
    if not cfg.streams:
        return with_model(summaries["0"], vlm)
    summaries = {**summaries, **{sid: {"stream_id": sid, "end_reason": "error", "error": why,
                                       "frames": 0, "answers": 0} for sid, why in failed.items()}}
    end = _run_end({s["end_reason"] for s in summaries.values()})
    frames = sum(s.get("frames", 0) for s in summaries.values())
    return {
        "schema_version": SCHEMA_VERSION, "end_reason": end, "exit_code": EXIT_CODES[end],
        "streams": {sid: _brief(s) for sid, s in sorted(summaries.items())},
        "failed_streams": dict(failed),
        "frames": frames, "answers": sum(s.get("answers", 0) for s in summaries.values()),
        "seconds": round(seconds, 3), "fps": round(frames / seconds, 3) if seconds else 0.0,
        "peak_rss_bytes": psutil.Process().memory_info().rss,
        "models": next(iter(summaries.values())).get("models") if summaries else None,
        "vlm": vlm,
        "outputs": {"events": str(run_dir / "events.jsonl"),
                    "streams": {sid: str(run_dir / sid) for sid in summaries}},
        "config": cfg.to_dict(),
    }


def with_model(summary: dict[str, Any], vlm: dict[str, Any]) -> dict[str, Any]:
    """A one-stream run's summary: the stream's own, with the model's figures around its
    stage's."""
    return {**summary, "vlm": {**vlm, "stream": summary.get("vlm")}}


def write_single(run_dir: Path, vlm: dict[str, Any], **extra: Any) -> None:
    """A one-stream run that failed: the summary its stream wrote, with the model's figures."""
    summary = json_of(run_dir / "summary.json")
    if summary is not None:
        write_json(run_dir / "summary.json", {**with_model(summary, vlm), **extra})


def json_of(path: Path) -> dict[str, Any] | None:
    """A summary already written, or None when there is none (or it is unreadable)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _run_end(ends: set[str]) -> str:
    for reason in ("terminated", "interrupted"):
        if reason in ends:
            return reason
    if "error" in ends:
        return "partial" if ends - {"error"} else "error"
    return "completed" if ends <= {"completed", "max_frames"} else "stopped"


def _brief(summary: dict[str, Any]) -> dict[str, Any]:
    keys = ("end_reason", "error", "frames", "tracks", "crops", "answers", "fps", "flush_s",
            "source", "vlm", "tracker_resets", "answers_by_question", "clips", "frame_path")
    return {key: summary[key] for key in keys if key in summary}
