"""Benchmark: what ``vidqa run --serve`` costs a run.

The same run (the sample clip read as a file, N frames, the stand-in VLM or ``--model``) in one
process, without a server and with one that a browser-like client watches: a thread reading the
MJPEG video and a thread reading the SSE event feed, as the page does. A short warm-up run goes
first and is not reported; with ``--repeats`` the two modes alternate, so a machine whose load
drifts penalises both alike. fps is the run's own (frames / frame-loop seconds, from
summary.json); CPU is the process's user+system seconds for the whole run, server included.
Adaptive compression is off: its plan cache would let every run after the first skip the
profiling that the first one paid for.

    python tools/bench_serve.py --frames 150
    python tools/bench_serve.py --frames 150 --repeats 2 --model HuggingFaceTB/SmolVLM-256M-Instruct
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
from loguru import logger

from vidqa.config import load_config
from vidqa.engines import run_pipeline
from vidqa.run import prepare_run_dir

MODES = ("off", "serve+client")


@dataclass
class Client:
    """A browser stand-in: counts the MJPEG parts and SSE messages it reads until stopped."""

    base: str
    stop: threading.Event = field(default_factory=threading.Event)
    frames: int = 0
    events: int = 0

    def start(self) -> list[threading.Thread]:
        threads = [threading.Thread(target=self._read, args=(path, marker), daemon=True)
                   for path, marker in (("streams/0/video", b"--vidqaframe"), ("events", b"data:"))]
        for thread in threads:
            thread.start()
        return threads

    def _read(self, path: str, marker: bytes) -> None:
        """Connect (retrying until the stream exists) and read until the server closes."""
        while not self.stop.is_set():
            try:
                with httpx.stream("GET", self.base + path, timeout=None) as response:
                    if response.status_code != 200:  # 404 until the run's first frame
                        time.sleep(0.1)
                        continue
                    for chunk in response.iter_bytes():
                        self._count(marker, chunk.count(marker))
                return
            except httpx.TransportError:
                time.sleep(0.1)

    def _count(self, marker: bytes, found: int) -> None:
        if marker == b"data:":
            self.events += found
        else:
            self.frames += found


@dataclass(frozen=True)
class Result:
    mode: str
    frames: int
    answers: int
    loop_s: float
    fps: float
    cpu_s: float
    client_frames: int = 0
    client_events: int = 0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_once(frames: int, model: str, mode: str, out: Path) -> Result:
    """One run of ``frames`` frames; with ``serve+client`` a client watches it throughout."""
    cfg = load_config(None, [f"vlm.model={model}", f"run.max_frames={frames}",
                             "vlm.adaptive.enabled=false"])
    run_dir = prepare_run_dir(cfg, out / f"{mode}-{time.monotonic_ns()}")
    serve, client, threads = None, None, []
    if mode == "serve+client":
        serve = ("127.0.0.1", free_port())
        client = Client(f"http://127.0.0.1:{serve[1]}/")
        threads = client.start()
    cpu = psutil.Process().cpu_times()
    summary = run_pipeline(cfg, run_dir, serve=serve)
    after = psutil.Process().cpu_times()
    if client is not None:
        client.stop.set()
        for thread in threads:
            thread.join(timeout=10)
    return Result(mode, summary["frames"], summary["answers"], summary["seconds"],
                  summary["fps"], (after.user + after.system) - (cpu.user + cpu.system),
                  client.frames if client else 0, client.events if client else 0)


def table(results: list[Result]) -> str:
    lines = [f"{'mode':<14}{'frames':>7}{'answers':>8}{'loop s':>9}{'fps':>8}{'CPU s':>8}"
             f"{'client frames':>15}{'client events':>15}"]
    for r in results:
        lines.append(f"{r.mode:<14}{r.frames:>7}{r.answers:>8}{r.loop_s:>9.1f}{r.fps:>8.2f}"
                     f"{r.cpu_s:>8.1f}{r.client_frames:>15}{r.client_events:>15}")
    fps = {m: statistics.mean(r.fps for r in results if r.mode == m) for m in MODES}
    cpu = {m: statistics.mean(r.cpu_s for r in results if r.mode == m) for m in MODES}
    ratio = fps["serve+client"] / fps["off"]
    lines.append(f"mean fps: off {fps['off']:.2f}, served {fps['serve+client']:.2f}; served/off "
                 f"fps {ratio:.3f} ({100 * (ratio - 1):+.1f}%), CPU "
                 f"{cpu['serve+client'] / cpu['off']:.3f}")
    return "\n".join(lines)


def main(frames: int = 150, model: str = "auto", repeats: int = 1, warmup: int = 10) -> None:
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as folder:
        out = Path(folder)
        if warmup:
            run_once(warmup, model, "off", out)
        results = [run_once(frames, model, mode, out)
                   for _ in range(repeats) for mode in MODES]
    print(f"bench_serve: {frames} frames of vtest.avi (file), model {model}, "
          f"{psutil.cpu_count()} CPUs, load average {psutil.getloadavg()[0]:.1f}")
    print(table(results))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=150, help="frames of the clip per run")
    parser.add_argument("--model", default="auto", help="VLM id or folder (auto = stand-in "
                                                        "offline, SmolVLM online)")
    parser.add_argument("--repeats", type=int, default=1, help="pairs of runs, alternating")
    parser.add_argument("--warmup", type=int, default=10, help="frames of an unreported first "
                                                               "run (0 = none)")
    args = parser.parse_args()
    main(args.frames, args.model, args.repeats, args.warmup)
