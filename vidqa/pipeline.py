"""The pipeline: source → person tracker → ROI cropper → VLM → sinks, composed as generators.

:meth:`Pipeline.run` is the one place that catches everything: whatever stops the run
(the source ends, Ctrl-C, SIGTERM, an exception in any stage), the sinks are closed — the video
is playable and every event is on disk — and ``summary.json`` records why and where it ended.
"""

from __future__ import annotations

import dataclasses
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
from loguru import logger
from tqdm import tqdm

from vidqa import assets
from vidqa.config import PipelineConfig, VlmConfig
from vidqa.errors import OutputError, SourceError, VidqaError
from vidqa.messages import FrameResult, Roi
from vidqa.roi import QueryPolicy, distinct_tracks
from vidqa.sinks import AnswerBoard, EventsSink, SinkSet, StopRequested, VideoSink, WindowSink
from vidqa.sinks import write_json
from vidqa.sources import Source, open_source
from vidqa.tracking import PersonTracker
from vidqa.vlm.model import ModelInfo, VisionLanguageModel
from vidqa.vlm.stage import VlmStage

EXIT_CODES = {"completed": 0, "max_frames": 0, "stopped": 0, "interrupted": 130,
              "terminated": 143, "error": 1}


class Terminated(Exception):
    """SIGTERM arrived; raised in the main thread so the run ends like a Ctrl-C."""


class StageClock:
    """Times stages from the outside: the wall time spent inside each stage's ``next``.

    Stages are nested generators, so a stage's cumulative time includes its upstream's;
    :meth:`own_seconds` subtracts it to give each stage its own share.
    """

    def __init__(self) -> None:
        self.order: list[str] = []
        self.cumulative: dict[str, float] = {}

    def wrap(self, name: str, items: Iterable[Any]) -> Iterator[Any]:
        # Registered now, not on the first next(): the order must be upstream first.
        self.order.append(name)
        self.cumulative[name] = 0.0
        return self._timed(name, iter(items))

    def _timed(self, name: str, iterator: Iterator[Any]) -> Iterator[Any]:
        while True:
            start = time.perf_counter()
            try:
                item = next(iterator)
            except StopIteration:
                return
            finally:
                self.cumulative[name] += time.perf_counter() - start
            yield item

    def own_seconds(self) -> dict[str, float]:
        own, upstream = {}, 0.0
        for name in self.order:
            own[name] = round(self.cumulative[name] - upstream, 3)
            upstream = self.cumulative[name]
        return own


def prepare_run_dir(cfg: PipelineConfig, out: Path | None = None) -> Path:
    """``out`` or ``run.out_dir/run.name``; refuses an existing non-empty one unless overwrite."""
    run_dir = Path(out) if out is not None else Path(cfg.run.out_dir) / cfg.run.name
    if run_dir.exists() and any(run_dir.iterdir()):
        if not cfg.run.overwrite:
            raise OutputError(f"run directory {run_dir} already exists: pass --overwrite, "
                              f"--out DIR or --set run.name=NEW_NAME")
        shutil.rmtree(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.touch()
        probe.unlink()
    except OSError as err:
        raise OutputError(f"cannot write to run directory {run_dir}: {err.strerror} — choose "
                          f"another with --out DIR") from None
    return run_dir


class Pipeline:
    """Built stages plus the run directory; :meth:`run` drives them and writes the summary."""

    def __init__(self, cfg: PipelineConfig, run_dir: Path, source: Source,
                 tracker: Callable[[Iterable], Iterator[FrameResult]], policy: QueryPolicy,
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
        source = None if _live(cfg) else open_source(cfg.source, _source_path(cfg))
        try:
            info = assets.resolve_vlm(cfg.vlm.model, cfg.vlm.revision)
            tracker = PersonTracker(cfg.tracker, reset_after_s=cfg.source.reset_tracks_after_s)
            vlm = load_vlm(cfg.vlm, info)
            source = source or open_source(cfg.source)
        except BaseException:
            if source is not None:
                source.close()
            raise
        models = {"detector": tracker.detector, "vlm": vlm.info}
        return cls(cfg, run_dir, source, tracker, QueryPolicy(cfg.roi), VlmStage(vlm, cfg.vlm),
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
            frames = _take(frames, self.cfg.run.max_frames)
        tracked = clock.wrap("tracker", self.tracker(frames))
        cropped = clock.wrap("roi", self.policy(tracked))
        return clock.wrap("vlm", self.vlm_stage(cropped))

    def run(self) -> dict[str, Any]:
        """Drive the stages to the end (or to the first stop) and write ``summary.json``."""
        clock, counts = StageClock(), _Counts()
        started, end, error, crash = time.perf_counter(), "completed", None, None
        with _log_to(self.run_dir / "vidqa.log"), _sigterm_raises(), self.sinks() as sinks, \
                self.source:
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

    def _summary(self, clock: StageClock, counts: _Counts, sinks: SinkSet, end: str,
                 error: str | None, seconds: float) -> dict[str, Any]:
        vlm_info = self.models["vlm"]
        return {
            "end_reason": end,
            "error": error,
            "exit_code": EXIT_CODES[end],
            "last_frame": counts.last_frame,
            "frames": counts.frames,
            "tracks": self.policy.tracks_seen,
            "rois": self.policy.rois_emitted,
            "vlm_calls": counts.answers,
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
            "warning": STANDIN_WARNING if vlm_info.standin else None,
            "source": self.source.stats(),
            "tracker_resets": getattr(self.tracker, "resets", 0),
            "vlm": self.vlm_stage.summary(),
            "sink_failures": sinks.failed,
            "outputs": {name: str(self.run_dir / name) for name in
                        ("annotated.mp4", "events.jsonl", "summary.json", "vidqa.log")},
            "config": self.cfg.to_dict(),
        }


def load_vlm(cfg: VlmConfig, info: ModelInfo | None = None) -> VisionLanguageModel:
    """Resolve (unless given) and load the configured VLM, warning loudly about a stand-in."""
    info = info or assets.resolve_vlm(cfg.model, cfg.revision)
    if info.standin:
        _warn_standin(info.resolved)
    return VisionLanguageModel.load(info, cfg.device, cfg.dtype, cfg.image_splitting,
                                    local_files_only=not assets.hub_reachable())


def collect_rois(cfg: PipelineConfig, count: int, max_frames: int = 0
                 ) -> tuple[list[Roi], dict[str, Any]]:
    """The first crop of each of the first ``count`` tracks, from the pipeline's own source,
    tracker and cropper, and the source's stats. Used by the experiments (validate,
    compress-report) so they see exactly the crops a run would send to the VLM.

    Stops reading as soon as ``count`` distinct tracks have a crop (or after ``max_frames``).
    A tracker can give one person a new id after losing them; taking the first tracks of a
    clip makes that unlikely.
    """
    tracker = PersonTracker(cfg.tracker, reset_after_s=cfg.source.reset_tracks_after_s)
    policy = QueryPolicy(dataclasses.replace(cfg.roi, reask_every=0, reask_growth=0.0))
    with open_source(cfg.source, None if _live(cfg) else _source_path(cfg)) as source:
        frames = _take(source, max_frames) if max_frames else source
        crops = (roi for result in policy(tracker(frames)) for roi in result.rois)
        chosen = distinct_tracks(crops, count)
        stats = source.stats()
    if not chosen:
        raise SourceError(f"no person crop found in {stats['source_id']} (frames read: "
                          f"{stats.get('frames_read')}): check the video, tracker.conf or "
                          f"roi.min_width/min_height")
    if len(chosen) < count:
        logger.warning("only {} distinct tracks found in {} (asked for {})", len(chosen),
                       stats["source_id"], count)
    return chosen, stats


STANDIN_WARNING = ("The VLM is vidqa's offline stand-in: real SmolLM2 text weights with a "
                   "RANDOM vision encoder. Its answers carry no visual meaning.")


def _warn_standin(path: str) -> None:
    logger.warning("=" * 78)
    logger.warning("OFFLINE STAND-IN VLM at {}", path)
    logger.warning(STANDIN_WARNING)
    logger.warning("For real answers run where the Hugging Face hub is reachable (vlm.model: auto)")
    logger.warning("=" * 78)


class _Counts:
    def __init__(self) -> None:
        self.frames = 0
        self.last_frame: int | None = None
        self.answers = 0
        self.by_question: dict[str, dict[str, int]] = {}
        self.logged_at = time.perf_counter()

    def log_progress(self, every_s: float, tracks: int) -> None:
        """A progress line every ``every_s`` seconds when no progress bar is shown."""
        now = time.perf_counter()
        if sys.stderr.isatty() or now - self.logged_at < every_s:
            return
        self.logged_at = now
        logger.info("frame {}: {} frames, {} tracks, {} answers", self.last_frame, self.frames,
                    tracks, self.answers)

    def add(self, result: FrameResult) -> None:
        self.frames += 1
        self.last_frame = result.frame.index
        for answer in result.answers:
            self.answers += 1
            tally = self.by_question.setdefault(answer.question, {})
            key = answer.answer if answer.p_yes is not None else "text"
            tally[key] = tally.get(key, 0) + 1


def _live(cfg: PipelineConfig) -> bool:
    return cfg.source.kind in ("webcam", "stream")


def _source_path(cfg: PipelineConfig) -> Path:
    if cfg.source.path == "auto":
        return assets.sample_video()
    return Path(cfg.source.path).expanduser()


def _take(items: Iterable[Any], count: int) -> Iterator[Any]:
    for i, item in enumerate(items):
        if i >= count:
            return
        yield item


def _asdict(info: Any) -> dict[str, Any]:
    return dataclasses.asdict(info) if dataclasses.is_dataclass(info) else dict(info)


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    """Turn SIGTERM into an exception in the main thread, so the run finalises as for Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _log_to(path: Path) -> Iterator[None]:
    sink_id = logger.add(path, level="INFO", enqueue=False)
    try:
        yield
    finally:
        logger.remove(sink_id)
