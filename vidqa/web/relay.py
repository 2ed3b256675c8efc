"""The view relay: the live view, ``/metrics`` and ``/healthz`` for streams that run in other
processes (``run.processes`` > 1) or in Ray actors (``run.engine: ray``).

The run's own process serves the page (:class:`~vidqa.web.server.LiveView`) and the monitor
(:class:`~vidqa.web.metrics.Monitor`); the streams are elsewhere. On each stream's side a
:class:`StreamRelay` stands in for both: its :class:`RelayView` takes what
:class:`~vidqa.web.sink.LiveViewSink` publishes, its :class:`RelayMonitor` what a
:class:`~vidqa.web.metrics.MetricsSink` counts, and an :class:`Outbox` ships it all in batches
from a thread of its own, through a transport, to the :class:`RelayHost` in the run's process,
which publishes it into the view and the monitor and sends back which streams someone watches.

What crosses is small: a frame only while someone watches that stream, as a JPEG encoded on the
stream's side at most ``ViewOptions.max_fps`` times a second (frames nobody watches are neither
drawn nor encoded), the answer and alert events, the per-second status counters, and twice a
second the monitor's figures. Nothing waits for the other side: the outbox keeps the newest
frame per stream and a bounded list of messages, and counts what it drops, frames first (a
newer frame replaces one not yet sent).

The transports: :class:`QueueTransport` (a bounded ``multiprocessing`` queue, and the watched
flags in shared memory that the streams read at every shipment) and, for Ray,
:class:`~vidqa.engines.ray_actors.RayTransport` (an :class:`Inbox` actor on the driver's
machine).
"""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from loguru import logger

from vidqa.config import StreamConfig
from vidqa.messages import Answer
from vidqa.sources import is_live
from vidqa.web.app import ViewOptions, encode_jpeg
from vidqa.web.metrics import MetricsSink, Monitor, StreamWatch
from vidqa.web.server import LiveView

Message = tuple[str, str, Any]  # (kind, stream id, payload); kinds: see RelayHost.deliver
Batch = list[Message]

SHIP_EVERY_S = 0.25  # the outbox ships (and learns who watches) at least this often
SHIP_GAP_S = 0.1  # and at most once per this long: what comes meanwhile goes together
SHIP_TIMEOUT_S = 2.0  # a shipment the other side does not take by then is dropped
FIGURES_EVERY_S = 0.5  # the monitor's figures of a stream, at most this often
MAX_MESSAGES = 2000  # events, status and figures waiting in one outbox; then the oldest go
MAX_LATENCIES = 1024  # answer latencies kept for the next figures; then the oldest go
RECEIVE_WAIT_S = 0.1  # the host waits this long for the next batches


class Transport(Protocol):
    """How batches go from the streams' side to the run's process, and who watches back."""

    def ship(self, batch: Batch) -> frozenset[str]:
        """Send one batch (stream side; may wait up to :data:`SHIP_TIMEOUT_S`, then raise);
        the streams someone watches now."""

    def receive(self, watched: frozenset[str], wait_s: float) -> list[Batch]:
        """Tell the streams who watches; the batches that came, waiting up to ``wait_s`` for
        the first (the run's side)."""

    @property
    def dropped(self) -> int:
        """Messages the channel itself dropped (the outboxes count their own)."""


@dataclass(frozen=True)
class RelayEnd:
    """What a stream process or actor needs to relay its streams (picklable)."""

    transport: Any  # a Transport
    options: ViewOptions | None  # the page's encoding; None: only /metrics and /healthz
    metrics: bool = True  # relay the monitor's figures

    def connect(self) -> StreamRelay:
        return StreamRelay(self.transport.ship, self.options, self.metrics)


class StreamRelay:
    """The stream side: a view and a monitor for :class:`~vidqa.engines.local.LocalRun` (or a
    stream actor) to hand its streams, both feeding one :class:`Outbox`."""

    def __init__(self, ship: Callable[[Batch], frozenset[str]], options: ViewOptions | None,
                 metrics: bool = True) -> None:
        self.outbox = Outbox(ship)
        self.view = RelayView(self.outbox, options) if options is not None else None
        self.monitor = RelayMonitor(self.outbox) if metrics else None

    def close(self) -> None:
        """Ship what is left (the streams' last status and figures) and stop the sender."""
        self.outbox.close()


class Outbox:
    """What a stream process or actor has not shipped yet: the newest frame per stream and at
    most :data:`MAX_MESSAGES` messages. Posting never waits; a thread ships."""

    def __init__(self, ship: Callable[[Batch], frozenset[str]],
                 max_messages: int = MAX_MESSAGES) -> None:
        self.ship = ship
        self.max_messages = max_messages
        self.frames: dict[str, Message] = {}
        self.messages: deque[Message] = deque()
        self.dropped: Counter[str] = Counter()  # per stream: frames and messages never shipped
        self.watched: frozenset[str] = frozenset()  # as the other side said at the last shipment
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._failed = False
        self._thread = threading.Thread(target=self._run, name="view-relay", daemon=True)
        self._thread.start()

    def post_frame(self, stream_id: str, jpeg: bytes, size: tuple[int, int]) -> None:
        with self._lock:
            if stream_id in self.frames:  # never shipped: the newer frame replaces it
                self.dropped[stream_id] += 1
            self.frames[stream_id] = ("jpeg", stream_id, (jpeg, size))
        self._wake.set()

    def post(self, message: Message) -> None:
        with self._lock:
            if len(self.messages) >= self.max_messages:
                self.dropped[self.messages.popleft()[1]] += 1
            self.messages.append(message)
        self._wake.set()

    def close(self, timeout_s: float = 2 * SHIP_TIMEOUT_S + 1.0) -> None:
        self._closing.set()
        self._wake.set()
        self._thread.join(timeout_s)

    def _take(self) -> Batch:
        with self._lock:
            batch = [*self.messages, *self.frames.values()]
            self.messages.clear()
            self.frames.clear()
        return batch

    def _run(self) -> None:
        while True:
            closing = self._closing.is_set()
            batch = self._take()
            try:
                self.watched = self.ship(batch)
                self._failed = False
            except Exception as err:  # a full channel or a view that went away: dropped
                with self._lock:
                    self.dropped.update(message[1] for message in batch)
                if not self._failed:
                    logger.warning("view relay: {} messages dropped, the run's side did not "
                                   "take them: {!r}", len(batch), err)
                self._failed = True
            if closing:
                return
            self._closing.wait(SHIP_GAP_S)
            self._wake.wait(SHIP_EVERY_S)
            self._wake.clear()


class RelayView:
    """:class:`~vidqa.web.server.LiveView`'s publishing side for a stream in another process:
    frames become JPEGs here, only while the stream is watched and at most ``max_fps``."""

    def __init__(self, outbox: Outbox, options: ViewOptions) -> None:
        self.outbox = outbox
        self.options = options
        self.encoded: Counter[str] = Counter()  # JPEGs encoded per stream
        self._due: dict[str, float] = {}  # stream -> when its next frame may be sent
        self._wanted: set[str] = set()  # streams whose next published frame is sent

    def is_watched(self, stream_id: str) -> bool:
        """Whether this frame is wanted: someone watches the stream and a frame is due (so
        :class:`~vidqa.web.sink.LiveViewSink` draws only the frames that are sent)."""
        wanted = stream_id in self.outbox.watched and \
            time.monotonic() >= self._due.get(stream_id, 0.0)
        if wanted:
            self._wanted.add(stream_id)
        else:
            self._wanted.discard(stream_id)
        return wanted

    def publish_frame(self, stream_id: str, image: np.ndarray) -> None:
        if stream_id not in self._wanted:
            return
        self._wanted.discard(stream_id)
        self._due[stream_id] = time.monotonic() + 1.0 / self.options.max_fps
        jpeg = encode_jpeg(image, self.options)
        self.encoded[stream_id] += 1
        self.outbox.post_frame(stream_id, jpeg, (int(image.shape[1]), int(image.shape[0])))

    def publish_event(self, event: dict[str, Any]) -> None:
        self.outbox.post(("event", str(event.get("stream_id", "0")), event))

    def publish_status(self, stream_id: str, counters: dict[str, Any]) -> None:
        self.outbox.post(("status", stream_id, {
            **counters, "relay_frames_encoded": self.encoded[stream_id],
            "relay_dropped": self.outbox.dropped[stream_id]}))

    def end_tracks(self, stream_id: str, track_ids: tuple[int, ...]) -> None:
        if track_ids:
            self.outbox.post(("end", stream_id, tuple(int(t) for t in track_ids)))


class RelayMonitor:
    """:class:`~vidqa.web.metrics.Monitor`'s ``watch`` for a stream in another process: its
    :class:`~vidqa.web.metrics.MetricsSink` counts here, the figures go to the run's monitor."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox

    def watch(self, stream_id: str, live: bool, stall_timeout_s: float,
              stats: Callable[[], dict[str, Any]]) -> MetricsSink:
        watch = StreamWatch(stream_id, live, stall_timeout_s, stats)
        return RelayedMetricsSink(watch, self.outbox)


class _Latencies:
    """Stands in for the latency histogram on the stream's side: keeps the observations until
    the next figures carry them."""

    def __init__(self) -> None:
        self.seconds: deque[float] = deque(maxlen=MAX_LATENCIES)

    def labels(self, **_: str) -> _Latencies:
        return self

    def observe(self, seconds: float) -> None:
        self.seconds.append(seconds)

    def take(self) -> list[float]:
        taken = []
        while self.seconds:
            taken.append(self.seconds.popleft())
        return taken


class RelayedMetricsSink(MetricsSink):
    """A :class:`~vidqa.web.metrics.MetricsSink` whose figures are posted at most every
    :data:`FIGURES_EVERY_S`, and once more when the stream ends."""

    def __init__(self, watch: StreamWatch, outbox: Outbox) -> None:
        self.latencies = _Latencies()
        super().__init__(watch, self.latencies)  # type: ignore[arg-type]
        self.outbox = outbox
        self._posted = 0.0

    def write(self, result: Any) -> None:
        super().write(result)
        self._post(due_only=True)

    def write_answers(self, answers: tuple[Answer, ...] | list[Answer]) -> None:
        super().write_answers(answers)
        self._post(due_only=True)

    def close(self) -> None:
        super().close()
        self._post(due_only=False)

    def _post(self, due_only: bool) -> None:
        now = time.monotonic()
        if due_only and now - self._posted < FIGURES_EVERY_S:
            return
        self._posted = now
        self.outbox.post(("figures", self.watch.stream_id,
                          (self.watch.figures(), self.latencies.take())))


class RelayHost:
    """The run's side: a thread that publishes what the streams relay into the view and the
    monitor, and tells them which streams someone watches."""

    def __init__(self, transport: Any, specs: list[StreamConfig], view: LiveView | None,
                 monitor: Monitor | None) -> None:
        self.transport = transport
        self.specs = {spec.id: spec for spec in specs}
        self.view = view
        self.monitor = monitor
        self.sinks: dict[str, MetricsSink] = {}  # the monitor's, per stream that sent figures
        self.stats: dict[str, dict[str, Any]] = {}  # each stream's latest relayed counters
        self.failed = 0  # messages that could not be published (logged once)
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name="view-relay-host", daemon=True)

    def end(self) -> RelayEnd:
        """What the stream processes or actors get."""
        return RelayEnd(self.transport, None if self.view is None else self.view.options,
                        self.monitor is not None)

    def start(self) -> RelayHost:
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop, after publishing what the streams shipped before they ended."""
        self._closing.set()
        if self._thread.ident is not None:
            self._thread.join(timeout=10.0)
        self._deliver_all(self.transport.receive(frozenset(), 0.0))
        if self.transport.dropped:
            logger.warning("view relay: {} messages dropped on the way to the live view (it "
                           "fell behind)", self.transport.dropped)

    def __enter__(self) -> RelayHost:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def watched(self) -> frozenset[str]:
        if self.view is None:
            return frozenset()
        return frozenset(sid for sid in self.specs if self.view.is_watched(sid))

    def _run(self) -> None:
        while not self._closing.is_set():
            try:
                self._deliver_all(self.transport.receive(self.watched(), RECEIVE_WAIT_S))
            except Exception as err:  # the streams' side has gone (a run that is ending)
                logger.warning("view relay: nothing received: {!r}", err)
                self._closing.wait(1.0)

    def _deliver_all(self, batches: list[Batch]) -> None:
        for batch in batches:
            for message in batch:
                try:
                    self.deliver(*message)
                except Exception as err:  # one bad message must not end the relay
                    if not self.failed:
                        logger.opt(exception=True).error("view relay: cannot publish a {} of "
                                                         "stream {}: {}", message[0],
                                                         message[1], err)
                    self.failed += 1

    def deliver(self, kind: str, stream_id: str, payload: Any) -> None:
        view = self.view
        if kind == "figures":
            self._figures(stream_id, *payload)
        elif view is None:
            return
        elif kind == "jpeg":
            view.publish_jpeg(stream_id, *payload)
        elif kind == "event":
            view.publish_event(payload)
        elif kind == "status":
            view.publish_status(stream_id, payload)
        elif kind == "end":
            view.end_tracks(stream_id, payload)
        else:
            raise ValueError(f"unknown message kind {kind!r}; expected figures, jpeg, event, "
                             f"status or end")

    def _figures(self, stream_id: str, figures: dict[str, Any], latencies_s: list[float]
                 ) -> None:
        if self.monitor is None:
            return
        sink = self.sinks.get(stream_id)
        if sink is None:
            spec = self.specs[stream_id]
            sink = self.sinks[stream_id] = self.monitor.watch(
                stream_id, is_live(spec.source), spec.source.stall_timeout_s,
                stats=lambda: self.stats.get(stream_id, {}))
        self.stats[stream_id] = figures["stats"]
        sink.merge(figures, latencies_s)


class Inbox:
    """Batches waiting for the run's side to take them, at most ``max_batches`` (then the oldest
    go, counted), and which streams someone watches, as the run's side last said. Ray's
    transport runs it as an actor on the driver's machine."""

    def __init__(self, max_batches: int = 256) -> None:
        self.batches: deque[Batch] = deque()
        self.max_batches = max_batches
        self.dropped = 0  # messages of the batches dropped because the run's side fell behind
        self.watched: frozenset[str] = frozenset()

    def post(self, batch: Batch) -> frozenset[str]:
        if batch:
            if len(self.batches) >= self.max_batches:
                self.dropped += len(self.batches.popleft())
            self.batches.append(batch)
        return self.watched

    def take(self, watched: frozenset[str]) -> tuple[list[Batch], int]:
        """The batches waiting, and how many messages were dropped so far."""
        self.watched = watched
        taken = list(self.batches)
        self.batches.clear()
        return taken, self.dropped


class QueueTransport:
    """Stream processes to the run's process: one bounded queue for every process's batches,
    and a watched flag per stream in shared memory."""

    def __init__(self, context: Any, stream_ids: list[str], max_batches: int = 64) -> None:
        self.queue = context.Queue(max_batches)
        self.flags = context.RawArray("b", max(1, len(stream_ids)))
        self.index = {sid: i for i, sid in enumerate(stream_ids)}
        self.dropped = 0  # none here: a full queue makes the streams' outboxes drop (counted)

    def ship(self, batch: Batch) -> frozenset[str]:
        if batch:
            self.queue.put(batch, timeout=SHIP_TIMEOUT_S)
        return frozenset(sid for sid, i in self.index.items() if self.flags[i])

    def receive(self, watched: frozenset[str], wait_s: float) -> list[Batch]:
        for sid, i in self.index.items():
            self.flags[i] = sid in watched
        batches = []
        try:
            batches.append(self.queue.get(timeout=wait_s) if wait_s else self.queue.get_nowait())
            while True:
                batches.append(self.queue.get_nowait())
        except queue.Empty:
            return batches
