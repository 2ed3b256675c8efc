"""What the pipeline publishes and the web server reads, shared between their two threads.

The pipeline's side (:meth:`Hub.publish_frame`, :meth:`Hub.publish_event`,
:meth:`Hub.publish_status`) takes no lock, encodes nothing and does O(1) work per watcher: it
swaps a reference or appends to a bounded :class:`collections.deque`. Everything costly (JPEG,
JSON, folding events into the tracks table) happens on the server's thread, and only for
clients that are connected. CPython's GIL makes each single deque append, ``len`` and attribute
store atomic; that is the only synchronisation the publishing side relies on.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

import numpy as np


class StreamState:
    """The newest frame and the merged counters of one stream; newest frame wins."""

    def __init__(self, stream_id: str) -> None:
        self.stream_id = stream_id
        # (sequence number, BGR image, or JPEG bytes a stream in another process encoded)
        self.latest: tuple[int, np.ndarray | bytes] | None = None
        self.size: tuple[int, int] | None = None  # (width, height) of the newest frame
        self.published = 0
        self.counters: dict[str, Any] = {}
        self.watchers = 0  # video clients connected now (written by the server thread only)
        self.snapshot_until = 0.0  # a page polling snapshots counts as watching until then


class EventQueue:
    """A bounded queue of events for one reader; when it is full the oldest event is dropped.

    ``push`` runs on the pipeline's thread and never waits. A reader on the server's event loop
    ``await``\\ s :meth:`drain`; ``push`` wakes it with one ``call_soon_threadsafe`` per burst.
    """

    def __init__(self, maxsize: int, loop: asyncio.AbstractEventLoop | None = None,
                 client_id: int = 0) -> None:
        self.id = client_id
        self.maxsize = maxsize
        self.items: deque[dict[str, Any]] = deque(maxlen=maxsize)
        self.dropped = 0
        self._loop = loop
        self._ready = asyncio.Event() if loop is not None else None
        self._wake_pending = False

    def push(self, event: dict[str, Any]) -> None:
        if len(self.items) >= self.maxsize:
            self.dropped += 1  # the deque drops its oldest item on this append
        self.items.append(event)
        if self._loop is None or self._wake_pending:
            return
        self._wake_pending = True
        try:
            self._loop.call_soon_threadsafe(self._wake)
        except RuntimeError:  # the server's loop has closed: nobody is reading any more
            pass

    def _wake(self) -> None:
        self._wake_pending = False  # cleared before set(): a later push always wakes again
        assert self._ready is not None
        self._ready.set()

    def take(self) -> list[dict[str, Any]]:
        """Everything queued now, oldest first (server thread)."""
        taken = []
        while self.items:
            taken.append(self.items.popleft())
        return taken

    async def drain(self, timeout: float) -> list[dict[str, Any]]:
        """Wait up to ``timeout`` seconds for events, then take them all."""
        assert self._ready is not None, "drain() needs a queue made with a loop"
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        self._ready.clear()
        return self.take()

    def stats(self) -> dict[str, int]:
        return {"id": self.id, "queued": len(self.items), "maxsize": self.maxsize,
                "dropped": self.dropped}


@dataclass
class VideoClient:
    """One MJPEG viewer; ``dropped`` counts frames published since it joined that it never got."""

    stream: StreamState
    start: int
    id: int
    sent: int = 0

    def stats(self) -> dict[str, Any]:
        dropped = max(0, self.stream.published - self.start - self.sent)
        return {"id": self.id, "stream_id": self.stream.stream_id, "sent": self.sent,
                "dropped": dropped}


class TrackTable:
    """The latest answers and alerts per (stream, track), at most ``max_tracks`` rows (LRU).

    Owned by the server's thread: it is filled from its own :class:`EventQueue`.
    """

    def __init__(self, max_tracks: int = 200, max_alerts: int = 5) -> None:
        self.rows: OrderedDict[tuple[str, int], dict[str, Any]] = OrderedDict()
        self.max_tracks = max_tracks
        self.max_alerts = max_alerts

    def apply(self, event: dict[str, Any]) -> None:
        if event.get("type") == "track_end":
            for track_id in event["track_ids"]:
                row = self.rows.get((event["stream_id"], int(track_id)))
                if row is not None:
                    row["active"] = False
            return
        if event.get("track_id") is None:
            return
        row = self._row(str(event.get("stream_id", "0")), int(event["track_id"]))
        row["last_frame"] = event.get("frame", row["last_frame"])
        if _is_alert(event):
            row["alerts"] = (row["alerts"] + [_alert_text(event)])[-self.max_alerts:]
        elif "answer" in event:
            row["answers"][str(event.get("question", ""))] = {
                key: event.get(key) for key in ("answer", "p_yes", "frame", "time_s", "phase")}
            for key in ("compressed", "plan_id", "phase"):
                row[key] = event.get(key, row[key])

    def _row(self, stream_id: str, track_id: int) -> dict[str, Any]:
        key = (stream_id, track_id)
        row = self.rows.get(key)
        if row is None:
            row = {"stream_id": stream_id, "track_id": track_id, "answers": {}, "alerts": [],
                   "compressed": None, "plan_id": None, "phase": None, "last_frame": None,
                   "active": True}
            self.rows[key] = row
            while len(self.rows) > self.max_tracks:
                self.rows.popitem(last=False)
        self.rows.move_to_end(key)
        row["active"] = True
        return row

    def snapshot(self) -> list[dict[str, Any]]:
        """Rows, most recently updated first, as JSON-ready dicts."""
        rows = []
        for row in reversed(self.rows.values()):
            answers = [{"question": q, **a} for q, a in row["answers"].items()]
            rows.append({**row, "answers": answers, "alerts": list(row["alerts"])})
        return rows


def _is_alert(event: dict[str, Any]) -> bool:
    return "alert" in (event.get("event"), event.get("type")) or "alert" in event


def _alert_text(event: dict[str, Any]) -> str:
    for key in ("message", "alert", "rule", "name"):
        if event.get(key):
            return str(event[key])
    return "alert"


class Hub:
    """The meeting point: the pipeline publishes into it, the server reads from it."""

    def __init__(self, queue_size: int = 256, table_queue_size: int = 10_000,
                 recent_events: int = 50) -> None:
        self.streams: dict[str, StreamState] = {}
        self.subscribers: dict[int, EventQueue] = {}
        self.video_clients: dict[int, VideoClient] = {}
        self.queue_size = queue_size
        self.table_inbox = EventQueue(table_queue_size)  # folded into `table` by the server
        self.table = TrackTable()
        self.recent: deque[dict[str, Any]] = deque(maxlen=recent_events)
        self.events_published = 0
        self._client_ids = itertools.count(1)  # ids shown in /api/state

    def stream(self, stream_id: str) -> StreamState:
        stream = self.streams.get(stream_id)
        if stream is None:
            stream = self.streams.setdefault(stream_id, StreamState(stream_id))
        return stream

    # -- the pipeline's side: O(1), no lock, no encoding --------------------------------------

    def publish_frame(self, stream_id: str, image: np.ndarray | bytes,
                      size: tuple[int, int] | None = None) -> None:
        """A BGR image, or a JPEG already encoded (then ``size`` is its frame's)."""
        stream = self.stream(stream_id)
        stream.published += 1
        stream.size = size if size is not None else (int(image.shape[1]), int(image.shape[0]))
        stream.latest = (stream.published, image)

    def publish_event(self, event: dict[str, Any]) -> None:
        event = {**event, "stream_id": str(event.get("stream_id", "0"))}
        self.events_published += 1
        self.recent.append(event)
        self.table_inbox.push(event)
        for queue in tuple(self.subscribers.values()):
            queue.push(event)

    def publish_status(self, stream_id: str, counters: dict[str, Any]) -> None:
        stream = self.stream(stream_id)
        stream.counters = {**stream.counters, **counters}

    def end_tracks(self, stream_id: str, track_ids: tuple[int, ...]) -> None:
        self.table_inbox.push({"type": "track_end", "stream_id": stream_id,
                               "track_ids": [int(t) for t in track_ids]})

    def is_watched(self, stream_id: str) -> bool:
        stream = self.streams.get(stream_id)
        if stream is None:
            return False
        return stream.watchers > 0 or time.monotonic() < stream.snapshot_until

    # -- the server's side ----------------------------------------------------------------------

    def subscribe(self, loop: asyncio.AbstractEventLoop) -> EventQueue:
        queue = EventQueue(self.queue_size, loop, next(self._client_ids))
        self.subscribers[queue.id] = queue
        return queue

    def watch(self, stream_id: str) -> VideoClient:
        stream = self.stream(stream_id)
        client = VideoClient(stream, stream.published, next(self._client_ids))
        self.video_clients[client.id] = client
        stream.watchers += 1
        return client

    def unwatch(self, client: VideoClient) -> None:
        if self.video_clients.pop(client.id, None) is not None:
            client.stream.watchers -= 1

    def unsubscribe(self, queue: EventQueue) -> None:
        self.subscribers.pop(queue.id, None)

    def fold_events(self) -> None:
        for event in self.table_inbox.take():
            self.table.apply(event)

    def clients(self) -> dict[str, list[dict[str, Any]]]:
        """Per-client queue sizes and drop counters, for /api/state and the tests."""
        return {"events": [q.stats() for q in tuple(self.subscribers.values())],
                "video": [c.stats() for c in tuple(self.video_clients.values())]}

    def state(self) -> dict[str, Any]:
        self.fold_events()
        streams = [_stream_state(s) for s in sorted(tuple(self.streams.values()),
                                                    key=lambda s: s.stream_id)]
        return {"streams": streams, "tracks": self.table.snapshot(),
                "recent_events": list(self.recent)[-20:], "clients": self.clients(),
                "events_published": self.events_published,
                "table_dropped": self.table_inbox.dropped}


def _stream_state(stream: StreamState) -> dict[str, Any]:
    size = None if stream.size is None else list(stream.size)
    return {"id": stream.stream_id, "frames_published": stream.published, "size": size,
            "watchers": stream.watchers, "counters": dict(stream.counters)}
