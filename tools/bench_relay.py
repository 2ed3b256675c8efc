"""Benchmark: what the view relay costs a stream that runs in a stream process.

A spawned process plays one stream: it writes synthetic frames (the sample clip's size, a
tracked box each, about 180 a second) through the live view's sink into a
:class:`~vidqa.web.relay.RelayView` and times each ``write``. This process serves a real
:class:`~vidqa.web.server.LiveView` through a :class:`~vidqa.web.relay.RelayHost` and a
:class:`~vidqa.web.relay.QueueTransport`. First nobody watches, then an MJPEG client reads the
stream's video. Reported per phase: the sink's µs per frame on the stream's side (mean,
median, max: the max is a frame drawn and encoded for the client), the JPEGs encoded there,
and the JPEGs the client received.

    python tools/bench_relay.py --frames 400
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import threading
import time
from typing import Any

import cv2
import httpx
import numpy as np

from vidqa.config import load_config
from vidqa.messages import Detections, FrameResult, VideoFrame
from vidqa.web import LiveView, LiveViewSink
from vidqa.web.metrics import Monitor
from vidqa.web.relay import QueueTransport, RelayEnd, RelayHost

SIZE = (768, 576)  # the sample clip's
WARM_UP = 30  # frames written before the first phase, not timed
PHASES = ("nobody watches", "one MJPEG client")


def _frame(index: int) -> FrameResult:
    image = np.full((SIZE[1], SIZE[0], 3), 40, np.uint8)
    x = 20 + (index * 5) % (SIZE[0] - 200)
    cv2.rectangle(image, (x, 100), (x + 120, 400), (60, 160, 220), -1)
    boxes = Detections(xyxy=np.array([[x, 100, x + 120, 400]], np.float32),
                       confidence=np.array([0.9], np.float32), class_id=np.array([0]),
                       track_id=np.array([3]))
    return FrameResult(VideoFrame(image, index, index / 10, "bench", 10.0), boxes)


def _stream(end: RelayEnd, frames: int, phases: Any, results: Any) -> None:
    """The stream's process: ``frames`` frames per phase, each phase started by the parent."""
    relay = end.connect()
    sink = LiveViewSink(relay.view, "0")
    for index in range(WARM_UP):
        sink.write(_frame(index))
    for _ in PHASES:
        phases.get()
        times = []
        encoded = relay.view.encoded["0"]
        for index in range(frames):
            result = _frame(index)
            started = time.perf_counter()
            sink.write(result)
            times.append(time.perf_counter() - started)
            time.sleep(0.005)  # a stream's other stages run meanwhile
        results.put((times, relay.view.encoded["0"] - encoded))
    sink.close()
    relay.close()


def _watch(url: str, stop: threading.Event, received: list[int]) -> None:
    with httpx.stream("GET", url, timeout=None) as response:
        for chunk in response.iter_bytes():
            received[0] += chunk.count(b"--vidqaframe")
            if stop.is_set():
                return


def main(frames: int) -> None:
    context = multiprocessing.get_context("spawn")
    specs = load_config(None, []).stream_configs()
    with LiveView(port=0) as view:
        host = RelayHost(QueueTransport(context, [s.id for s in specs]), specs, view,
                         Monitor()).start()
        phases, results = context.Queue(), context.Queue()
        process = context.Process(target=_stream, args=(host.end(), frames, phases, results))
        process.start()
        rows = []
        for phase in PHASES:
            stop, received = threading.Event(), [0]
            client = None
            if phase != "nobody watches":
                client = threading.Thread(target=_watch, daemon=True, args=(
                    f"http://127.0.0.1:{view.port}/streams/0/video", stop, received))
                client.start()
                while not view.is_watched("0"):
                    time.sleep(0.01)
                time.sleep(0.5)  # the stream learns it within a quarter of a second
            started = time.perf_counter()
            phases.put(phase)
            times, encoded = results.get()
            seconds = time.perf_counter() - started
            stop.set()
            rows.append((phase, times, encoded, received[0], seconds))
        process.join()
        host.close()
    print(f"{frames} frames of {SIZE[0]}x{SIZE[1]} per phase, one stream in a stream process")
    print("| phase | sink µs/frame: mean | median | max | JPEGs encoded | received | seconds |")
    print("|---|---|---|---|---|---|---|")
    for phase, times, encoded, received, seconds in rows:
        micros = [t * 1e6 for t in times]
        print(f"| {phase} | {statistics.mean(micros):.0f} | {statistics.median(micros):.0f} | "
              f"{max(micros):.0f} | {encoded} | {received} | {seconds:.1f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=400, help="frames per phase")
    main(parser.parse_args().frames)
