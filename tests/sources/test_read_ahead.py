"""Recordings decode on a thread of their own, a few frames ahead, and never drop or reorder."""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from factories import write_video

from vidqa.config import SourceConfig
from vidqa.sources import open_source
from vidqa.sources.base import read_ahead


def decode_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("decode-")]


def test_file_source_when_read_ahead_then_every_frame_in_order_and_decode_timed(tmp_path: Path):
    path = write_video(tmp_path / "clip.avi", frames=25)
    capture, expected = cv2.VideoCapture(str(path)), []
    while (read := capture.read())[0]:
        expected.append(read[1])
    capture.release()

    with open_source(SourceConfig(kind="file", path=str(path)), path) as source:
        frames = list(source)
        stats = source.stats()

    assert [f.frame_index for f in frames] == list(range(len(expected)))
    assert all(np.array_equal(f.image, e) for f, e in zip(frames, expected, strict=True))
    assert stats["frames_read"] == stats["frames_yielded"] == 25
    assert stats["decode_s"] > 0
    assert not decode_threads()


def test_file_source_when_consumer_stops_early_then_decoder_thread_has_ended(tmp_path: Path):
    path = write_video(tmp_path / "clip.avi", frames=40)
    source = open_source(SourceConfig(kind="file", path=str(path)), path)

    for frame in source:  # the pipeline breaks out and closes the source, not the iterator
        if frame.frame_index == 2:
            break
    source.close()

    assert not decode_threads()
    assert source.stats()["frames_yielded"] == 3


def test_read_ahead_when_consumer_is_slow_then_producer_waits_within_depth():
    produced = itertools.count()
    made: list[int] = []

    def items():
        while True:
            made.append(next(produced))
            yield made[-1]

    ahead = read_ahead(items(), depth=2, name="decode-test")
    assert next(ahead) == 0
    for _ in range(50):  # give the producer every chance to run ahead
        time.sleep(0.02)
    assert len(made) <= 1 + 2 + 1  # the one consumed, the queue's two, the one waiting to go in
    assert [next(ahead) for _ in range(5)] == [1, 2, 3, 4, 5]
    ahead.close()
    assert not decode_threads()


def test_read_ahead_when_producer_fails_then_consumer_gets_items_then_the_error():
    def items():
        yield 1
        raise RuntimeError("corrupt packet")

    ahead = read_ahead(items(), depth=4, name="decode-test")

    assert next(ahead) == 1
    with pytest.raises(RuntimeError, match="corrupt packet"):
        next(ahead)
