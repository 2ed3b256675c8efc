"""A run's folder and its life: the folder is created (never overwritten unless asked), owns
the log from the first line, turns SIGTERM into a clean stop, counts frames and answers, and
ends with a summary whatever stopped the run."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from loguru import logger

from vidqa.config import PipelineConfig
from vidqa.errors import OutputError
from vidqa.messages import Answer, FrameResult

SCHEMA_VERSION = 5  # of summary.json and events.jsonl; the README lists what changed
LOG_NAME = "vidqa.log"
# "partial": some streams of a multi-stream run failed while others ran to their end.
EXIT_CODES = {"completed": 0, "max_frames": 0, "stopped": 0, "interrupted": 130,
              "terminated": 143, "error": 1, "partial": 1}


class Terminated(Exception):
    """SIGTERM arrived; raised in the main thread so the run ends like a Ctrl-C."""


def prepare_run_dir(cfg: PipelineConfig, out: Path | None = None,
                    continuable: bool = False) -> Path:
    """``out`` or ``run.out_dir/run.name``; refuses an existing non-empty one unless overwrite.

    A ``continuable`` run (every stream records in segments: nothing of an earlier run is ever
    rewritten) continues a folder an earlier vidqa run left: a new run in the same store."""
    run_dir = Path(out) if out is not None else Path(cfg.run.out_dir) / cfg.run.name
    if run_dir.exists() and any(run_dir.iterdir()):
        if cfg.run.overwrite:
            shutil.rmtree(run_dir)
        elif continuable and (run_dir / LOG_NAME).is_file():
            logger.info("{} holds an earlier run of these cameras: this run continues it",
                        run_dir)
        else:
            raise OutputError(f"run directory {run_dir} already exists: pass --overwrite, "
                              f"--out DIR or --set run.name=NEW_NAME")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.touch()
        probe.unlink()
    except OSError as err:
        raise OutputError(f"cannot write to run directory {run_dir}: {err.strerror} — choose "
                          f"another with --out DIR") from None
    return run_dir


@contextmanager
def run_log(run_dir: Path) -> Iterator[Path]:
    """Everything logged inside the block also goes to ``run_dir/vidqa.log``: the models that
    were resolved and why, stand-in warnings, source problems, every frame-loop message."""
    path = run_dir / LOG_NAME
    sink_id = logger.add(path, level="INFO", enqueue=False)
    try:
        yield path
    finally:
        logger.remove(sink_id)


@contextmanager
def sigterm_raises() -> Iterator[None]:
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


def exit_on_second_signal() -> None:
    """After the first Ctrl-C or SIGTERM the run stops in seconds; a second one ends the process
    at once, without a traceback (what is committed to the store stays; the rest is lost)."""
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum: int, frame: Any) -> None:
        name = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
        sys.stderr.write(f"\nvidqa: second {name}: exiting now\n")
        sys.stderr.flush()
        os._exit(EXIT_CODES["interrupted" if signum == signal.SIGINT else "terminated"])

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def exit_now(code: int) -> None:
    """End a stopped run's process at once. Everything is on disk by then (the store closed,
    the videos released, the summary written); the interpreter's own teardown of torch and
    the worker queues would add seconds to a Ctrl-C that must take seconds in all."""
    logger.remove()  # closes the log files
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class StreamCounts:
    """Frames and answers seen by the sinks, and a progress line when no bar is shown."""

    def __init__(self) -> None:
        self.frames = 0
        self.last_frame: int | None = None
        self.answers = 0
        self.by_question: dict[str, dict[str, int]] = {}
        self.logged_at = time.perf_counter()

    def add(self, result: FrameResult) -> None:
        self.frames += 1
        self.last_frame = result.frame.frame_index
        self.add_answers(result.answers)

    def add_answers(self, answers: Sequence[Answer]) -> None:
        """Answers that arrived after the last frame (no frame to count)."""
        for answer in answers:
            self.answers += 1
            tally = self.by_question.setdefault(answer.question, {})
            key = answer.answer if answer.p_yes is not None else "text"
            tally[key] = tally.get(key, 0) + 1

    def log_progress(self, every_s: float, tracks: int) -> None:
        """A progress line every ``every_s`` seconds when stderr is not a terminal."""
        now = time.perf_counter()
        if sys.stderr.isatty() or now - self.logged_at < every_s:
            return
        self.logged_at = now
        logger.info("frame {}: {} frames, {} tracks, {} answers", self.last_frame, self.frames,
                    tracks, self.answers)
