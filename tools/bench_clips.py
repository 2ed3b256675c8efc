"""Benchmark: what alert clips cost a stream with rules, on the sample video's real frames.

* the stream's side: milliseconds per frame of :class:`~vidqa.sinks.ClipSink.write` (scale to
  ``alerts.clip_width``, JPEG), the overlay drawn by the video sink of the same frame (shared);
* the clip thread's side: milliseconds per clip frame (JPEG decode and VP8 encode), between
  two bounds: the wait for it at the close over the frames (it also worked while the frames
  were written), and the whole run's wall time over the frames;
* memory and disk: JPEG bytes per buffered frame, the ring buffer's bytes for
  ``clip_pre_s`` seconds at the video's 10 fps and scaled to 25 fps, clip bytes per second.

    python tools/bench_clips.py --frames 400 --width 640
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from vidqa import assets
from vidqa.config import AlertsConfig
from vidqa.messages import Clip, Detections, FrameResult, VideoFrame
from vidqa.sinks import AnswerBoard, ClipSink, annotate
from vidqa.zones import Alert


def frames(count: int) -> list[FrameResult]:
    """The sample video's first ``count`` frames (768x576, 10 fps), eight boxes on each."""
    capture = cv2.VideoCapture(str(assets.sample_video()))
    out = []
    for index in range(count):
        ok, image = capture.read()
        if not ok:
            break
        boxes = np.asarray([(10 + 80 * t + index % 40, 150, 60 + 80 * t + index % 40, 400)
                            for t in range(8)], np.float32)
        detections = Detections(boxes, np.full(8, 0.9, np.float32), np.zeros(8, np.int64),
                                np.arange(8, dtype=np.int64))
        out.append(FrameResult(VideoFrame(image, index, index / 10, "bench", 10.0), detections))
    capture.release()
    return out


def bench(count: int, width: int, pre_s: float) -> dict[str, Any]:
    results = frames(count)
    board = AnswerBoard()
    clips: list[Clip] = []
    cfg = AlertsConfig(clip_pre_s=pre_s, clip_post_s=(len(results) / 10) - pre_s,
                       clip_max_s=len(results), clip_width=width, clip_queue=len(results))
    with tempfile.TemporaryDirectory() as folder:
        sink = ClipSink(Path(folder), "bench", cfg, clips.append, board)
        overlay = stream = 0.0
        began = time.perf_counter()
        alert_at = int(pre_s * 10)  # the clip holds every frame: the buffered ones and after
        for result in results:
            if result.frame.frame_index == alert_at:
                result = FrameResult(result.frame, result.detections, alerts=(
                    Alert("r", 1, "z", "q", "no", alert_at, alert_at / 10, 0.0, (0, 0, 1, 1)),))
            board.update(result)
            started = time.perf_counter()
            annotate(result, board)  # the video sink's overlay, which the clip shares
            drawn = time.perf_counter()
            sink.write(result)
            overlay += drawn - started
            stream += time.perf_counter() - drawn
        ring = sink.ring.peak_bytes
        queued = time.perf_counter()
        sink.close()  # waits for the clip thread to write what is queued
        writer_s, total_s = time.perf_counter() - queued, time.perf_counter() - began
    (clip,) = clips
    jpeg = ring / max(1, int(pre_s * 10))
    return {
        "frames": len(results), "clip_width": width,
        "stream_ms_per_frame": round(1000 * stream / len(results), 2),
        "overlay_ms_per_frame": round(1000 * overlay / len(results), 2),
        "jpeg_bytes_per_frame": round(jpeg),
        "ring_bytes_for_pre_s": {"10fps": ring, "25fps": round(jpeg * pre_s * 25)},
        "clip_frames": clip.frames,
        "clip_thread_ms_per_frame": [round(1000 * writer_s / clip.frames, 1),
                                     round(1000 * total_s / clip.frames, 1)],
        "clip_bytes_per_s": round(clip.bytes / (clip.frames / clip.fps)),
    }


def main(frames_: int = 400, width: int = 640, pre_s: float = 5.0) -> dict[str, Any]:
    report = bench(frames_, width, pre_s)
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=400)
    parser.add_argument("--width", type=int, default=640, help="alerts.clip_width (0: as is)")
    parser.add_argument("--pre-s", type=float, default=5.0)
    args = parser.parse_args()
    main(args.frames, args.width, args.pre_s)
