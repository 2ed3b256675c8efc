"""The pipeline: per stream, source → person tracker → ROI cropper → VLM → sinks, composed as
generators; one VLM service answers every stream of the run.

:func:`vidqa.engines.run_pipeline` is what ``vidqa run`` calls; it drives a :class:`Run` (the
local engine) or the same streams on Ray. A :class:`Pipeline` is one stream's front half and its
outputs; :meth:`Pipeline.run` is the one place that catches everything for its stream: whatever
stops it (the source ends, Ctrl-C, SIGTERM, an exception in any stage), the sinks are closed —
the video is playable and every event is on disk — and ``summary.json`` records why and where
it ended. A :class:`Run` owns the model and the service, runs its streams (several on threads),
and one bad stream never stops the others.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import psutil
from loguru import logger
from tqdm import tqdm

from vidqa import assets
from vidqa.clock import StageClock
from vidqa.config import PipelineConfig, QuestionConfig, StreamConfig, TrackerConfig, VlmConfig
from vidqa.errors import VidqaError
from vidqa.messages import FrameResult
from vidqa.roi import RoiPolicy
from vidqa.run import (
    EXIT_CODES,
    LOG_NAME,
    SCHEMA_VERSION,
    RunCounts,
    Terminated,
    sigterm_raises,
)
from vidqa.sinks import (
    AnswerBoard,
    EventsSink,
    MotSink,
    SharedSink,
    SinkSet,
    StopRequested,
    VideoSink,
    WindowSink,
)
from vidqa.sources import Source, is_camera, is_live, open_source, source_path
from vidqa.storage import write_json
from vidqa.tracking import Detector, PersonTracker, RemoteDetector, detector_key
from vidqa.vlm.service import VlmService
from vidqa.vlm.stage import ServiceStage, VlmStage
from vidqa.vlm.worker import ProcessVlmService, ServiceClient

# How long a stream waits, after its last frame, for answers still with the VLM.
FLUSH_TIMEOUT_S = {"completed": None, "max_frames": None, "stopped": 30.0, "interrupted": 5.0,
                   "terminated": 5.0, "error": 5.0}


class Pipeline:
    """One stream's stages plus its output folder; :meth:`run` drives them and writes the
    stream's ``summary.json``."""

    def __init__(self, cfg: PipelineConfig, run_dir: Path, source: Source,
                 tracker: Callable[[Iterable], Iterator[FrameResult]], policy: RoiPolicy,
                 vlm_stage: VlmStage | ServiceStage, models: dict[str, Any],
                 stream_id: str = "0", extra_sinks: list | None = None,
                 rules: Any = None, zones: Any = None) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.source = source
        self.tracker = tracker
        self.policy = policy
        self.vlm_stage = vlm_stage
        self.models = models
        self.stream_id = stream_id
        self.extra_sinks = extra_sinks if extra_sinks is not None else []  # merged events, view
        self.rules = rules  # a vidqa.zones.RuleStage when the config has rules
        self.board = AnswerBoard(asking=lambda: getattr(vlm_stage, "pending", ()), zones=zones)
        self.stop_reason: str | None = None  # set by the run (another thread) to stop here
        self.on_end: list[Callable[[], None]] = []  # called when run() ends, e.g. close a service

    @classmethod
    def from_config(cls, cfg: PipelineConfig, run_dir: Path) -> Pipeline:
        """A single stream with its own model and service (tests and scripts; ``vidqa run``
        goes through :class:`Run`). The service is closed when the stream ends."""
        run = Run.from_config(cfg, run_dir)
        pipeline = run.pipelines[0]
        pipeline.on_end.append(run.service.close)
        return pipeline

    def sinks(self) -> SinkSet:
        sinks: list = list(self.extra_sinks)
        if self.cfg.sinks.events:
            sinks.append(EventsSink(self.run_dir / "events.jsonl"))
        if self.cfg.sinks.mot:
            sinks.append(MotSink(self.run_dir / "mot.txt"))
        if self.rules is not None:
            from vidqa.zones import AlertsSink

            sinks.append(AlertsSink(self.run_dir / "alerts.jsonl"))
        if self.cfg.sinks.video:
            sinks.append(VideoSink(self.run_dir / "annotated.mp4", self.board,
                                   self.cfg.sinks.codec))
        if self.cfg.sinks.window:
            sinks.append(WindowSink(self.board))
        return SinkSet(sinks, self.board)

    def results(self, clock: StageClock) -> Iterator[FrameResult]:
        """The composed stages, each wrapped by the clock."""
        frames = clock.wrap("source", self._tagged(self.source))
        if self.cfg.run.max_frames:
            frames = itertools.islice(frames, self.cfg.run.max_frames)
        tracked = clock.wrap("tracker", self.tracker(frames))
        cropped = clock.wrap("roi", self.policy(tracked))
        answered = clock.wrap("vlm", self.vlm_stage(cropped))
        return answered if self.rules is None else clock.wrap("rules", self.rules(answered))

    def run(self) -> dict[str, Any]:
        """Drive the stages to the end (or to the first stop) and write ``summary.json``."""
        clock, counts = StageClock(), RunCounts()
        started, end, error, crash = time.perf_counter(), "completed", None, None
        with sigterm_raises(), self.sinks() as sinks, self.source:
            try:
                for result in tqdm(self.results(clock), desc=f"stream {self.stream_id}",
                                   unit="f", total=self._expected_frames(), disable=None):
                    counts.add(result)
                    sinks.write(result)
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
            except Terminated:
                end, error = "terminated", "SIGTERM"
            except Exception as err:
                end, error = "error", f"{type(err).__name__}: {err}"
                logger.opt(exception=not isinstance(err, VidqaError)).error(
                    "stream {} failed at frame {}: {}", self.stream_id, counts.last_frame, err)
                crash = err
            streamed = time.perf_counter() - started
            self._flush(sinks, counts, end)
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

    def _flush(self, sinks: SinkSet, counts: RunCounts, end: str) -> None:
        """Answers still with the VLM when the frames ended: waited for, and written as events."""
        flush = getattr(self.vlm_stage, "flush", None)
        if flush is None:
            return
        try:
            late = flush(FLUSH_TIMEOUT_S[end])
        except Exception as err:  # the batch of a late answer failed: the run already ends
            logger.error("stream {}: answers still in flight were lost: {}", self.stream_id, err)
            return
        counts.add_answers(late)
        sinks.write_answers(late)

    def _expected_frames(self) -> int | None:
        total = self.source.stats().get("frame_count") or None
        if total and self.cfg.run.max_frames:
            return min(total, self.cfg.run.max_frames)
        return total or self.cfg.run.max_frames or None

    def _summary(self, clock: StageClock, counts: RunCounts, sinks: SinkSet, end: str,
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
            "rois": self.policy.rois_emitted,
            "answers": counts.answers,
            "answers_by_question": counts.by_question,
            "seconds": round(seconds, 3),
            "flush_s": round(seconds - streamed, 3),
            "fps": round(counts.frames / streamed, 3) if streamed > 0 else 0.0,
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
                        ("annotated.mp4", "events.jsonl", "mot.txt", "summary.json", LOG_NAME)},
            "config": self.cfg.to_dict(),
        }


class Run:
    """The model, the VLM service and every stream of one run."""

    def __init__(self, cfg: PipelineConfig, run_dir: Path, pipelines: list[Pipeline],
                 failed: dict[str, str], stage: VlmStage | None,
                 service: VlmService | ProcessVlmService, models: dict[str, Any],
                 view: Any = None) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.pipelines = pipelines
        self.failed = failed  # stream id -> why it could not start
        self.stage = stage  # None when the model lives in the worker process
        self.service = service
        self.models = models
        self.view = view  # the live web view, if the run serves one
        self.merged: EventsSink | None = None

    @classmethod
    def from_config(cls, cfg: PipelineConfig, run_dir: Path, view: Any = None,
                    client: ServiceClient | None = None, merged: Any = None,
                    threads: int | None = None) -> Run:
        """Open the streams' files, load the model once, then trackers and live sources.

        Checks that fail fast come first (files and MOT folders, the VLM id); live sources are
        opened last, so their readers do not start before the models are ready. In a
        multi-stream run a stream that cannot start is reported and the others run. Streams
        with the same detector settings share one :class:`~vidqa.tracking.Detector`.

        A stream process of ``run.processes`` passes the ``client`` of the run's VLM worker
        (no model is loaded here), the ``merged`` events sink that forwards to the run's one
        ``events.jsonl``, and its share of the CPU ``threads``.
        """
        specs, multi = cfg.stream_configs(), bool(cfg.streams)
        sources: dict[str, Source] = {}
        failed: dict[str, str] = {}
        try:
            for spec in specs:
                if not is_camera(spec.source):
                    _open(spec, sources, failed, multi, source_path(spec.source))
            if client is None:
                stage, service, info = vlm_service(
                    dataclasses.replace(cfg.vlm, questions=all_questions(specs)),
                    run_dir / LOG_NAME, live=any(is_live(spec.source) for spec in specs))
            else:
                stage, service, info = None, client, client.info
            trackers = _trackers([s for s in specs if s.id not in failed], threads, client)
            for spec in specs:
                if is_camera(spec.source):
                    _open(spec, sources, failed, multi, None)
        except BaseException:
            for source in sources.values():
                source.close()
            raise
        models = {"detector": next(iter(trackers.values())).detector if trackers else {},
                  "vlm": info}
        run = cls(cfg, run_dir, [], failed, stage, service, models, view)
        run.merged = merged
        run.pipelines = [run._pipeline(spec, sources[spec.id], trackers[spec.id], multi)
                         for spec in specs if spec.id in sources]
        if stage is not None:
            _announce_files(stage, cfg, [sources[s.id] for s in specs if s.id in sources])
        return run

    def _pipeline(self, spec: StreamConfig, source: Source, tracker: PersonTracker,
                  multi: bool) -> Pipeline:
        out_dir = self.run_dir / spec.id if multi else self.run_dir
        if multi and self.merged is None:
            self.merged = EventsSink(self.run_dir / "events.jsonl")
        extra = [SharedSink(self.merged)] if multi else []
        pipeline = stream_pipeline(self.cfg, spec, out_dir, source, tracker, self.service,
                                   self.models, extra)
        if self.view is not None:
            from vidqa.web import LiveViewSink

            pipeline.extra_sinks.append(LiveViewSink(self.view, spec.id, pipeline.board,
                                                     counters=lambda: self._counters(pipeline)))
        return pipeline

    def _counters(self, pipeline: Pipeline) -> dict[str, Any]:
        """What the live view shows of a stream besides its frames: drops, the VLM's queue and
        each question's phase (profiling, compressed, full)."""
        stage = pipeline.vlm_stage
        return {"frames_dropped": pipeline.source.stats().get("frames_dropped", 0),
                "vlm_queue": self.service.waiting, "vlm_in_flight": stage.in_flight,
                "tracks_waiting": len(stage.waiting),
                "phase": {a.question.label: getattr(a, "phase", "full")
                          for a in (self.stage.answerers if self.stage else ())}}

    def run(self) -> dict[str, Any]:
        """Every stream to its end; the service answers until the last one is done."""
        started = time.perf_counter()
        try:
            summaries = self.run_streams()
        finally:
            self.service.close()
            if self.merged is not None:
                self.merged.close()
        summary = self._summary(summaries, time.perf_counter() - started)
        write_json(self.run_dir / "summary.json", summary)
        return summary

    def stop(self, reason: str = "stopped") -> None:
        """Stop every stream at its next frame (from any thread)."""
        for pipeline in self.pipelines:
            pipeline.stop_reason = reason

    def run_streams(self) -> dict[str, dict[str, Any]]:
        """Every stream to its end (each writes its own summary); their summaries by id."""
        if not self.cfg.streams:
            return {"0": self._run_one(self.pipelines[0])}
        return self._run_all()

    def detectors(self) -> list[dict[str, Any]]:
        """How each of this process's detectors batched the streams' frames."""
        shared = {id(p.tracker.detect): p.tracker.detect for p in self.pipelines
                  if isinstance(getattr(p.tracker, "detect", None), Detector)}
        return [d.summary() for d in shared.values()]

    def _run_one(self, pipeline: Pipeline) -> dict[str, Any]:
        try:
            return pipeline.run()
        except BaseException:
            self.service.close()
            self._write_single(json_of(pipeline.run_dir / "summary.json"))
            raise

    def _run_all(self) -> dict[str, dict[str, Any]]:
        """Each stream on its own thread; Ctrl-C or SIGTERM here stops them all cleanly."""
        summaries: dict[str, dict[str, Any]] = {}
        threads = [threading.Thread(target=self._run_stream, args=(p, summaries),
                                    name=f"stream-{p.stream_id}", daemon=True)
                   for p in self.pipelines]
        for thread in threads:
            thread.start()
        with sigterm_raises():
            try:
                while any(thread.is_alive() for thread in threads):
                    for thread in threads:
                        thread.join(timeout=0.2)
            except (KeyboardInterrupt, Terminated) as err:
                reason = "interrupted" if isinstance(err, KeyboardInterrupt) else "terminated"
                logger.warning("{}: stopping every stream", reason)
                self.stop(reason)
                for thread in threads:
                    thread.join()
        return summaries

    def _run_stream(self, pipeline: Pipeline, summaries: dict[str, dict[str, Any]]) -> None:
        try:
            summaries[pipeline.stream_id] = pipeline.run()
        except Exception:  # logged and summarised by the pipeline; the other streams go on
            summaries[pipeline.stream_id] = json_of(pipeline.run_dir / "summary.json")

    def _vlm_summary(self) -> dict[str, Any]:
        stage = self.stage.summary() if self.stage else self.service.stage_summary()
        return {**stage, "service": self.service.summary()}

    def _summary(self, summaries: dict[str, dict[str, Any]], seconds: float) -> dict[str, Any]:
        summary = run_summary(self.cfg, self.run_dir, summaries, self.failed,
                              self._vlm_summary(), seconds)
        return {**summary, "detectors": self.detectors()} if self.cfg.streams else summary

    def _write_single(self, summary: dict[str, Any] | None) -> None:
        if summary is not None:
            vlm = self._vlm_summary()
            write_json(self.run_dir / "summary.json",
                       {**summary, "vlm": {**vlm, "stream": summary["vlm"]}})


def vlm_service(cfg: VlmConfig, log_path: Path, clients: int = 0,
                detectors: Sequence[TrackerConfig] = (), detection_workers: int = 1,
                live: bool = False
                ) -> tuple[VlmStage | None, VlmService | ProcessVlmService, Any]:
    """The model and its service: in a worker process (``vlm.worker``; auto = on CUDA, where the
    forward pass's Python would otherwise wait for the streams' interpreter lock, and for
    ``live`` streams, whose trackers a CPU model at idle priority leaves the cores to; always when
    ``clients`` stream processes will ask it too, and then it also runs ``detectors`` for
    them, in ``detection_workers`` processes), or on a thread of this process."""
    info = assets.resolve_vlm(cfg.model, cfg.revision)
    if clients or _worker(cfg, live) == "process":
        service = ProcessVlmService(cfg, info, log_path, clients, detectors,
                                    detection_workers).start()
        return None, service, service.info
    vlm = assets.load_vlm(cfg, info)
    stage = VlmStage(vlm, cfg)
    service = VlmService(stage.answer, cfg.batch_size, cfg.max_wait_ms, cfg.queue_size)
    return stage, service.start(), vlm.info


def _trackers(specs: list[StreamConfig], threads: int | None,
              client: ServiceClient | None = None) -> dict[str, PersonTracker]:
    """One tracker per stream. A stream detects through the run's detection worker when it
    runs a detector with the stream's settings (``client``), else streams with the same
    detector settings share one detector in this process."""
    remote = {detector_key(cfg): (index, stride, info) for index, (cfg, stride, info)
              in enumerate(client.end.detectors)} if client is not None else {}
    detectors: dict[tuple, Detector] = {}
    trackers = {}
    for spec in specs:
        key = detector_key(spec.tracker)
        if key in remote:
            index, stride, info = remote[key]
            detector = RemoteDetector(client.detect, index, spec.tracker, stride, info)
        elif key in detectors:
            detector = detectors[key]
        else:
            detector = detectors[key] = Detector(spec.tracker, threads)
        trackers[spec.id] = PersonTracker(spec.tracker, spec.source.reset_tracks_after_s,
                                          threads, detector)
    return trackers


def _worker(cfg: VlmConfig, live: bool) -> str:
    if cfg.worker != "auto":
        return cfg.worker
    import torch

    on_cuda = cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available())
    return "process" if on_cuda or live else "thread"


def _open(spec: StreamConfig, sources: dict[str, Source], failed: dict[str, str], multi: bool,
          path: Path | None) -> None:
    """Open one stream's source; in a multi-stream run a failure is recorded, not raised."""
    try:
        sources[spec.id] = open_source(spec.source, path)
    except VidqaError as err:
        if not multi:
            raise
        logger.error("stream {} cannot start and is skipped: {}", spec.id, err)
        failed[spec.id] = str(err)


def _zones_and_rules(cfg: PipelineConfig, stream_id: str) -> tuple[Any, Any]:
    """The zone map and the rule stage of a stream, or None for each the config lacks."""
    if not cfg.zones:
        return None, None
    from vidqa.zones import RuleEngine, RuleStage, ZoneMap

    rules = RuleStage(RuleEngine.from_config(cfg, stream_id)) if cfg.rules else None
    return ZoneMap(cfg.zones), rules


def stream_pipeline(cfg: PipelineConfig, spec: StreamConfig, out_dir: Path, source: Source,
                    tracker: Callable[[Iterable], Iterator[FrameResult]], service: Any,
                    models: dict[str, Any], extra_sinks: list) -> Pipeline:
    """One stream of a run, writing into ``out_dir``; its crops go to ``service`` (a
    :class:`VlmService`, or anything with its ``submit``, e.g. the Ray engine's client)."""
    cfg = dataclasses.replace(cfg, source=spec.source, tracker=spec.tracker, roi=spec.roi,
                              streams=(), vlm=dataclasses.replace(cfg.vlm,
                                                                  questions=spec.questions))
    out_dir.mkdir(parents=True, exist_ok=True)
    stage = ServiceStage(service, [q.question for q in spec.questions], live=is_live(spec.source))
    zones, rules = _zones_and_rules(cfg, spec.id)
    return Pipeline(cfg, out_dir, source, tracker, RoiPolicy(spec.roi, zones), stage, models,
                    stream_id=spec.id, extra_sinks=extra_sinks, rules=rules, zones=zones)


def run_summary(cfg: PipelineConfig, run_dir: Path, summaries: dict[str, dict[str, Any]],
                failed: dict[str, str], vlm: dict[str, Any], seconds: float) -> dict[str, Any]:
    """The run's ``summary.json``: one stream's own summary with the VLM's, or (several
    streams) the totals, each stream in brief and the streams that could not start."""
    if not cfg.streams:
        return {**summaries["0"], "vlm": {**vlm, "stream": summaries["0"]["vlm"]}}
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


def _announce_files(stage: VlmStage, cfg: PipelineConfig, sources: list[Source]) -> None:
    """Tell adaptive planning how much of the files is still to come (the longest file's
    seconds), so it never spends more on planning than the plan can return on them. Live
    streams have no end: planning then uses its horizon."""
    seconds = []
    for source in sources:
        stats = source.stats()
        frames, fps = stats.get("frame_count") or 0, stats.get("fps") or 0
        if stats.get("is_live") or not frames or not fps:
            return
        if cfg.run.max_frames:
            frames = min(frames, cfg.run.max_frames)
        seconds.append(frames / fps)
    if seconds:
        stage.expect(seconds=max(seconds))


def all_questions(specs: list[StreamConfig]) -> tuple[QuestionConfig, ...]:
    """Every question asked by any stream, once, in order of first appearance."""
    seen: dict[str, QuestionConfig] = {}
    for spec in specs:
        for question in spec.questions:
            seen.setdefault(question.question, question)
    return tuple(seen.values())


def _run_end(ends: set[str]) -> str:
    for reason in ("terminated", "interrupted"):
        if reason in ends:
            return reason
    if "error" in ends:
        return "partial" if ends - {"error"} else "error"
    return "completed" if ends <= {"completed", "max_frames"} else "stopped"


def _brief(summary: dict[str, Any]) -> dict[str, Any]:
    keys = ("end_reason", "error", "frames", "tracks", "rois", "answers", "fps", "flush_s",
            "source", "vlm", "tracker_resets", "answers_by_question")
    return {key: summary[key] for key in keys if key in summary}


def json_of(path: Path) -> dict[str, Any] | None:
    """A summary already written, or None when there is none (or it is unreadable)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _asdict(info: Any) -> dict[str, Any]:
    return dataclasses.asdict(info) if dataclasses.is_dataclass(info) else dict(info)
