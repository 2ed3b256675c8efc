"""Benchmark: what the event store costs a stream, and how much it can take.

Three figures, each on the same synthetic inputs in one run:

* the stream's side: microseconds per frame of :class:`~vidqa.store.sink.StoreSink` (``--tracks``
  people per frame, a crop asked and answered every ``--answer-every`` frames, its JPEG
  encoded on the stream's thread), beside the annotated video it already writes
  (:class:`~vidqa.sinks.VideoSink`) on the same frames;
* the writer's side: answers per second one writer thread commits, snapshots included;
* the lag: how long after ``put`` a record is readable by another connection.

    python tools/bench_store.py --frames 2000 --tracks 10
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from vidqa.config import load_config
from vidqa.messages import Answer, Crop, Detections, FrameResult, VideoFrame
from vidqa.sinks import AnswerBoard, VideoSink
from vidqa.store import AnswerRecord, EventStore, StoreSink, StreamRecord


def frames(count: int, tracks: int, answer_every: int) -> list[FrameResult]:
    """Frames of 768x576 with ``tracks`` moving people; every ``answer_every`` frames one
    crop is asked and the previous one answered."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (576, 768, 3), np.uint8)
    out = []
    for index in range(count):
        boxes = np.asarray([(10 + 60 * t + index % 50, 100, 60 + 60 * t + index % 50, 260)
                            for t in range(tracks)], np.float32)
        detections = Detections(boxes, np.full(tracks, 0.9, np.float32),
                                np.zeros(tracks, np.int64), np.arange(tracks, dtype=np.int64))
        frame = VideoFrame(image=image, frame_index=index, timestamp=index / 10,
                           source_id="bench", fps=10.0)
        crops, answers = (), ()
        if index % answer_every == 0:
            track = (index // answer_every) % tracks
            crops = (Crop(track, index, index / 10, (0, 0, 50, 160), (0, 0, 50, 160),
                          image[100:260, 10:60].copy(), "new"),)
        if index % answer_every == 1 and index > 1:
            track = ((index - 1) // answer_every) % tracks
            answers = (Answer(index - 1, (index - 1) / 10, track, "q", "yes", 0.7, 1.0,
                              (0, 0, 50, 160), 5.0, "bench"),)
        out.append(FrameResult(frame, detections, crops=crops, answers=answers))
    return out


def stream_side(results: list[FrameResult], folder: Path) -> dict[str, float]:
    """Microseconds per frame: the store's sink, and the video sink, on the same frames."""
    cfg = load_config(None, [])
    store = EventStore(cfg, folder / "sink").open()
    store.put_many([StreamRecord("0", "bench", folder / "sink", False, True, False)])
    sink = StoreSink("0", store.put_many)
    started = time.perf_counter()
    for result in results:
        sink.write(result)
    sink_s = time.perf_counter() - started
    store.close()
    video = VideoSink(folder / "video.mp4", AnswerBoard())
    started = time.perf_counter()
    for result in results:
        video.write(result)
    video_s = time.perf_counter() - started
    video.close()
    per = 1e6 / len(results)
    return {"store_sink_us_per_frame": round(sink_s * per, 1),
            "video_sink_us_per_frame": round(video_s * per, 1)}


def writer_side(answers: int, folder: Path) -> dict[str, float]:
    """Answers (with a 5 KB snapshot each) one writer commits per second, and the lag."""
    cfg = load_config(None, [])
    store = EventStore(cfg, folder / "writer").open()
    store.put_many([StreamRecord("0", "bench", folder / "writer", False, True, False)])
    jpeg = bytes(5000)
    records = [AnswerRecord(Answer(i, i / 10, i, "q", "yes", 0.7, 1.0, (0, 0, 5, 5), 5.0,
                                   "bench"), time.time(), jpeg) for i in range(answers)]
    started = time.perf_counter()
    store.put_many(records)
    store.close()
    rate = answers / (time.perf_counter() - started)
    lag = _lag(cfg, folder / "lag")
    return {"answers_committed_per_s": round(rate), "put_to_readable_ms": lag}


def _lag(cfg: Any, folder: Path) -> float:
    store = EventStore(cfg, folder).open()
    store.put_many([StreamRecord("0", "bench", folder, False, False, False)])
    lags = []
    for i in range(20):
        answer = Answer(i, 0.0, i, "q", "yes", 0.7, 1.0, (0, 0, 5, 5), 5.0, "bench")
        put = time.perf_counter()
        store.put_many([AnswerRecord(answer, time.time(), None)])
        with sqlite3.connect(f"file:{store.path}?mode=ro", uri=True) as conn:
            while conn.execute("SELECT COUNT(*) FROM answers").fetchone()[0] <= i:
                time.sleep(0.002)
        lags.append(1000 * (time.perf_counter() - put))
    store.close()
    return round(float(np.median(lags)), 1)


def main(frame_count: int, tracks: int, answer_every: int, answers: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        report = {"frames": frame_count, "tracks_per_frame": tracks,
                  **stream_side(frames(frame_count, tracks, answer_every), folder),
                  **writer_side(answers, folder)}
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--tracks", type=int, default=10, help="people per frame")
    parser.add_argument("--answer-every", type=int, default=5, help="frames between answers")
    parser.add_argument("--answers", type=int, default=20000, help="answers for the writer")
    args = parser.parse_args()
    raise SystemExit(main(args.frames, args.tracks, args.answer_every, args.answers))
