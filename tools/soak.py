"""Soak: live cameras for hours of stream time, with the memory and the store watched.

Several streams replay the sample clip as looping cameras, faster than real time
(``source.replay_speed``), through ``vidqa run`` in a child process, recording in short
segments under a disk cap. Every ``--every`` seconds the tool reads the resident memory of the
run's whole process tree and the store's rows and bytes; at the end it stops the run with
SIGINT (as Ctrl-C would) and reports whether memory stayed flat after the warm-up and whether
the store grew only with its rows.

    python tools/soak.py --hours 6 --speed 20 --out runs/soak     # 18 minutes of wall time

The test suite runs :func:`soak` for a few minutes of stream time (``tests/test_always_on.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import yaml

WARMUP_SHARE = 0.3  # the first part of the run, excluded from the flatness check
TABLES = ("answers", "tracks", "alerts", "segments", "snapshots")


def soak_config(clip: Path, streams: int, speed: float, segment_s: float, max_gb: float,
                model: str) -> dict[str, Any]:
    """The run's YAML: ``streams`` looping replays of ``clip``, segments under a cap."""
    return {
        "run": {"stop_grace_s": 3.0},
        "source": {"kind": "file", "path": str(clip), "replay": "realtime", "loop": True,
                   "replay_speed": speed},
        "tracker": {"imgsz": 320},
        "vlm": {"model": model, "adaptive": {"enabled": False}, "worker": "process"},
        "roi": {"reask_every": 10},  # a stream of weeks re-asks: more answers, more rows
        "sinks": {"segment_s": segment_s},
        "retain": {"max_gb": max_gb, "check_s": 5},
        "streams": [{"id": f"cam{i}"} for i in range(streams)],
    }


def soak(out: Path, stream_hours: float, clip: Path, model: str, streams: int = 3,
         speed: float = 20.0, every_s: float = 5.0, segment_s: float = 60.0,
         max_gb: float = 0.02) -> dict[str, Any]:
    """Run the soak and return its report (also written to ``out/soak.json``)."""
    out.mkdir(parents=True, exist_ok=True)
    config = out / "soak.yaml"
    config.write_text(yaml.safe_dump(soak_config(clip, streams, speed, segment_s, max_gb,
                                                 model)))
    run_dir = out / "run"
    wall_s = stream_hours * 3600 / speed
    env = {**os.environ, "VIDQA_OFFLINE": os.environ.get("VIDQA_OFFLINE", "1")}
    proc = subprocess.Popen([sys.executable, "-m", "vidqa.cli", "run", str(config), "--out",
                             str(run_dir), "--overwrite"], env=env, stdout=subprocess.DEVNULL,
                            stderr=open(out / "stderr.txt", "w"))  # noqa: SIM115
    samples, started = [], time.monotonic()
    try:
        while time.monotonic() - started < wall_s and proc.poll() is None:
            time.sleep(every_s)
            samples.append(_sample(proc.pid, run_dir, time.monotonic() - started))
    finally:
        stop_started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=120)
        stop_s = time.monotonic() - stop_started
    report = _report(samples, code, stop_s, run_dir, stream_hours, speed, streams)
    (out / "soak.json").write_text(json.dumps(report, indent=2))
    return report


def _sample(pid: int, run_dir: Path, elapsed: float) -> dict[str, Any]:
    """The process tree's resident memory and the store's rows and bytes now."""
    rss = 0
    try:
        root = psutil.Process(pid)
        for process in [root, *root.children(recursive=True)]:
            try:
                rss += process.memory_info().rss
            except psutil.NoSuchProcess:
                continue
    except psutil.NoSuchProcess:
        pass
    db = run_dir / "store" / "vidqa.db"
    rows, used = {}, 0
    if db.exists():
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        try:
            rows = {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in TABLES}
            # the pages holding data, WAL included: what the rows take, not how the WAL grew
            pages, free, size = (conn.execute(f"PRAGMA {name}").fetchone()[0] for name in
                                 ("page_count", "freelist_count", "page_size"))
            used = (pages - free) * size
        except sqlite3.OperationalError:  # the schema is still being created
            pass
        finally:
            conn.close()
    files = sum(p.stat().st_size for p in run_dir.rglob("*") if p.is_file())
    return {"t": round(elapsed, 1), "rss_bytes": rss, "rows": rows, "db_bytes": used,
            "disk_bytes": files}


def _report(samples: list[dict[str, Any]], code: int, stop_s: float, run_dir: Path,
            hours: float, speed: float, streams: int) -> dict[str, Any]:
    steady = samples[int(len(samples) * WARMUP_SHARE):]
    rss = [s["rss_bytes"] for s in steady]
    rows = [sum(s["rows"].values()) for s in steady]
    db = [s["db_bytes"] for s in steady]
    grown_rows, grown_db = (rows[-1] - rows[0], db[-1] - db[0]) if steady else (0, 0)
    summary = json.loads((run_dir / "summary.json").read_text()) \
        if (run_dir / "summary.json").exists() else {}
    return {
        "stream_hours": hours, "speed": speed, "streams": streams, "samples": samples,
        "exit_code": code, "stop_s": round(stop_s, 2),
        "rss_after_warmup": {"min": min(rss, default=0), "max": max(rss, default=0),
                             "spread": round((max(rss) - min(rss)) / min(rss), 4) if rss else None},
        "store_after_warmup": {"rows_added": grown_rows, "db_bytes_added": grown_db,
                               "bytes_per_row": round(grown_db / grown_rows, 1)
                               if grown_rows else None},
        "frames": summary.get("frames"), "answers": summary.get("answers"),
        "end_reason": summary.get("end_reason"), "store": summary.get("store"),
    }


def main(out: Path, hours: float, speed: float, streams: int, every: float, model: str,
         clip: Path | None, max_gb: float) -> int:
    from vidqa import assets

    report = soak(out, hours, clip or assets.sample_video(), model, streams, speed, every,
                  max_gb=max_gb)
    brief = {k: v for k, v in report.items() if k != "samples"}
    print(json.dumps(brief, indent=2))
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/soak"))
    parser.add_argument("--hours", type=float, default=6.0, help="hours of stream time")
    parser.add_argument("--speed", type=float, default=20.0, help="stream seconds per second")
    parser.add_argument("--streams", type=int, default=3)
    parser.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--model", default="auto", help="vlm.model (auto: the stand-in offline)")
    parser.add_argument("--clip", type=Path, help="video to loop (default: the sample clip)")
    parser.add_argument("--max-gb", type=float, default=0.02,
                        help="retain.max_gb: the cap on segments and snapshots")
    args = parser.parse_args()
    sys.exit(main(args.out, args.hours, args.speed, args.streams, args.every, args.model,
                  args.clip, args.max_gb))
