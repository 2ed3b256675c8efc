"""``run.engine: local`` with several stream processes (``run.processes``).

One Python process tracks about 60 frames per second in all, however many cores the machine
has: every stream's decoding, detection, tracking and sinks take turns at one interpreter lock.
With ``run.processes: K`` the run starts the VLM worker process
(:class:`~vidqa.vlm.worker.ProcessVlmService`) and K stream processes. Each runs its share of the
streams exactly as the one-process engine does (:class:`~vidqa.pipeline.Run`: threads, one
shared detector, the same files in ``run_dir/<id>/``) and asks the one worker through its own
:class:`~vidqa.vlm.worker.ServiceClient`, so batches still gather crops from every stream and a
question is profiled once for the run. This process writes the merged ``events.jsonl`` (the
stream processes forward their answers to it), waits, and writes the run's ``summary.json``.

Ctrl-C and SIGTERM stop every stream at its next frame, as in one process; a stream process
that dies is reported with its streams, and the others go on.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import queue
import signal
import threading
import time
from pathlib import Path
from typing import Any

import cv2
from loguru import logger

from vidqa.config import PipelineConfig, StreamConfig
from vidqa.pipeline import Run, all_questions, json_of, run_summary, vlm_service
from vidqa.run import LOG_NAME, Terminated, run_log, sigterm_raises
from vidqa.sinks import EventsSink, ForwardSink
from vidqa.storage import write_json
from vidqa.tracking import detector_key
from vidqa.vlm.worker import ClientEnd

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


def run_in_processes(cfg: PipelineConfig, run_dir: Path, processes: int) -> dict[str, Any]:
    """Every stream of ``cfg`` in ``processes`` stream processes; the run's summary."""
    return ProcessRun(cfg, run_dir, processes).run()


class ProcessRun:
    """The VLM worker, the stream processes and the merged events of one run."""

    def __init__(self, cfg: PipelineConfig, run_dir: Path, processes: int,
                 detect_in_worker: bool | None = None) -> None:
        self.cfg, self.run_dir = cfg, run_dir
        # On CUDA the worker detects for every stream process: one CUDA context on the GPU.
        # Processes that each own a context take turns on the GPU (time slices, no overlap).
        self.detect_in_worker = _trackers_on_cuda(cfg) if detect_in_worker is None \
            else detect_in_worker
        specs = cfg.stream_configs()
        self.groups = [specs[i::processes] for i in range(processes)]  # round robin
        context = multiprocessing.get_context("spawn")
        self._events, self._done = context.Queue(), context.Queue()
        self._controls = [context.Queue() for _ in self.groups]
        self._context = context

    def stop(self, reason: str = "stopped") -> None:
        """Stop every stream at its next frame (from any thread)."""
        for control in self._controls:
            control.put(reason)

    def run(self) -> dict[str, Any]:
        started, cfg, processes = time.perf_counter(), self.cfg, len(self.groups)
        logger.info("{} streams in {} processes, one VLM worker",
                    sum(map(len, self.groups)), processes)
        specs = cfg.stream_configs()
        detectors = list({detector_key(s.tracker): s.tracker for s in specs}.values()) \
            if self.detect_in_worker else []
        _, service, _ = vlm_service(dataclasses.replace(cfg.vlm, questions=all_questions(specs)),
                                    self.run_dir / LOG_NAME, processes, detectors,
                                    detection_workers(cfg.run.detection_workers, processes))
        threads = max(1, (os.cpu_count() or 1) // processes)
        workers = [self._context.Process(
            target=_stream_process, name=f"streams-{i + 1}",
            args=(dataclasses.replace(cfg, streams=tuple(group)), self.run_dir, i + 1,
                  service.client_end(i + 1), self._events, self._controls[i], self._done,
                  threads))
            for i, group in enumerate(self.groups)]
        merged = EventsSink(self.run_dir / "events.jsonl")
        writer = threading.Thread(target=_write_events, args=(self._events, merged),
                                  name="events")
        writer.start()
        reports: dict[int, tuple] = {}
        try:
            for worker in workers:
                worker.start()
            self._wait(workers, reports)
        finally:
            for worker in workers:
                worker.join()
            self._events.put(None)
            writer.join()
            merged.close()
            service.close()
        summaries, failed, detectors = _gather(self.groups, workers, reports, self.run_dir)
        vlm = {**service.stage_summary(), "service": service.summary()}
        detectors += [{"process": "worker", **d} for d in service.detection_summary()]
        summary = {**run_summary(cfg, self.run_dir, summaries, failed, vlm,
                                 time.perf_counter() - started),
                   "processes": processes, "detectors": detectors}
        write_json(self.run_dir / "summary.json", summary)
        return summary

    def _wait(self, workers: list, reports: dict[int, tuple]) -> None:
        """Collect each stream process's report; Ctrl-C or SIGTERM here stops every stream."""
        with sigterm_raises():
            try:
                _collect(workers, self._done, reports)
            except (KeyboardInterrupt, Terminated) as err:
                reason = "interrupted" if isinstance(err, KeyboardInterrupt) else "terminated"
                logger.warning("{}: stopping every stream", reason)
                self.stop(reason)
                _collect(workers, self._done, reports)


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


def _write_events(events: Any, merged: EventsSink) -> None:
    while (answers := events.get()) is not None:
        merged.write_answers(answers)


def _stream_process(cfg: PipelineConfig, run_dir: Path, index: int, end: ClientEnd,
                    events: Any, control: Any, done: Any, threads: int) -> None:
    """One stream process: its streams on threads, their crops to the VLM worker."""
    # Ctrl-C reaches the whole process group; the run's process decides and tells us (control),
    # so every stream stops once, the same way, and waits for its answers in flight.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    cv2.setNumThreads(threads)
    with run_log(run_dir):
        client = end.connect()
        try:
            run = Run.from_config(cfg, run_dir, client=client, merged=ForwardSink(events.put),
                                  threads=threads)
        except Exception as err:  # every stream of this process is reported, the run goes on
            logger.opt(exception=True).error("stream process {} cannot start: {}", index, err)
            done.put((index, {}, {s.id: str(err) for s in cfg.streams}, []))
            client.close()
            return
        threading.Thread(target=_stop_on_request, args=(control, run), daemon=True).start()
        try:
            summaries = run.run_streams()
        finally:
            client.close()
            for pipeline in run.pipelines:
                pipeline.tracker.close()
        done.put((index, summaries, run.failed, run.detectors()))


def _stop_on_request(control: Any, run: Run) -> None:
    run.stop(control.get())


def _trackers_on_cuda(cfg: PipelineConfig) -> bool:
    devices = {spec.tracker.device for spec in cfg.stream_configs()}
    if any(device.startswith("cuda") for device in devices):
        return True
    if "auto" not in devices:
        return False
    import torch

    return torch.cuda.is_available()

