"""Synthetic inputs for the live-view tests: moving frames, answer events, an SSE reader."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import cv2
import httpx
import numpy as np

from vidqa.messages import Answer


def moving_box_frame(index: int, size: tuple[int, int] = (320, 240)) -> np.ndarray:
    """A BGR frame with a box that moves one step per frame and the frame number drawn."""
    width, height = size
    image = np.full((height, width, 3), (40, 30, 25), np.uint8)
    image[:, :, 1] = np.linspace(30, 90, width, dtype=np.uint8)
    x = (index * 4) % (width - 60)
    cv2.rectangle(image, (x, 70), (x + 60, 190), (80, 200, 60), -1)
    cv2.putText(image, f"frame {index}", (10, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.8,
                (255, 255, 255), 2, cv2.LINE_AA)
    return image


def answer_event(frame: int, track_id: int, p_yes: float = 0.8, stream_id: str = "0",
                 **extra: Any) -> dict[str, Any]:
    """An events.jsonl answer line, as Answer.to_event() writes it, with a stream id."""
    return {"frame": frame, "time_s": frame / 10, "track_id": track_id,
            "question": "Is this person carrying a backpack?",
            "answer": "yes" if p_yes >= 0.5 else "no", "p_yes": p_yes, "margin": 1.4,
            "bbox": [10, 20, 60, 140], "latency_ms": 80.1, "model": "fake", "compressed": False,
            "plan_id": None, "phase": "profile", "stream_id": stream_id, **extra}


def make_answer(frame: int, track_id: int = 3, p_yes: float | None = 0.9,
                question: str = "Backpack?", compressed: bool = True,
                plan_id: str | None = "p1") -> Answer:
    """An Answer as the VLM stage makes it; ``p_yes=None`` gives a free-form text answer."""
    text = "a red jacket" if p_yes is None else ("yes" if p_yes >= 0.5 else "no")
    return Answer(frame_index=frame, time_s=frame / 10, track_id=track_id, question=question,
                  answer=text, p_yes=p_yes, margin=None if p_yes is None else 2.0,
                  bbox=(20, 40, 90, 200), vlm_ms=50.0, model="fake", compressed=compressed,
                  plan_id=plan_id)


def read_sse(response: httpx.Response, count: int) -> list[tuple[str, dict[str, Any]]]:
    """The first ``count`` (event kind, data) pairs of an SSE response, skipping comments."""
    messages: list[tuple[str, dict[str, Any]]] = []
    kind, data = "message", None
    for line in response.iter_lines():
        if line.startswith("event:"):
            kind = line[6:].strip()
        elif line.startswith("data:"):
            data = json.loads(line[5:])
        elif line == "" and data is not None:
            messages.append((kind, data))
            kind, data = "message", None
            if len(messages) == count:
                break
    return messages


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    """Poll until ``condition()`` holds; fails with ``what`` after ``timeout_s`` (a guard, not a
    timing assertion)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.02)


def frames(count: int) -> Iterator[np.ndarray]:
    for index in range(count):
        yield moving_box_frame(index)


def chromium_path() -> str:
    """Debian's chromium, which playwright drives (it never downloads a browser); skips the
    test with the fix when it is missing."""
    import os
    import shutil

    import pytest

    for candidate in ("/usr/lib/chromium/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.skip("no system chromium: run tools/install_system_deps.sh (apt-get install "
                "chromium)")
