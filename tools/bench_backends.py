"""Benchmark: the same `vidqa run` once per detector backend, back to back in one invocation.

Each backend runs the whole pipeline (answers included) as a separate `vidqa run` process with
``--set tracker.backend=<backend>``, one after the other, so the ratio of their frame rates is
measured under the same conditions (this machine is shared: the load average before and after
each run is recorded, and absolute fps under load are low). Then every backend's ``mot.txt`` is
scored against the first backend's with `vidqa eval tracks` (IDF1, MOTA: the same tracks?).

    python tools/bench_backends.py                         # pipeline.yaml: torch, then auto
    python tools/bench_backends.py --backends torch,openvino,onnx --frames 200
    python tools/bench_backends.py --backends torch,openvino,onnx --interleaved 40

``--interleaved N`` times the detectors alone instead, in this one process, on the first N
frames of the sample video, frame by frame in turn (torch, openvino, onnx, torch, ...): a
machine whose load changes during the measurement slows every backend alike.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from vidqa.detection.backends import reference_gt


def run_backend(config: str, backend: str, out: Path, frames: int, extra: list[str]
                ) -> dict[str, Any]:
    """One `vidqa run` on ``backend``: its summary's figures, and the load around it."""
    sets = [f"tracker.backend={backend}", f"run.max_frames={frames}", *extra]
    command = [sys.executable, "-m", "vidqa.cli", "run", config, "--out", str(out),
               "--overwrite", *[arg for s in sets for arg in ("--set", s)]]
    load_before, started = os.getloadavg(), time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    summary = json.loads((out / "summary.json").read_text())
    return {"backend": backend, "ran": summary["models"]["detector"].get("backend"),
            "frames": summary["frames"], "fps": summary["fps"], "seconds": summary["seconds"],
            "wall_s": round(wall, 1), "answers": summary["answers"],
            "stage_seconds": summary.get("stage_seconds"),
            "frame_path": summary.get("frame_path"),
            "load_before": [round(x, 2) for x in load_before],
            "load_after": [round(x, 2) for x in os.getloadavg()], "mot": str(out / "mot.txt")}


def same_tracks(mot: Path, reference: Path) -> dict[str, Any]:
    """`vidqa eval tracks` of ``mot`` against ``reference`` rewritten as ground truth."""
    gt = reference_gt(reference, mot.parent / "reference_gt.txt")
    done = subprocess.run([sys.executable, "-m", "vidqa.cli", "eval", "tracks", str(mot),
                           str(gt), "--json"], check=True, capture_output=True, text=True)
    scores = json.loads(done.stdout[done.stdout.index("{"):])
    return {key: scores[key] for key in ("IDF1", "MOTA", "IDSW", "FP", "FN", "gt_dets")}


def interleaved(backends: list[str], frames: int) -> dict[str, Any]:
    """Milliseconds per frame of each backend's detector (letterbox, inference, NMS), timed
    in turn on the same frames; the first frame of each is a warm-up and not counted."""
    import cv2

    from vidqa import assets
    from vidqa.config import TrackerConfig
    from vidqa.detection.detector import Detector

    capture, images = cv2.VideoCapture(str(assets.sample_video())), []
    while len(images) < frames + 1 and (read := capture.read())[0]:
        images.append(read[1])
    capture.release()
    detectors = {b: Detector(TrackerConfig(backend=b, device="cpu")) for b in backends}
    seconds = dict.fromkeys(backends, 0.0)
    load_before = os.getloadavg()
    for index, image in enumerate(images):
        for backend, detector in detectors.items():
            started = time.perf_counter()
            detector(image)
            if index:
                seconds[backend] += time.perf_counter() - started
    ms = {b: round(1000 * s / frames, 1) for b, s in seconds.items()}
    report = {"frames": frames, "ms_per_frame": ms,
              "speedup": {b: round(ms[backends[0]] / ms[b], 2) for b in backends},
              "load_before": [round(x, 2) for x in load_before],
              "load_after": [round(x, 2) for x in os.getloadavg()]}
    print(json.dumps(report))
    return report


def main(config: str, backends: list[str], frames: int, out: Path, extra: list[str]
         ) -> dict[str, Any]:
    runs = [run_backend(config, backend, out / backend, frames, extra) for backend in backends]
    base = runs[0]
    for run in runs[1:]:
        run["speedup"] = round(run["fps"] / base["fps"], 2) if base["fps"] else None
        run["vs_first"] = same_tracks(Path(run["mot"]), Path(base["mot"]))
    report = {"config": config, "frames": frames, "set": extra, "runs": runs}
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_backends.json").write_text(json.dumps(report, indent=2) + "\n")
    for run in runs:
        print(f"{run['backend']:>9} ({run['ran']}): {run['frames']} frames at {run['fps']:.2f} "
              f"fps, {run['answers']} answers, wall {run['wall_s']} s, load "
              f"{run['load_before'][0]} -> {run['load_after'][0]}"
              + (f"; {run['speedup']}x, vs {base['backend']}: {run['vs_first']}"
                 if "speedup" in run else ""))
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="pipeline.yaml")
    parser.add_argument("--backends", default="torch,auto", help="comma-separated; the first "
                        "is the reference of the speed-up and of the tracks")
    parser.add_argument("--frames", type=int, default=0, help="run.max_frames (0 = all)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_backends"))
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--interleaved", type=int, default=0, metavar="N",
                        help="time the detectors alone, in turn, on N frames (no vidqa run)")
    args = parser.parse_args()
    if args.interleaved:
        interleaved(args.backends.split(","), args.interleaved)
    else:
        main(args.config, args.backends.split(","), args.frames, args.out, args.set)
