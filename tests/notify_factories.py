"""One-stream runs whose every answered track raises an alert (the scripted tracker, the tiny
VLM, two rules that between them match any answer), for the notification tests."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from factories import ScriptedTracker, write_video

from vidqa.config import load_config
from vidqa.engines.local import LocalRun
from vidqa.messages import FrameResult
from vidqa.pipeline import Pipeline
from vidqa.run import prepare_run_dir
from vidqa.store import EventStore

EVERYWHERE = "zones=[{name: all, polygon: [[0, 0], [4000, 0], [4000, 4000], [0, 4000]]}]"
RULES = ("rules=[{name: wears jeans, question: jeans, answer: 'yes', zone: all}, "
         "{name: 'No jeans!', question: jeans, answer: 'no', zone: all}]")
RULE_TOPICS = {"wears jeans": "wears-jeans", "No jeans!": "no-jeans"}


class FrameTimes:
    """A sink that notes when each frame left the pipeline (monotonic seconds)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def write(self, result: FrameResult) -> None:
        self.times.append(time.monotonic())

    def write_answers(self, answers: object) -> None:
        pass

    def close(self) -> None:
        pass

    def rate(self, start: float, end: float) -> float:
        """Frames per second between two monotonic times."""
        return sum(start <= t < end for t in self.times) / (end - start)


@dataclass
class AlertingRun:
    pipeline: Pipeline
    store: EventStore
    times: FrameTimes

    def ids(self, table: str) -> list[int]:
        """The ids of ``table``'s rows (answers, alerts) in the run's store."""
        with sqlite3.connect(f"file:{self.store.path}?mode=ro", uri=True) as conn:
            return [row[0] for row in conn.execute(f"SELECT id FROM {table} ORDER BY id")]


def alerting_run(tmp_path: Path, tiny_vlm_dir: Path, *overrides: str, frames: int = 60,
                 fps: float = 20.0) -> AlertingRun:
    """A one-stream run over a synthetic clip replayed as a live camera at ``fps``: a new
    person every 5 frames, each asked once, each answer raising one of the two rules' alerts
    (its track lives 12 frames: long enough for the answer to come back)."""
    video = write_video(tmp_path / "clip.avi", frames=frames, fps=fps)
    replay = ["source.replay=realtime", "sinks.segment_s=0"]
    cfg = load_config(None, ["roi.min_hits=1", f"source.path={video}", "vlm.worker=thread",
                             f"vlm.model={tiny_vlm_dir}", "vlm.adaptive.enabled=false",
                             "sinks.video=false", EVERYWHERE, RULES, *replay, *overrides])
    run = LocalRun.from_config(cfg, prepare_run_dir(cfg, tmp_path / "run"))
    pipeline = run.pipelines[0]
    pipeline.on_end += [run.service.close, run.store.close]
    pipeline.tracker = ScriptedTracker()
    times = FrameTimes()
    pipeline.extra_sinks.append(times)
    return AlertingRun(pipeline, run.store, times)
