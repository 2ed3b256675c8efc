"""Benchmark: N cameras against one VLM service, and against N separate `vidqa run` processes.

Each stream is a copy of a video replayed at its own frame rate through the live path
(``source.replay: realtime``, looped), so a stream that cannot keep up drops frames exactly as a
camera's would; with ``--rtsp FPS`` every stream reads the video from a loopback RTSP server
instead (``--url``: from any live URL). For each N the run lasts ``--seconds`` and reports, per
stream and in total: processed frames per second against the camera's rate, frames dropped,
confirmed tracks, crops answered and lost (submitted but never answered: must be 0), tracks
deferred, crop->answer latency p50/p95, the VLM's batch-size histogram, crops and answers
(crop x question) per second and GPU memory; the largest N at which every tracker holds
``--hold`` of the camera's rate is "real time". ``--processes`` runs the streams in that many
stream processes (``run.processes``; 0 = auto, 1 = threads of one process), every one asking
the one VLM worker; the detector batches of each process are reported too. ``--no-vlm``
asks nothing (the trackers alone, in the same layout: stream processes, detection worker and
an idle VLM worker; the reference for "the tracker keeps 90% of its rate"). Every row has the
frame path per stage (decode, letterbox, detect, track, sinks) in ms per frame, each detector's
seconds in its forward passes, and the load average when the run stopped.
``--separate`` runs the same N as separate processes, one model each (vidqa before the
service), in the same invocation.

    python tools/bench_streams.py --streams 1,2,4 --seconds 30 --reask-every 10 --questions 3
    python tools/bench_streams.py --streams 1 --seconds 60 --no-vlm   # tracker alone
    python tools/bench_streams.py --streams 1 --seconds 60 --rtsp 10 --worker process  # CPU
    python tools/bench_streams.py --streams 16,64,100 --processes 1,0 --seconds 60   # GPU
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch
from loguru import logger

from vidqa import assets
from vidqa.config import load_config
from vidqa.engines.local import LocalRun
from vidqa.engines.processes import ProcessRun, processes_for

NO_CROPS = 1_000_000  # --no-vlm: no person crop is this large, so none is asked about
QUESTIONS = ("Is this person wearing jeans?", "Is this person wearing something red?",
             "Is this person holding something in their hands?", "Does this person have long hair?",
             "Is this person carrying a bag?")


def stream_overrides(count: int, args: argparse.Namespace) -> list[str]:
    """The run's config as --set overrides: ``count`` looped real-time replays of the video."""
    source = f"{{kind: stream, url: '{args.url}'}}" if args.url else \
        f"{{kind: file, path: {args.video}, replay: realtime, loop: true}}"
    streams = ", ".join(f"{{id: s{i}, source: {source}}}" for i in range(count))
    questions = json.dumps(list(QUESTIONS[:args.questions]))
    return [f"streams=[{streams}]", f"vlm.model={args.model}", f"vlm.device={args.device}",
            f"vlm.questions={questions}", f"vlm.batch_size={args.batch_size}",
            f"vlm.max_wait_ms={args.max_wait_ms}", f"vlm.queue_size={args.queue_size}",
            f"vlm.adaptive.enabled={str(args.adaptive).lower()}",
            f"roi.reask_every={args.reask_every}", f"tracker.device={args.tracker_device}",
            f"vlm.worker={args.worker}",
            "sinks.video=false", "sinks.mot=false", *args.set]


def one_service(count: int, processes: int, detect: str, args: argparse.Namespace, out: Path
                ) -> dict[str, Any]:
    """``count`` streams, one VLM service, for ``args.seconds`` of streaming once every stream
    has started: on threads of this process, or in ``processes`` stream processes."""
    overrides = stream_overrides(count, args) + [f"run.processes={processes}"]
    if args.no_vlm:  # the same layout, VLM worker included, but no crop is ever asked about
        overrides += [f"roi.min_width={NO_CROPS}", f"roi.min_height={NO_CROPS}"]
    out.mkdir(parents=True, exist_ok=True)
    cfg = load_config(None, overrides)
    used = processes_for(cfg)
    if used > 1:
        run = ProcessRun(cfg, out, used, {"worker": True, "streams": False}.get(detect))
    else:
        run = LocalRun.from_config(cfg, out)
    stopper = threading.Thread(target=_stop_when_streamed, daemon=True,
                               args=(run, [out / f"s{i}" for i in range(count)], args))
    started = time.perf_counter()
    stopper.start()
    summary = run.run()
    row = _row(count, summary, time.perf_counter() - started, args)
    busy, encode_s = summary["vlm"]["service"]["busy_s"], summary["vlm"].get("encode_s")
    row["preprocess_share"] = round(encode_s / busy, 4) if busy and encode_s else None
    row["worker"] = summary["vlm"]["service"].get("worker")
    row["processes"] = used
    row["detect"] = (run.detect_in_worker and "worker" or "streams") if used > 1 else "thread"
    row["stage_seconds"] = _stream_totals(out, summary, "stage_seconds")
    row["frame_path"] = _frame_path(_stream_totals(out, summary, "frame_path"), summary)
    row["detector_batches"] = [d["mean_batch"] for d in summary.get("detectors", [])]
    # each detector's seconds inside its forward passes, per stage (upload, inference, NMS)
    row["detector_busy_s"] = [{"busy_s": d["busy_s"], **d["stage_s"]}
                              for d in summary.get("detectors", [])]
    row["load_average"] = [round(x, 2) for x in os.getloadavg()]  # 1, 5, 15 min, at the stop
    if args.adaptive:  # per question: phase, plan, the planner's search and trials, audits
        row["vlm"] = {k: v for k, v in summary["vlm"].items() if k != "service"}
    return row


def _stop_when_streamed(run: Any, stream_dirs: list[Path], args: argparse.Namespace) -> None:
    """Stop the run ``--seconds`` after its last stream began (a stream's ``events.jsonl``
    appears when its front half starts), so that loading models and starting processes is not
    counted as streaming; a stream that never starts is given up on after ``--startup-s``."""
    deadline = time.monotonic() + args.startup_s
    while time.monotonic() < deadline and not all((d / "events.jsonl").exists()
                                                  for d in stream_dirs):
        time.sleep(0.2)
    time.sleep(args.seconds)
    run.stop()


def _row(count: int, summary: dict[str, Any], seconds: float, args: argparse.Namespace
         ) -> dict[str, Any]:
    streams = list(summary["streams"].values())
    camera_fps = streams[0]["source"].get("fps") or 10.0
    fps = [s["fps"] for s in streams]
    asking = [s["vlm"] for s in streams]
    latencies = [a["latency_ms_p50"] for a in asking if a["latency_ms_p50"] is not None]
    p95 = [a["latency_ms_p95"] for a in asking if a["latency_ms_p95"] is not None]
    service = summary["vlm"]["service"]
    return {
        "streams": count, "seconds": round(seconds, 1), "camera_fps": camera_fps,
        "fps_min": min(fps), "fps_mean": round(sum(fps) / len(fps), 2),
        "real_time": min(fps) >= args.hold * camera_fps,
        "tracks": sum(s.get("tracks", 0) for s in streams),  # confirmed tracks
        "frames_read": sum(s["source"]["frames_read"] for s in streams),
        "frames_dropped": sum(s["source"]["frames_dropped"] for s in streams),
        "crops_submitted": sum(a["submitted"] for a in asking),
        "crops_answered": sum(a["answered"] for a in asking),
        "crops_lost": sum(a["submitted"] - a["answered"] for a in asking),
        "deferred_tracks": sum(a["deferred_tracks"] for a in asking),
        "queue_full_waits": sum(a["queue_full_waits"] for a in asking),
        "latency_ms_p50_max": max(latencies, default=None),
        "latency_ms_p95_max": max(p95, default=None),
        "batch_histogram": service["batch_histogram"], "mean_batch": service["mean_batch"],
        "roi_per_s": round(service["crops"] / service["span_s"], 2) if service["span_s"] else 0,
        "answers_per_s": service.get("answers_per_s"),  # crop x question, over the same span
        "roi_per_busy_s": service["crops_per_busy_s"],
        "vlm_utilisation": service["utilisation"],
        "gpu_used_bytes": _gpu_used(),  # every process on the device: trackers and VLM worker
    }


def _stream_totals(out: Path, summary: dict[str, Any], key: str) -> dict[str, float]:
    """The seconds of each stage in the streams' summaries under ``key`` (``stage_seconds``:
    the pipeline's stages; ``frame_path``: decode ... sinks), summed over the streams."""
    total: dict[str, float] = {}
    for stream_id in summary["streams"]:
        stream = json.loads((out / stream_id / "summary.json").read_text())
        for stage, seconds in stream.get(key, {}).items():
            if isinstance(seconds, (int, float)):
                total[stage] = round(total.get(stage, 0.0) + seconds, 2)
    return total


def _frame_path(total: dict[str, float], summary: dict[str, Any]) -> dict[str, Any]:
    """Milliseconds per processed frame in each stage of the frame path, over every stream;
    ``letterbox`` is part of ``detect``. With a shared detector in a process, letterbox is the
    detector's, counted once per stream that shares it (README: the frame path)."""
    frames = sum(s.get("frames", 0) for s in summary["streams"].values())
    return {k.replace("_s", "_ms"): round(1000 * v / frames, 2) if frames else None
            for k, v in total.items()}


def _gpu_used() -> int | None:
    if not torch.cuda.is_available():
        return None
    free, total = torch.cuda.mem_get_info()
    return total - free


def separate(count: int, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """``count`` separate `vidqa run` processes, one model each, stopped by SIGINT."""
    base = [f for f in stream_overrides(1, args) if not f.startswith("streams=")]
    procs = []
    for i in range(count):
        source = ["source.kind=stream", f"source.url={args.url}"] if args.url else \
            ["source.kind=file", f"source.path={args.video}", "source.replay=realtime",
             "source.loop=true"]
        sets = [*base, *source]
        command = [sys.executable, "-m", "vidqa.cli", "run", "--out", str(out / f"p{i}")]
        for item in sets:
            command += ["--set", item]
        procs.append(subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))
    time.sleep(args.seconds + args.startup_s)
    for proc in procs:
        proc.send_signal(signal.SIGINT)
    for proc in procs:
        proc.wait(timeout=600)
    summaries = [json.loads((out / f"p{i}" / "summary.json").read_text()) for i in range(count)]
    fps = [s["fps"] for s in summaries]
    return {"streams": count, "fps_min": min(fps), "fps_mean": round(sum(fps) / count, 2),
            "frames_dropped": sum(s["source"]["frames_dropped"] for s in summaries),
            "answers": sum(s["answers"] for s in summaries),
            "note": f"fps over each process's whole life, model loading included "
                    f"(~{args.startup_s:g} s of {args.seconds + args.startup_s:g} s)"}


def main(args: argparse.Namespace) -> dict[str, Any]:
    if not args.rtsp:
        return measure(args)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from rtsp_server import RtspServer  # the loopback camera of the live tests

    video = assets.sample_video() if args.video == "auto" else Path(args.video)
    with RtspServer(video, fps=args.rtsp) as server:
        args.url = server.url
        return measure(args)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"settings": vars(args), "device": _device(), "one_service": [],
                               "separate": []}
    with tempfile.TemporaryDirectory(prefix="vidqa-bench-streams-") as tmp:
        for count in args.streams:
            for processes in args.processes:
                for detect in args.detect if processes != 1 else ["-"]:
                    row = one_service(count, processes, detect, args,
                                      Path(tmp) / f"one-{count}-{processes}-{detect}")
                    results["one_service"].append(row)
                    print(json.dumps(row), flush=True)
            if args.separate:
                row = separate(count, args, Path(tmp) / f"sep-{count}")
                results["separate"].append(row)
                print(json.dumps(row), flush=True)
    held = [r["streams"] for r in results["one_service"] if r["real_time"]]
    results["largest_real_time"] = max(held, default=0)
    _print(results)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1, default=str))
    return results


def _device() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu ({torch.get_num_threads()} threads)"


def _print(results: dict[str, Any]) -> None:
    print(f"\n{results['device']}; settings {results['settings']}")
    print(f"{'N':>4}{'proc':>5}{'fps min':>9}{'fps mean':>10}{'RT':>4}{'dropped':>9}{'asked':>7}"
          f"{'lost':>6}{'deferred':>9}{'p50 ms':>9}{'p95 ms':>9}{'ROI/s':>8}{'ans/s':>8}"
          f"{'batch':>7}")
    for r in results["one_service"]:
        print(f"{r['streams']:>4}{r['processes']:>5}{r['fps_min']:>9.2f}{r['fps_mean']:>10.2f}"
              f"{'yes' if r['real_time'] else 'no':>4}{r['frames_dropped']:>9}"
              f"{r['crops_submitted']:>7}{r['crops_lost']:>6}{r['deferred_tracks']:>9}"
              f"{r['latency_ms_p50_max'] or 0:>9.0f}{r['latency_ms_p95_max'] or 0:>9.0f}"
              f"{r['roi_per_s']:>8.2f}{r['answers_per_s'] or 0:>8.2f}{r['mean_batch']:>7.1f}")
    for r in results["one_service"]:
        print(f"{r['streams']:>4} streams, ms per frame: {r['frame_path']}")
    for r in results["separate"]:
        print(f"separate x{r['streams']}: fps min {r['fps_min']:.2f}, mean {r['fps_mean']:.2f}, "
              f"dropped {r['frames_dropped']}, answers {r['answers']} ({r['note']})")
    print(f"largest N in real time (one service): {results['largest_real_time']}")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", default="auto", help="video replayed by every stream")
    parser.add_argument("--streams", type=lambda s: [int(x) for x in s.split(",")],
                        default=[1, 2, 4], help="stream counts to try, e.g. 1,2,4,8")
    parser.add_argument("--seconds", type=float, default=30.0, help="wall time per count")
    parser.add_argument("--detect", type=lambda s: s.split(","), default=["auto"],
                        help="with --processes > 1, where detection runs: worker (one CUDA "
                             "context), streams (each stream process), auto, or a list")
    parser.add_argument("--processes", type=lambda s: [int(x) for x in s.split(",")],
                        default=[1], help="run.processes values to try (0 = auto), e.g. 1,0")
    parser.add_argument("--model", default="auto")
    parser.add_argument("--device", default="auto", help="VLM device")
    parser.add_argument("--tracker-device", default="auto")
    parser.add_argument("--worker", default="auto", choices=["auto", "thread", "process"],
                        help="vlm.worker: where the model runs")
    parser.add_argument("--questions", type=int, default=1, choices=range(1, 6))
    parser.add_argument("--reask-every", type=int, default=0, help="0 = once per track")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=50.0)
    parser.add_argument("--queue-size", type=int, default=256)
    parser.add_argument("--adaptive", action="store_true", help="adaptive compression on")
    parser.add_argument("--hold", type=float, default=0.9,
                        help="real time = every stream processes >= this share of its fps")
    parser.add_argument("--no-vlm", action="store_true",
                        help="trackers only, in the same layout (no crop is asked about)")
    parser.add_argument("--separate", action="store_true",
                        help="also N separate `vidqa run` processes")
    parser.add_argument("--startup-s", type=float, default=60.0,
                        help="seconds for processes to load their models: --separate waits "
                             "this long, the one-service runs wait at most this long")
    parser.add_argument("--rtsp", type=float, metavar="FPS",
                        help="serve the video over a loopback RTSP server (gst-rtsp-server, as "
                             "the live tests) at FPS and read every stream from it")
    parser.add_argument("--url", help="read every stream from this live URL instead")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for every run, as `vidqa run --set`")
    parser.add_argument("--out", type=Path, help="write the results JSON here")
    return parser.parse_args(argv)


if __name__ == "__main__":
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    main(parse())
