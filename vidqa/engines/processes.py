"""``run.engine: local`` with several stream processes (``run.processes``).

One Python process tracks about 60 frames per second in all, however many cores the machine
has: every stream's decoding, detection, tracking and sinks take turns at one interpreter lock.
With ``run.processes: K`` the run starts the model worker process
(:class:`~vidqa.serving.worker.WorkerService`), on CUDA the detection workers
(:class:`~vidqa.detection.transport.DetectionWorker`), and K stream processes. Each runs its
share of the streams exactly as the one-process engine does
(:class:`~vidqa.engines.local.LocalRun`: threads, one shared detector or the detection worker,
the same files in ``run_dir/<id>/``) and asks the one model worker through its own
:class:`~vidqa.serving.worker.WorkerClient`, so batches still gather crops from every stream and
a question is profiled once for the run. This process writes the merged ``events.jsonl`` (the
stream processes forward their answers to it), waits, and writes the run's ``summary.json``.

Ctrl-C and SIGTERM stop every stream at its next frame, as in one process; a stream process
that dies is reported with its streams, and the others go on. A run served live (``--serve``,
``--metrics``) serves here; the stream processes relay what it shows
(:mod:`vidqa.web.relay`, over a :class:`~vidqa.web.relay.QueueTransport`).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import queue
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
from loguru import logger

from vidqa.config import PipelineConfig, StreamConfig
from vidqa.detection.detector import detector_key
from vidqa.detection.transport import DetectionEnd, DetectionWorker
from vidqa.engines.common import (
    files_seconds,
    json_of,
    run_summary,
    run_vlm_config,
    wait_or_stop,
)
from vidqa.engines.local import LocalRun, open_store, start_service
from vidqa.run import LOG_NAME, run_log
from vidqa.serving.worker import ClientEnd
from vidqa.sources import is_live, open_source, source_path
from vidqa.storage import write_json
from vidqa.store import EventStore
from vidqa.vlm.features import feature_target
from vidqa.workers import run_for_owner

if TYPE_CHECKING:
    from vidqa.web.relay import RelayEnd, RelayHost

SPARE_CORES = 2  # auto: cores left to the VLM worker and this process
PROCESSES_PER_DETECTION_WORKER = 8  # auto: one detection worker's Python keeps up with these


def processes_for(cfg: PipelineConfig) -> int:
    """How many stream processes a run uses: ``run.processes``, or auto — one per stream up to
    the cores less :data:`SPARE_CORES` when the trackers run on CUDA (their Python is then the
    bottleneck), else 1 (on the CPU the trackers' forward passes already use every core)."""
    streams = len(cfg.streams)
    if streams < 2:
        return 1
    if cfg.run.processes:
        return min(cfg.run.processes, streams)
    if not _trackers_on_cuda(cfg):
        return 1
    return max(1, min(streams, (os.cpu_count() or 1) - SPARE_CORES))


def detection_workers(setting: int, processes: int) -> int:
    """``run.detection_workers``, or auto: one per :data:`PROCESSES_PER_DETECTION_WORKER`
    stream processes (a worker's one thread gathers, uploads and answers every frame)."""
    return setting or -(-processes // PROCESSES_PER_DETECTION_WORKER)


def run_in_processes(cfg: PipelineConfig, run_dir: Path, processes: int, view: Any = None,
                     monitor: Any = None) -> dict[str, Any]:
    """Every stream of ``cfg`` in ``processes`` stream processes; the run's summary. ``view``
    and ``monitor``: the run's live view and metrics, when it serves them."""
    return ProcessRun(cfg, run_dir, processes, view=view, monitor=monitor).run()


class ProcessRun:
    """The model worker, the detection workers, the stream processes and the event store of one
    run (the stream processes send their records here)."""

    def __init__(self, cfg: PipelineConfig, run_dir: Path, processes: int,
                 detect_in_worker: bool | None = None, view: Any = None,
                 monitor: Any = None) -> None:
        self.cfg, self.run_dir = cfg, run_dir
        # On CUDA the worker detects for every stream process: one CUDA context on the GPU.
        # Processes that each own a context take turns on the GPU (time slices, no overlap).
        # Elsewhere only when asked for (run.detection_workers > 0).
        self.detect_in_worker = (_trackers_on_cuda(cfg) or cfg.run.detection_workers > 0) \
            if detect_in_worker is None else detect_in_worker
        specs = cfg.stream_configs()
        self.groups = [specs[i::processes] for i in range(processes)]  # round robin
        context = multiprocessing.get_context("spawn")
        self._events, self._done = context.Queue(), context.Queue()
        self._controls = [context.Queue() for _ in self.groups]
        self._context = context
        self.view, self.monitor = view, monitor  # what the run serves, if it serves
        self.stopping = False  # the run was stopped: what the model still holds is abandoned

    def stop(self, reason: str = "stopped") -> None:
        """Stop every stream at its next frame (from any thread)."""
        self.stopping = True
        for control in self._controls:
            control.put(reason)

    def run(self) -> dict[str, Any]:
        started, cfg, processes = time.perf_counter(), self.cfg, len(self.groups)
        logger.info("{} streams in {} processes, one model worker",
                    sum(map(len, self.groups)), processes)
        log = self.run_dir / LOG_NAME
        store = open_store(cfg, self.run_dir)
        try:
            _, service, _ = start_service(run_vlm_config(cfg), log, processes,
                                          features=feature_target(cfg, store))
        except BaseException:
            store.close("error")
            raise
        detection = self._start_detection(log) if self.detect_in_worker else []
        seconds = _files_seconds(cfg)
        if seconds is not None:
            service.expect(seconds)
        threads = max(1, (os.cpu_count() or 1) // processes)
        relay = self._relay()
        workers = [self._context.Process(
            target=_stream_process, name=f"streams-{i + 1}",
            args=(dataclasses.replace(cfg, streams=tuple(group)), self.run_dir, i + 1,
                  service.client_end(i + 1), self._events, self._controls[i], self._done,
                  threads, detection[i % len(detection)].end(i) if detection else None,
                  relay.end() if relay is not None else None))
            for i, group in enumerate(self.groups)]
        if self.monitor is not None:
            self.monitor.service, self.monitor.store = service, store
        writer = threading.Thread(target=_forward_records, args=(self._events, store),
                                  name="records")
        writer.start()
        reports: dict[int, tuple] = {}
        try:
            if relay is not None:
                relay.start()
            for worker in workers:
                worker.start()
            wait_or_stop(lambda: _collect(workers, self._done, reports), self.stop)
        except BaseException:
            self.stopping = True
            raise
        finally:
            for worker in workers:
                worker.join()
            if relay is not None:
                relay.close()
            self._events.put(None)
            writer.join()
            for worker in detection:
                worker.close()
            service.close(abandon=self.stopping)
            store.close("stopped" if self.stopping else None)  # the summary follows if it can
        summaries, failed, detectors = _gather(self.groups, workers, reports, self.run_dir)
        vlm = {**service.answerer_summary(), "service": service.summary()}
        detectors += [{"process": "worker", "worker": index, **d}
                      for index, worker in enumerate(detection) for d in worker.summary]
        summary = {**run_summary(cfg, self.run_dir, summaries, failed, vlm,
                                 time.perf_counter() - started),
                   "processes": processes, "detectors": detectors, "store": store.summary()}
        store.record_summary(summary)
        write_json(self.run_dir / "summary.json", summary)
        return summary

    def _relay(self) -> RelayHost | None:
        """What the stream processes relay to the live view and the metrics, when served."""
        if self.view is None and self.monitor is None:
            return None
        from vidqa.web.relay import QueueTransport, RelayHost  # only a served run needs it

        specs = self.cfg.stream_configs()
        transport = QueueTransport(self._context, [spec.id for spec in specs])
        return RelayHost(transport, specs, self.view, self.monitor)

    def _start_detection(self, log: Path) -> list[DetectionWorker]:
        """The detection workers, one per :data:`PROCESSES_PER_DETECTION_WORKER` stream
        processes (``run.detection_workers``), each serving every detector of the run."""
        specs = self.cfg.stream_configs()
        configs = list({detector_key(s.tracker): s.tracker for s in specs}.values())
        count = detection_workers(self.cfg.run.detection_workers, len(self.groups))
        workers = [DetectionWorker(configs, len(self.groups), log) for _ in range(count)]
        try:
            for worker in workers:
                worker.start()
        except BaseException:
            for worker in workers:
                worker.close()
            raise
        return workers


def _collect(workers: list, done: Any, reports: dict[int, tuple]) -> None:
    while len(reports) < len(workers):
        try:
            report = done.get(timeout=0.5)
        except queue.Empty:
            if not any(w.is_alive() for w in workers):
                try:  # a last report may still be in the pipe
                    report = done.get(timeout=1.0)
                except queue.Empty:
                    return
            else:
                continue
        reports[report[0]] = report


def _gather(groups: list[list[StreamConfig]], workers: list, reports: dict[int, tuple],
            run_dir: Path) -> tuple[dict[str, Any], dict[str, str], list[dict[str, Any]]]:
    """Per stream its summary, the streams that could not start, and each process's
    detector batching; the streams of a process that died are summarised from their files."""
    summaries: dict[str, Any] = {}
    failed: dict[str, str] = {}
    detectors: list[dict[str, Any]] = []
    for index, (group, worker) in enumerate(zip(groups, workers, strict=True), start=1):
        if index in reports:
            _, done_summaries, done_failed, done_detectors = reports[index]
            summaries.update(done_summaries)
            failed.update(done_failed)
            detectors += [{"process": index, **d} for d in done_detectors]
            continue
        why = f"its stream process exited with code {worker.exitcode}"
        logger.error("streams {} lost: {}", [s.id for s in group], why)
        for spec in group:
            summary = json_of(run_dir / spec.id / "summary.json")
            if summary is None:
                failed[spec.id] = why
            else:
                summaries[spec.id] = summary
    return summaries, failed, detectors


def _forward_records(records: Any, store: EventStore) -> None:
    """The stream processes' records into the run's store, until a None."""
    while (batch := records.get()) is not None:
        store.put_many(batch)


def _stream_process(cfg: PipelineConfig, run_dir: Path, index: int, end: ClientEnd,
                    events: Any, control: Any, done: Any, threads: int,
                    detection_end: DetectionEnd | None, relay_end: RelayEnd | None) -> None:
    """One stream process: its streams on threads, their crops to the model worker (and
    their frames to a detection worker, when the run has one, and what the live view and the
    metrics show to the run's process, when it serves them)."""
    # Ctrl-C reaches the whole process group; the run's process decides and tells us (control),
    # so every stream stops once, the same way, and waits for its answers in flight.
    run_for_owner()
    cv2.setNumThreads(threads)
    with run_log(run_dir):
        client = end.connect()
        detection = detection_end.connect() if detection_end is not None else None
        relay = relay_end.connect() if relay_end is not None else None
        try:
            run = LocalRun.from_config(cfg, run_dir, client=client, send=events.put,
                                       threads=threads, detection=detection,
                                       view=getattr(relay, "view", None),
                                       monitor=getattr(relay, "monitor", None))
        except Exception as err:  # every stream of this process is reported, the run goes on
            logger.opt(exception=True).error("stream process {} cannot start: {}", index, err)
            done.put((index, {}, {s.id: str(err) for s in cfg.streams}, []))
            _close(client, detection, relay)
            return
        threading.Thread(target=_stop_on_request, args=(control, run), daemon=True).start()
        try:
            summaries = run.run_streams()
        finally:
            for pipeline in run.pipelines:
                pipeline.tracker.close()
            _close(client, detection, relay)
        done.put((index, summaries, run.failed, run.detectors()))


def _stop_on_request(control: Any, run: LocalRun) -> None:
    run.stop(control.get())


def _close(*clients: Any) -> None:
    for client in clients:
        if client is not None:
            client.close()


def _files_seconds(cfg: PipelineConfig) -> float | None:
    """:func:`~vidqa.engines.common.files_seconds` of the run's files, each opened for its
    length (the stream processes open them again to read them)."""
    specs, stats = cfg.stream_configs(), []
    if any(is_live(spec.source) for spec in specs):
        return None  # a live stream has no end
    for spec in specs:
        try:
            with open_source(spec.source, source_path(spec.source)) as source:
                stats.append(source.stats())
        except Exception:  # its stream process reports it; the others' lengths still count
            continue
    return files_seconds(specs, stats, cfg.run.max_frames)


def _trackers_on_cuda(cfg: PipelineConfig) -> bool:
    devices = {spec.tracker.device for spec in cfg.stream_configs()}
    if any(device.startswith("cuda") for device in devices):
        return True
    if "auto" not in devices:
        return False
    import torch

    return torch.cuda.is_available()

