"""The pipeline: source → person tracker → ROI cropper → VLM → sinks, composed as generators.

:func:`run_pipeline` is what ``vidqa run`` calls: the run folder owns the log from the first
line, then the stages are built and driven. :meth:`Pipeline.run` is the one place that catches
everything: whatever stops the run (the source ends, Ctrl-C, SIGTERM, an exception in any
stage), the sinks are closed — the video is playable and every event is on disk — and
``summary.json`` records why and where it ended.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import psutil
from loguru import logger
from tqdm import tqdm

from vidqa import assets
from vidqa.clock import StageClock
from vidqa.config import PipelineConfig
from vidqa.errors import VidqaError
from vidqa.messages import FrameResult
from vidqa.roi import RoiPolicy
from vidqa.run import (
    EXIT_CODES,
    LOG_NAME,
    SCHEMA_VERSION,
    RunCounts,
    Terminated,
    run_log,
    sigterm_raises,
)
from vidqa.sinks import AnswerBoard, EventsSink, SinkSet, StopRequested, VideoSink, WindowSink
from vidqa.sources import Source, is_live, open_source, source_path
from vidqa.storage import write_json
from vidqa.tracking import PersonTracker
from vidqa.vlm.stage import VlmStage


def run_pipeline(cfg: PipelineConfig, run_dir: Path, config_name: str = "") -> dict[str, Any]:
    """Build the stages and run them, logging into ``run_dir/vidqa.log`` from the first line."""
    with run_log(run_dir):
        logger.info("config: {}; run folder {}", config_name or "built-in defaults", run_dir)
        return Pipeline.from_config(cfg, run_dir).run()


class Pipeline:
    """Built stages plus the run directory; :meth:`run` drives them and writes the summary."""

    def __init__(self, cfg: PipelineConfig, run_dir: Path, source: Source,
                 tracker: Callable[[Iterable], Iterator[FrameResult]], policy: RoiPolicy,
                 vlm_stage: VlmStage, models: dict[str, Any]) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.source = source
        self.tracker = tracker
        self.policy = policy
        self.vlm_stage = vlm_stage
        self.models = models
        self.board = AnswerBoard()

    @classmethod
    def from_config(cls, cfg: PipelineConfig, run_dir: Path) -> Pipeline:
        """Resolve assets, load the detector and the VLM, open the source.

        Checks that fail fast come first (the file or MOT folder, the VLM id); a live source is
        opened last, so its reader does not start before the models are ready.
        """
        source = None if is_live(cfg.source) else open_source(cfg.source, source_path(cfg.source))
        try:
            info = assets.resolve_vlm(cfg.vlm.model, cfg.vlm.revision)
            tracker = PersonTracker(cfg.tracker, reset_after_s=cfg.source.reset_tracks_after_s)
            vlm = assets.load_vlm(cfg.vlm, info)
            source = source or open_source(cfg.source)
        except BaseException:
            if source is not None:
                source.close()
            raise
        models = {"detector": tracker.detector, "vlm": vlm.info}
        return cls(cfg, run_dir, source, tracker, RoiPolicy(cfg.roi), VlmStage(vlm, cfg.vlm),
                   models)

    def sinks(self) -> SinkSet:
        sinks: list = []
        if self.cfg.sinks.events:
            sinks.append(EventsSink(self.run_dir / "events.jsonl"))
        if self.cfg.sinks.video:
            sinks.append(VideoSink(self.run_dir / "annotated.mp4", self.board,
                                   self.cfg.sinks.codec))
        if self.cfg.sinks.window:
            sinks.append(WindowSink(self.board))
        return SinkSet(sinks, self.board)

    def results(self, clock: StageClock) -> Iterator[FrameResult]:
        """The composed stages, each wrapped by the clock."""
        frames = clock.wrap("source", self.source)
        if self.cfg.run.max_frames:
            frames = itertools.islice(frames, self.cfg.run.max_frames)
        tracked = clock.wrap("tracker", self.tracker(frames))
        cropped = clock.wrap("roi", self.policy(tracked))
        return clock.wrap("vlm", self.vlm_stage(cropped))

    def run(self) -> dict[str, Any]:
        """Drive the stages to the end (or to the first stop) and write ``summary.json``."""
        clock, counts = StageClock(), RunCounts()
        started, end, error, crash = time.perf_counter(), "completed", None, None
        with sigterm_raises(), self.sinks() as sinks, self.source:
            try:
                for result in tqdm(self.results(clock), desc="frames", unit="f",
                                   total=self._expected_frames(), disable=None):
                    counts.add(result)
                    sinks.write(result)
                    counts.log_progress(self.cfg.run.log_every_s, self.policy.tracks_seen)
                if self.cfg.run.max_frames and counts.frames >= self.cfg.run.max_frames:
                    end = "max_frames"
            except StopRequested as err:
                end, error = "stopped", str(err)
            except KeyboardInterrupt:
                end, error = "interrupted", "SIGINT (Ctrl-C)"
            except Terminated:
                end, error = "terminated", "SIGTERM"
            except Exception as err:
                end, error = "error", f"{type(err).__name__}: {err}"
                logger.opt(exception=not isinstance(err, VidqaError)).error(
                    "run failed at frame {}: {}", counts.last_frame, err)
                crash = err
            summary = self._summary(clock, counts, sinks, end, error,
                                    time.perf_counter() - started)
        write_json(self.run_dir / "summary.json", summary)
        logger.info("run ended ({}) after {} frames, {} answers: {}", end, counts.frames,
                    counts.answers, self.run_dir)
        if crash is not None:
            raise crash
        return summary

    def _expected_frames(self) -> int | None:
        total = self.source.stats().get("frame_count") or None
        if total and self.cfg.run.max_frames:
            return min(total, self.cfg.run.max_frames)
        return total or self.cfg.run.max_frames or None

    def _summary(self, clock: StageClock, counts: RunCounts, sinks: SinkSet, end: str,
                 error: str | None, seconds: float) -> dict[str, Any]:
        vlm_info = self.models["vlm"]
        return {
            "schema_version": SCHEMA_VERSION,
            "end_reason": end,
            "error": error,
            "exit_code": EXIT_CODES[end],
            "last_frame": counts.last_frame,
            "frames": counts.frames,
            "tracks": self.policy.tracks_seen,
            "rois": self.policy.rois_emitted,
            "answers": counts.answers,
            "answers_by_question": counts.by_question,
            "seconds": round(seconds, 3),
            "fps": round(counts.frames / seconds, 3) if seconds > 0 else 0.0,
            "stage_seconds": clock.own_seconds(),
            "peak_rss_bytes": psutil.Process().memory_info().rss,
            "models": {
                "detector": _asdict(self.models["detector"]),
                "vlm": {**_asdict(vlm_info), "name": vlm_info.name},
                "standin_used": vlm_info.standin,
            },
            "warning": assets.STANDIN_WARNING if vlm_info.standin else None,
            "source": self.source.stats(),
            "tracker_resets": getattr(self.tracker, "resets", 0),
            "vlm": self.vlm_stage.summary(),
            "sink_failures": sinks.failed,
            "outputs": {name: str(self.run_dir / name) for name in
                        ("annotated.mp4", "events.jsonl", "summary.json", LOG_NAME)},
            "config": self.cfg.to_dict(),
        }


def _asdict(info: Any) -> dict[str, Any]:
    return dataclasses.asdict(info) if dataclasses.is_dataclass(info) else dict(info)
