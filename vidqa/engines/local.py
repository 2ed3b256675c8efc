"""``run.engine: local``: every stream of the run on a thread of this process, and one model
service answering them all (the model on a thread here, or in a worker process).

A stream process of ``run.processes`` (:mod:`vidqa.engines.processes`) runs its share of the
streams the same way, through a :class:`~vidqa.serving.worker.WorkerClient` of the run's one
model worker instead of a model of its own.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from vidqa import assets
from vidqa.config import PipelineConfig, StreamConfig, VlmConfig
from vidqa.detection.detector import Detector, detector_key
from vidqa.detection.transport import DetectionClient, RemoteDetector
from vidqa.engines.common import (
    files_seconds,
    json_of,
    open_or_skip,
    run_summary,
    run_vlm_config,
    segmented,
    serve_stream,
    wait_or_stop,
    write_single,
)
from vidqa.pipeline import WAIT_FOR_ALL, Pipeline, Send, stream_pipeline
from vidqa.run import LOG_NAME
from vidqa.serving.base import AnswerService
from vidqa.serving.batching import BatchingService
from vidqa.serving.worker import WorkerClient, WorkerService
from vidqa.sources import Source, is_camera, is_live, source_path
from vidqa.storage import write_json
from vidqa.store import EventStore
from vidqa.tracking import PersonTracker
from vidqa.vlm.batch import BatchAnswerer
from vidqa.vlm.features import FeatureTarget, feature_target
from vidqa.vlm.loading import load_vlm


class LocalRun:
    """The model service and every stream of one run (or of one stream process)."""

    def __init__(self, cfg: PipelineConfig, run_dir: Path, pipelines: list[Pipeline],
                 failed: dict[str, str], answerer: BatchAnswerer | None,
                 service: AnswerService, models: dict[str, Any], send: Send,
                 store: EventStore | None = None, view: Any = None, monitor: Any = None
                 ) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.pipelines = pipelines
        self.failed = failed  # stream id -> why it could not start
        self.answerer = answerer  # None when the model lives in a worker process
        self.service = service
        self.models = models
        self.send = send  # records for the run's event store
        self.store = store  # the store, when this process holds it
        self.view = view  # the live web view, if the run serves one
        self.monitor = monitor  # what /metrics and /healthz report, if the run serves them
        if monitor is not None and store is not None:  # else the run's process reports them
            monitor.service, monitor.store = service, store

    @classmethod
    def from_config(cls, cfg: PipelineConfig, run_dir: Path, view: Any = None,
                    client: WorkerClient | None = None, send: Send | None = None,
                    threads: int | None = None, detection: DetectionClient | None = None,
                    monitor: Any = None) -> LocalRun:
        """Open the streams' files, load the model once, then trackers and live sources.

        Checks that fail fast come first (files and MOT folders, the VLM id); live sources are
        opened last, so their readers do not start before the models are ready. In a
        multi-stream run a stream that cannot start is reported and the others run. Streams
        with the same detector settings share one :class:`~vidqa.detection.detector.Detector`.

        A stream process of ``run.processes`` passes the ``client`` of the run's model worker
        (no model is loaded here), ``send``, which forwards its records to the run's event
        store, its share of the CPU ``threads`` and, when the run detects in a detection
        worker, its ``detection`` client.
        """
        specs, multi = cfg.stream_configs(), bool(cfg.streams)
        sources: dict[str, Source] = {}
        failed: dict[str, str] = {}
        store = open_store(cfg, run_dir) if send is None else None  # a bad path fails first
        try:
            for spec in specs:
                if not is_camera(spec.source):
                    _open(spec, sources, failed, multi, source_path(spec.source))
            if client is None:
                answerer, service, info = start_service(
                    run_vlm_config(cfg), run_dir / LOG_NAME,
                    live=any(is_live(spec.source) for spec in specs),
                    features=feature_target(cfg, store))
                seconds = files_seconds(specs, [s.stats() for s in sources.values()],
                                        cfg.run.max_frames)
                if seconds is not None:
                    service.expect(seconds)
            else:
                answerer, service, info = None, client, client.info
            trackers = _trackers([s for s in specs if s.id not in failed], threads, detection)
            for spec in specs:
                if is_camera(spec.source):
                    _open(spec, sources, failed, multi, None)
        except BaseException:
            for source in sources.values():
                source.close()
            if store is not None:
                store.close("error")
            raise
        models = {"detector": next(iter(trackers.values())).detector.info if trackers else {},
                  "vlm": info}
        if store is not None:
            send = store.put_many
        run = cls(cfg, run_dir, [], failed, answerer, service, models, send, store, view,
                  monitor)
        run.pipelines = [run._pipeline(spec, sources[spec.id], trackers[spec.id], multi)
                         for spec in specs if spec.id in sources]
        return run

    def _pipeline(self, spec: StreamConfig, source: Source, tracker: PersonTracker,
                  multi: bool) -> Pipeline:
        out_dir = self.run_dir / spec.id if multi else self.run_dir
        pipeline = stream_pipeline(self.cfg, spec, out_dir, source, tracker, self.service,
                                   self.models, self.send, [])
        serve_stream(pipeline, spec, self.view, self.monitor, self.service, self.answerer)
        return pipeline

    def run(self) -> dict[str, Any]:
        """Every stream to its end; the service answers until the last one is done."""
        started = time.perf_counter()
        try:
            summaries = self.run_streams()
        except BaseException:
            self.service.close(abandon=True)
            if self.store is not None:
                self.store.close("error")
            raise
        # after a stop, what the model still holds is abandoned, not answered
        self.service.close(abandon=not ran_to_end(summaries))
        summary = run_summary(self.cfg, self.run_dir, summaries, self.failed,
                              self._vlm_summary(), time.perf_counter() - started)
        if self.cfg.streams:
            summary["detectors"] = self.detectors()
        if self.store is not None:
            self.store.close(summary["end_reason"], summary)
            summary["store"] = self.store.summary()
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
        summaries: dict[str, dict[str, Any]] = {}
        threads = [threading.Thread(target=self._run_stream, args=(p, summaries),
                                    name=f"stream-{p.stream_id}", daemon=True)
                   for p in self.pipelines]
        for thread in threads:
            thread.start()
        wait_or_stop(lambda: _join(threads), self.stop)
        return summaries

    def detectors(self) -> list[dict[str, Any]]:
        """How each of this process's detectors batched the streams' frames."""
        shared = {id(p.tracker.detector): p.tracker.detector for p in self.pipelines
                  if isinstance(getattr(p.tracker, "detector", None), Detector)}
        return [d.summary() for d in shared.values()]

    def _run_one(self, pipeline: Pipeline) -> dict[str, Any]:
        try:
            return pipeline.run()
        except BaseException:
            self.service.close()
            write_single(self.run_dir, self._vlm_summary())
            raise

    def _run_stream(self, pipeline: Pipeline, summaries: dict[str, dict[str, Any]]) -> None:
        try:
            summaries[pipeline.stream_id] = pipeline.run()
        except Exception:  # logged and summarised by the pipeline; the other streams go on
            summaries[pipeline.stream_id] = json_of(pipeline.run_dir / "summary.json")

    def _vlm_summary(self) -> dict[str, Any]:
        answerer = self.answerer.summary() if self.answerer else self.service.answerer_summary()
        return {**answerer, "service": self.service.summary()}


def single_stream(cfg: PipelineConfig, run_dir: Path) -> Pipeline:
    """A one-stream run's pipeline with its own model and service, closed when the stream
    ends (tests and scripts; ``vidqa run`` drives a whole :class:`LocalRun`)."""
    run = LocalRun.from_config(cfg, run_dir)
    pipeline = run.pipelines[0]
    pipeline.on_end.append(run.service.close)
    pipeline.on_end.append(run.store.close)
    return pipeline


def open_store(cfg: PipelineConfig, run_dir: Path) -> EventStore:
    """The run's event store, open; several streams also get the merged ``events.jsonl``
    (unless they record in segments: then the store is the merged record)."""
    merged = bool(cfg.streams) and cfg.sinks.events and not segmented(cfg)
    return EventStore(cfg, run_dir, run_dir / "events.jsonl" if merged else None).open()


def ran_to_end(summaries: dict[str, dict[str, Any]]) -> bool:
    """Every stream ran to its end (its answers were all waited for)."""
    return bool(summaries) and all(s.get("end_reason") in WAIT_FOR_ALL
                                   for s in summaries.values())



def start_service(cfg: VlmConfig, log_path: Path, clients: int = 0, live: bool = False,
                  features: FeatureTarget | None = None
                  ) -> tuple[BatchAnswerer | None, AnswerService, Any]:
    """The model and its service: (the batch answerer when it runs here, the service, the
    model's info). In a worker process (``vlm.worker``; auto = on CUDA, where the forward
    pass's Python would otherwise wait for the streams' interpreter lock, and for ``live``
    streams, whose trackers a CPU model at idle priority leaves the cores to; always when
    ``clients`` stream processes will ask it too), or on a thread of this process.
    ``features``: where the model keeps each crop's vision features (``store.features``)."""
    info = assets.resolve_vlm(cfg.model, cfg.revision)
    if clients or _worker(cfg, live) == "process":
        service = WorkerService(cfg, info, log_path, clients, features).start()
        return None, service, service.info
    vlm = load_vlm(cfg, info)
    answerer = BatchAnswerer(vlm, cfg, features=features)
    service = BatchingService(answerer.answer, cfg.batch_size, cfg.max_wait_ms, cfg.queue_size,
                              expect=lambda seconds: answerer.expect(seconds=seconds),
                              flush=answerer.flush)
    return answerer, service.start(), vlm.info


def _trackers(specs: list[StreamConfig], threads: int | None,
              detection: DetectionClient | None = None) -> dict[str, PersonTracker]:
    """One tracker per stream. A stream detects through the run's detection worker when it
    runs a detector with the stream's settings (``detection``), else streams with the same
    detector settings share one detector in this process."""
    remote = {detector_key(cfg): (index, stride, info) for index, (cfg, stride, info)
              in enumerate(detection.end.detectors)} if detection is not None else {}
    detectors: dict[tuple, Detector] = {}
    trackers = {}
    for spec in specs:
        key = detector_key(spec.tracker)
        if key in remote:
            index, stride, info = remote[key]
            detector = RemoteDetector(detection.detect, index, spec.tracker, stride, info)
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
    source = open_or_skip(spec, path, failed, multi)
    if source is not None:
        sources[spec.id] = source


def _join(threads: list[threading.Thread]) -> None:
    while any(thread.is_alive() for thread in threads):  # short joins: signals get through
        for thread in threads:
            thread.join(timeout=0.2)
