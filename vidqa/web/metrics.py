"""What a run tells the monitoring people already run: ``/metrics`` in the Prometheus text
format and ``/healthz``.

Each stream's :class:`MetricsSink` counts its frames, answers and alerts and when the last
frame came; the rest (drops, reconnects, tracks, the model's queue and restarts, the store's
write lag) is read from the run's parts at scrape time, so nothing is copied per frame. A
stream is healthy while frames keep coming: a live stream that has had none for longer than
its ``source.stall_timeout_s`` makes ``/healthz`` answer 503 with the reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from vidqa.messages import Answer, FrameResult

LATENCY_BUCKETS_S = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
FPS_WINDOW_S = 5.0  # the frame rate is measured over about this long


@dataclass
class StreamWatch:
    """One stream as the monitor sees it."""

    stream_id: str
    live: bool
    stall_timeout_s: float
    stats: Callable[[], dict[str, Any]]  # the stream's source and stage counters, on demand
    frames: int = 0
    answers: int = 0
    alerts: int = 0
    started: float = field(default_factory=time.monotonic)
    last_frame_at: float | None = None
    ended: bool = False
    fps: float = 0.0
    _window: tuple[float, int] = (0.0, 0)  # (start, frames at start) of the fps window

    def problem(self, now: float) -> str | None:
        """Why this stream is unhealthy, or None."""
        if self.ended:
            return f"stream {self.stream_id} has ended" if self.live else None
        since = now - (self.last_frame_at if self.last_frame_at is not None else self.started)
        if self.live and since > self.stall_timeout_s:
            attempts = _safe(self.stats).get("reconnect_attempts", 0)
            return (f"stream {self.stream_id}: no frame for {since:.1f} s (stall timeout "
                    f"{self.stall_timeout_s:g} s; {attempts} reconnect attempts)")
        return None

    def figures(self) -> dict[str, Any]:
        """What a monitor in another process needs of this stream (:meth:`MetricsSink.merge`),
        its counters read now."""
        return {"frames": self.frames, "answers": self.answers, "alerts": self.alerts,
                "fps": self.fps, "ended": self.ended, "stats": _safe(self.stats)}


class MetricsSink:
    """A stream's sink that feeds the monitor: a few integers and a histogram per frame."""

    def __init__(self, watch: StreamWatch, latency: Histogram) -> None:
        self.watch = watch
        self.latency = latency.labels(stream=watch.stream_id)
        watch._window = (time.monotonic(), 0)

    def write(self, result: FrameResult) -> None:
        watch, now = self.watch, time.monotonic()
        watch.frames += 1
        watch.last_frame_at = now
        watch.alerts += len(result.alerts)
        self.write_answers(result.answers)
        start, frames = watch._window
        if now - start >= FPS_WINDOW_S:
            watch.fps = (watch.frames - frames) / (now - start)
            watch._window = (now, watch.frames)

    def write_answers(self, answers: tuple[Answer, ...] | list[Answer]) -> None:
        self.watch.answers += len(answers)
        for answer in answers:
            if answer.latency_ms is not None:
                self.latency.observe(answer.latency_ms / 1000)

    def merge(self, figures: dict[str, Any], latencies_s: list[float]) -> None:
        """The figures of this stream counted in another process (:meth:`StreamWatch.figures`)
        and the latencies of its answers since the last ones; a frame counted there counts as
        one that came now."""
        watch = self.watch
        if figures["frames"] > watch.frames:
            watch.last_frame_at = time.monotonic()
        for key in ("frames", "answers", "alerts", "fps", "ended"):
            setattr(watch, key, figures[key])
        for seconds in latencies_s:
            self.latency.observe(seconds)

    def close(self) -> None:
        self.watch.ended = True


class Monitor:
    """The run's metrics and health (see the module doc)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram("vidqa_answer_latency_seconds",
                                 "Crop submitted to answer back at its stream", ["stream"],
                                 registry=self.registry, buckets=LATENCY_BUCKETS_S)
        self.streams: dict[str, StreamWatch] = {}
        self.service: Any = None  # the model service: its queue and restarts
        self.store: Any = None  # the event store: its write lag and drops
        self.registry.register(_RunCollector(self))

    def watch(self, stream_id: str, live: bool, stall_timeout_s: float,
              stats: Callable[[], dict[str, Any]]) -> MetricsSink:
        watch = StreamWatch(stream_id, live, stall_timeout_s, stats)
        self.streams[stream_id] = watch
        return MetricsSink(watch, self.latency)

    def health(self) -> list[str]:
        """The reasons the run is unhealthy; empty when it is healthy."""
        now = time.monotonic()
        return [p for w in list(self.streams.values()) if (p := w.problem(now)) is not None]

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _RunCollector:
    """Reads the run's counters at scrape time (Prometheus' custom collector protocol)."""

    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor

    def describe(self) -> list:
        return []  # collected lazily: nothing to describe up front

    def collect(self) -> Iterator[Any]:
        streams = list(self.monitor.streams.values())
        stats = {w.stream_id: _safe(w.stats) for w in streams}
        counters = {
            "frames": ("Frames processed", lambda w: w.frames),
            "frames_dropped": ("Frames a live source dropped because processing fell behind",
                               lambda w: stats[w.stream_id].get("frames_dropped", 0)),
            "reconnects": ("Reconnects of a live source",
                           lambda w: stats[w.stream_id].get("reconnects", 0)),
            "tracks": ("Tracks seen", lambda w: stats[w.stream_id].get("tracks", 0)),
            "answers": ("Answers recorded", lambda w: w.answers),
            "answers_failed": ("Crops whose answer failed (after one retry)",
                               lambda w: stats[w.stream_id].get("failed", 0)),
            "alerts": ("Alerts raised", lambda w: w.alerts),
        }
        for name, (doc, value) in counters.items():
            family = CounterMetricFamily(f"vidqa_{name}", doc, labels=["stream"])
            for watch in streams:
                family.add_metric([watch.stream_id], value(watch))
            yield family
        yield _per_stream(GaugeMetricFamily("vidqa_fps", "Frames per second over the last few "
                                            "seconds", labels=["stream"]),
                          streams, lambda w: w.fps)
        yield _per_stream(GaugeMetricFamily("vidqa_stream_up", "1 while the stream is "
                                            "healthy", labels=["stream"]),
                          streams, lambda w: 0.0 if w.problem(time.monotonic()) else 1.0)
        yield _per_stream(GaugeMetricFamily("vidqa_tracks_waiting", "Live tracks whose crop "
                                            "waits for room at the model", labels=["stream"]),
                          streams, lambda w: stats[w.stream_id].get("tracks_waiting", 0))
        yield from self._run_wide()

    def _run_wide(self) -> Iterator[Any]:
        service, store = self.monitor.service, self.monitor.store
        if service is not None:
            yield GaugeMetricFamily("vidqa_vlm_queue_depth", "Crops waiting for the model",
                                    value=_number(lambda: service.waiting))
            yield CounterMetricFamily("vidqa_worker_restarts",
                                      "Restarts of the model and detection worker processes",
                                      value=_number(lambda: getattr(service, "restarts", 0)))
        if store is not None:
            yield GaugeMetricFamily("vidqa_store_write_lag_seconds", "How long the oldest "
                                    "record not yet committed has waited",
                                    value=_number(lambda: store.write_lag_s))
            yield CounterMetricFamily("vidqa_store_dropped", "Records the store's full queue "
                                      "dropped", value=_number(lambda: store.dropped))
            notify = getattr(store, "notify", None)
            if notify:
                yield from _notify_metrics(notify.summary())


def _notify_metrics(summary: dict[str, Any]) -> Iterator[Any]:
    """MQTT's and each webhook's counters, a ``channel`` label each (``mqtt``, or the URL)."""
    channels = [("mqtt", summary["mqtt"])] if "mqtt" in summary else []
    channels += [(hook["url"].split("?")[0], hook) for hook in summary.get("webhooks", [])]
    for name, kind, doc in (
            ("delivered", CounterMetricFamily, "Notifications the broker or endpoint took"),
            ("dropped", CounterMetricFamily, "Notifications a full outbox dropped (the oldest)"),
            ("failed", CounterMetricFamily, "Alerts a webhook refused, after its retries"),
            ("queued", GaugeMetricFamily, "Notifications waiting in an outbox")):
        family = kind(f"vidqa_notify_{name}", doc, labels=["channel"])
        for channel, counts in channels:
            family.add_metric([channel], counts.get(name, 0))
        yield family
    if "mqtt" in summary:
        yield CounterMetricFamily("vidqa_mqtt_reconnects", "Reconnects to the MQTT broker",
                                  value=summary["mqtt"]["reconnects"])


def _per_stream(family: GaugeMetricFamily, streams: list[StreamWatch],
                value: Callable[[StreamWatch], float]) -> GaugeMetricFamily:
    for watch in streams:
        family.add_metric([watch.stream_id], value(watch))
    return family


def _safe(stats: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    try:
        return stats()
    except Exception:  # a scrape must never fail because one stream is closing
        return {}


def _number(read: Callable[[], float]) -> float:
    try:
        return float(read())
    except Exception:
        return 0.0
