"""One stream's pipeline: source → person tracker → ROI cropper → answers → sinks, composed as
generators; the answers come from the run's service (:mod:`vidqa.serving`), shared by every
stream.

A :class:`Pipeline` is one stream's front half and its outputs; :meth:`Pipeline.run` is the one
place that catches everything for its stream: whatever stops it (the source ends, Ctrl-C,
SIGTERM, an exception in any stage), the sinks are closed — the video is playable and every event
is on disk — and ``summary.json`` records why and where it ended. The engines
(:mod:`vidqa.engines`) build the pipelines of a run and drive them; one bad stream never stops
the others.
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
from vidqa.config import PipelineConfig, StreamConfig
from vidqa.errors import SourceError, VidqaError
from vidqa.messages import Crop, FrameResult
from vidqa.roi import RoiPolicy, distinct_tracks
from vidqa.run import (
    EXIT_CODES,
    LOG_NAME,
    SCHEMA_VERSION,
    StreamCounts,
    Terminated,
    exit_on_second_signal,
    sigterm_raises,
)
from vidqa.serving.base import AnswerService
from vidqa.serving.stage import AnswerStage
from vidqa.sinks import (
    AnswerBoard,
    ClipSink,
    MotSink,
    SegmentSink,
    SinkSet,
    StopRequested,
    VideoSink,
    WindowSink,
)
from vidqa.sources import Source, is_live, open_source, source_path
from vidqa.storage import write_json
from vidqa.store import StoreSink, StreamRecord, store_path
from vidqa.tracking import PersonTracker

# Records for the run's event store (EventStore.put_many, or a queue to the process holding it).
Send = Callable[[list[Any]], None]
# Ends after which a stream waits for every answer still with the VLM; after any other
# (Ctrl-C, SIGTERM, a stop, an error) it waits run.stop_grace_s and abandons the rest.
WAIT_FOR_ALL = ("completed", "max_frames")


class Pipeline:
    """One stream's stages plus its output folder; :meth:`run` drives them and writes the
    stream's ``summary.json``."""

    def __init__(self, cfg: PipelineConfig, run_dir: Path, source: Source,
                 tracker: Callable[[Iterable], Iterator[FrameResult]], policy: RoiPolicy,
                 answer_stage: AnswerStage, models: dict[str, Any], send: Send,
                 stream_id: str = "0", extra_sinks: list | None = None,
                 rules: Any = None, zones: Any = None, clips_folder: Path | None = None
                 ) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.source = source
        self.tracker = tracker
        self.policy = policy
        self.answer_stage = answer_stage
        self.models = models
        self.send = send
        self.stream_id = stream_id
        self.extra_sinks = extra_sinks if extra_sinks is not None else []  # the live view
        self.rules = rules  # a vidqa.zones.RuleStage when the config has rules
        self.clips_folder = clips_folder  # the store's folder: alert clips go under clips/
        self.clips: ClipSink | None = None  # the clips of this run(), when the stream has rules
        self.board = AnswerBoard(asking=lambda: answer_stage.pending, zones=zones)
        self.stop_reason: str | None = None  # set by the run (another thread) to stop here
        self.on_end: list[Callable[[], None]] = []  # called when run() ends, e.g. close a service
        self.sinks_s = 0.0  # seconds in the sinks: drawing and writing the frames and records

    @property
    def segment_s(self) -> float:
        """Seconds per video segment (0: one ``annotated.mp4``, as for a clip)."""
        return self.cfg.sinks.segment_seconds(is_live(self.cfg.source))

    def sinks(self) -> SinkSet:
        """The store's sink first (answers and alerts are recorded before anything is drawn),
        then the alert clips, the recording, the window and the live view."""
        store = StoreSink(self.stream_id, self.send, self.cfg.store.snapshots)
        sinks: list = [store]
        if self.rules is not None and self.cfg.alerts.clips and self.clips_folder is not None:
            self.clips = ClipSink(self.clips_folder, self.stream_id, self.cfg.alerts,
                                  store.on_clip, self.board, live=is_live(self.cfg.source))
            sinks.append(self.clips)
        video, mot = self.cfg.sinks.video, self.cfg.sinks.mot
        if self.segment_s > 0 and (video or mot):
            sinks.append(SegmentSink(self.run_dir, self.stream_id, self.segment_s,
                                     store.on_segment, self.board, self.cfg.sinks.codec,
                                     video=video, mot=mot))
        else:
            if mot:
                sinks.append(MotSink(self.run_dir / "mot.txt"))
            if video:
                sinks.append(VideoSink(self.run_dir / "annotated.mp4", self.board,
                                       self.cfg.sinks.codec))
        if self.cfg.sinks.window:
            sinks.append(WindowSink(self.board))
        return SinkSet([*sinks, *self.extra_sinks], self.board)

    def announce(self) -> None:
        """Tell the store about this stream (and where its JSONL export goes)."""
        self.send([StreamRecord(self.stream_id, self.source.stats().get("source_id", "?"),
                                self.run_dir, self.segment_s > 0, self.cfg.sinks.events,
                                self.rules is not None)])

    def results(self, clock: StageClock) -> Iterator[FrameResult]:
        """The composed stages, each wrapped by the clock."""
        frames = clock.wrap("source", self._tagged(self.source))
        if self.cfg.run.max_frames:
            frames = itertools.islice(frames, self.cfg.run.max_frames)
        tracked = clock.wrap("tracker", self.tracker(frames))
        cropped = clock.wrap("roi", self.policy(tracked))
        answered = clock.wrap("vlm", self.answer_stage(cropped))
        return answered if self.rules is None else clock.wrap("rules", self.rules(answered))

    def run(self) -> dict[str, Any]:
        """Drive the stages to the end (or to the first stop) and write ``summary.json``."""
        clock, counts = StageClock(), StreamCounts()
        started, end, error, crash = time.perf_counter(), "completed", None, None
        self.announce()
        with sigterm_raises(), self.sinks() as sinks, self.source:
            try:
                for result in tqdm(self.results(clock), desc=f"stream {self.stream_id}",
                                   unit="f", total=self._expected_frames(), disable=None):
                    counts.add(result)
                    written = time.perf_counter()
                    sinks.write(result)
                    self.sinks_s += time.perf_counter() - written
                    counts.log_progress(self.cfg.run.log_every_s, self.policy.tracks_seen)
                    if self.stop_reason:
                        end, error = self.stop_reason, "stopped by the run"
                        break
                if end == "completed" and self.cfg.run.max_frames and \
                        counts.frames >= self.cfg.run.max_frames:
                    end = "max_frames"
            except StopRequested as err:
                end, error = "stopped", str(err)
            except KeyboardInterrupt:
                end, error = "interrupted", "SIGINT (Ctrl-C)"
                exit_on_second_signal()
            except Terminated:
                end, error = "terminated", "SIGTERM"
                exit_on_second_signal()
            except Exception as err:
                end, error = "error", f"{type(err).__name__}: {err}"
                logger.opt(exception=not isinstance(err, VidqaError)).error(
                    "stream {} failed at frame {}: {}", self.stream_id, counts.last_frame, err)
                crash = err
            streamed = time.perf_counter() - started
            self._flush(sinks, counts, end)
            if self.clips is not None:  # its record goes out before on_end closes the store
                self.clips.close()
            for callback in self.on_end:
                callback()
            summary = self._summary(clock, counts, sinks, end, error, streamed,
                                    time.perf_counter() - started)
        write_json(self.run_dir / "summary.json", summary)
        logger.info("stream {} ended ({}) after {} frames, {} answers: {}", self.stream_id, end,
                    counts.frames, counts.answers, self.run_dir)
        if crash is not None:
            raise crash
        return summary

    def _tagged(self, frames: Iterable) -> Iterator:
        for frame in frames:
            yield dataclasses.replace(frame, stream_id=self.stream_id)

    def _flush(self, sinks: SinkSet, counts: StreamCounts, end: str) -> None:
        """Answers still with the model when the frames ended: waited for (all of them when
        the stream ran to its end, else ``run.stop_grace_s``) and recorded; the rest are
        abandoned, and nothing arrives after that."""
        grace = None if end in WAIT_FOR_ALL else self.cfg.run.stop_grace_s
        late = self.answer_stage.flush(grace)
        counts.add_answers(late)
        sinks.write_answers(late)
        self.answer_stage.abandon()

    def _expected_frames(self) -> int | None:
        total = self.source.stats().get("frame_count") or None
        if total and self.cfg.run.max_frames:
            return min(total, self.cfg.run.max_frames)
        return total or self.cfg.run.max_frames or None

    def _summary(self, clock: StageClock, counts: StreamCounts, sinks: SinkSet, end: str,
                 error: str | None, streamed: float, seconds: float) -> dict[str, Any]:
        """``streamed``: seconds until the frames ended; ``seconds``: with the wait for the
        answers still in flight then (``flush_s``). ``fps`` is over the streamed seconds: the
        front half's rate, which a slow model's last answers must not dilute."""
        vlm_info = self.models["vlm"]
        return {
            "schema_version": SCHEMA_VERSION,
            "stream_id": self.stream_id,
            "end_reason": end,
            "error": error,
            "exit_code": EXIT_CODES[end],
            "last_frame": counts.last_frame,
            "frames": counts.frames,
            "tracks": self.policy.tracks_seen,
            "crops": self.policy.crops_emitted,
            "answers": counts.answers,
            "answers_by_question": counts.by_question,
            "seconds": round(seconds, 3),
            "flush_s": round(seconds - streamed, 3),
            "fps": round(counts.frames / streamed, 3) if streamed > 0 else 0.0,
            "stage_seconds": clock.own_seconds(),
            "frame_path": frame_path(self.source.stats(), self.tracker, self.sinks_s,
                                     counts.frames),
            "peak_rss_bytes": psutil.Process().memory_info().rss,
            "models": {
                "detector": _asdict(self.models["detector"]),
                "vlm": {**_asdict(vlm_info), "name": vlm_info.name},
                "standin_used": vlm_info.standin,
            },
            "warning": assets.STANDIN_WARNING if vlm_info.standin else None,
            "source": self.source.stats(),
            "tracker_resets": getattr(self.tracker, "resets", 0),
            "vlm": self.answer_stage.summary(),
            "sink_failures": sinks.failed,
            "clips": self.clips.summary() if self.clips is not None else None,
            "outputs": self._outputs(),
            "config": self.cfg.to_dict(),
        }


    def _outputs(self) -> dict[str, str]:
        names = ["events.jsonl", "summary.json", LOG_NAME]
        names += ["segments"] if self.segment_s > 0 else ["annotated.mp4", "mot.txt"]
        return {name: str(self.run_dir / name) for name in names}


def _zones_and_rules(cfg: PipelineConfig, stream_id: str) -> tuple[Any, Any]:
    """The zone map and the rule stage of a stream, or None for each the config lacks."""
    if not cfg.zones:
        return None, None
    from vidqa.zones import RuleEngine, RuleStage, ZoneMap

    rules = RuleStage(RuleEngine.from_config(cfg, stream_id)) if cfg.rules else None
    return ZoneMap(cfg.zones), rules


def stream_pipeline(cfg: PipelineConfig, spec: StreamConfig, out_dir: Path, source: Source,
                    tracker: Callable[[Iterable], Iterator[FrameResult]],
                    service: AnswerService, models: dict[str, Any], send: Send,
                    extra_sinks: list) -> Pipeline:
    """One stream of a run, writing into ``out_dir``; its crops go to ``service``, its records
    to ``send`` (the run's event store)."""
    # the engines write a stream into run_dir/<id> (several streams) or run_dir itself
    store_folder = store_path(cfg, out_dir.parent if cfg.streams else out_dir).parent
    cfg = dataclasses.replace(cfg, source=spec.source, tracker=spec.tracker, roi=spec.roi,
                              streams=(), vlm=dataclasses.replace(cfg.vlm,
                                                                  questions=spec.questions))
    out_dir.mkdir(parents=True, exist_ok=True)
    stage = AnswerStage(service, [q.question for q in spec.questions], live=is_live(spec.source))
    zones, rules = _zones_and_rules(cfg, spec.id)
    return Pipeline(cfg, out_dir, source, tracker, RoiPolicy(spec.roi, zones), stage, models,
                    send, stream_id=spec.id, extra_sinks=extra_sinks, rules=rules, zones=zones,
                    clips_folder=store_folder)


def frame_path(source: dict[str, Any], tracker: Any, sinks_s: float, frames: int
               ) -> dict[str, Any]:
    """Where a stream's frames spent their time, stage by stage (README: "Detector backends
    and the frame path"): seconds and milliseconds per frame of decode (on the source's own
    thread), letterbox and detect (letterbox is part of detect), track, and the sinks (draw and
    write: the annotated video, mot.txt, the store's records)."""
    stages = {"decode_s": source.get("decode_s", 0.0),
              **(tracker.frame_path() if hasattr(tracker, "frame_path") else {}),
              "sinks_s": round(sinks_s, 3)}
    per_frame = {k.replace("_s", "_ms"): round(1000 * v / frames, 2) if frames else None
                 for k, v in stages.items()}
    return {**stages, "per_frame": per_frame}


def _asdict(info: Any) -> dict[str, Any]:
    return dataclasses.asdict(info) if dataclasses.is_dataclass(info) else dict(info)


def tracked(cfg: PipelineConfig, source: Source, max_frames: int = 0,
            clock: StageClock | None = None) -> Iterator[FrameResult]:
    """The pipeline's front half on an open ``source``: frames, tracked people and the crops
    the ROI policy (``cfg.roi``) asks about — what a run would send to the VLM. ``clock``
    times the source, tracker and roi stages."""
    clock = clock or StageClock()
    tracker = PersonTracker(cfg.tracker, reset_after_s=cfg.source.reset_tracks_after_s)
    policy = RoiPolicy(cfg.roi)
    frames = clock.wrap("source", itertools.islice(source, max_frames or None))
    return clock.wrap("roi", policy(clock.wrap("tracker", tracker(frames))))


def collect_crops(cfg: PipelineConfig, count: int, max_frames: int = 0
                 ) -> tuple[list[Crop], dict[str, Any]]:
    """The first crop of each of the first ``count`` tracks, from the pipeline's own source,
    tracker and cropper, and the source's stats. Used by ``vidqa plan`` and the experiments
    (validate, compress-report) so they see exactly the crops a run would send to the VLM.

    Stops reading as soon as ``count`` distinct tracks have a crop (or after ``max_frames``).
    A tracker can give one person a new id after losing them; taking the first tracks of a
    clip makes that unlikely.
    """
    once = dataclasses.replace(cfg, roi=dataclasses.replace(cfg.roi, reask_every=0,
                                                             reask_growth=0.0))
    with open_source(cfg.source, source_path(cfg.source)) as source:
        results = tracked(once, source, max_frames)
        chosen = distinct_tracks((crop for result in results for crop in result.crops), count)
        stats = source.stats()
    if not chosen:
        raise SourceError(f"no person crop found in {stats['source_id']} (frames read: "
                          f"{stats.get('frames_read')}): check the video, tracker.conf or "
                          f"roi.min_width/min_height")
    if len(chosen) < count:
        logger.warning("only {} distinct tracks found in {} (asked for {})", len(chosen),
                       stats["source_id"], count)
    return chosen, stats
