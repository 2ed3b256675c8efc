"""Benchmark: how long Ctrl-C takes on a loaded machine.

Three cameras replay a clip in a loop and keep the cores busy tracking; the model worker runs
at idle priority and its crops wait up to 20 s for a batch, so answers are always in flight
when the signal comes and the whole grace (``run.stop_grace_s``) is used. The run gets SIGINT
on its process group, as a terminal's Ctrl-C does; the figure is signal to exit, reaped.

    python tools/bench_stop.py --model /path/to/tiny --repeats 3
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml


def stop_seconds(config: Path, out: Path, warmup_s: float) -> tuple[int, float]:
    """(exit code, seconds from SIGINT to exit) of one run."""
    proc = subprocess.Popen([sys.executable, "-m", "vidqa.cli", "run", str(config), "--out",
                             str(out), "--overwrite"], env={**os.environ, "VIDQA_OFFLINE": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    time.sleep(warmup_s)
    signalled = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    code = proc.wait(timeout=300)
    return code, time.monotonic() - signalled


def main(model: str, clip: Path | None, repeats: int, warmup_s: float, grace_s: float) -> int:
    from vidqa import assets

    config = {
        "run": {"stop_grace_s": grace_s},
        "source": {"kind": "file", "path": str(clip or assets.sample_video()),
                   "replay": "realtime", "loop": True},
        "tracker": {"imgsz": 320}, "roi": {"min_width": 8, "min_height": 16},
        "vlm": {"model": model, "adaptive": {"enabled": False}, "worker": "process",
                "cpu_priority": "idle", "batch_size": 8, "max_wait_ms": 20000,
                "queue_size": 16},
        "sinks": {"segment_s": 10},
        "streams": [{"id": f"cam{i}"} for i in range(3)],
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "stop.yaml"
        path.write_text(yaml.safe_dump(config))
        for _ in range(repeats):
            code, seconds = stop_seconds(path, Path(tmp) / "run", warmup_s)
            print(f"exit code {code} {seconds:.2f} s after SIGINT (grace {grace_s:g} s)")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="auto", help="vlm.model")
    parser.add_argument("--clip", type=Path, help="video to loop (default: the sample clip)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=30.0, help="seconds before the signal")
    parser.add_argument("--grace", type=float, default=3.0, help="run.stop_grace_s")
    args = parser.parse_args()
    raise SystemExit(main(args.model, args.clip, args.repeats, args.warmup, args.grace))
