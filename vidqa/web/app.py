"""The Starlette app of the live view: the page, MJPEG video, /api/state and an SSE event feed.

Everything here runs on the server's event loop thread. JPEG encoding runs in anyio's worker
threads (OpenCV releases the GIL), at most ``max_fps`` times a second per stream, only while a
video client is connected, and once per frame however many clients watch it.
"""

from __future__ import annotations

import asyncio
import hmac
import html
import json
import threading
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import cv2
import numpy as np
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import HTTPConnection, Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from vidqa.web.asking import AskJobs, ask_routes
from vidqa.web.history import history_routes
from vidqa.web.hub import Hub, StreamState
from vidqa.web.metrics import Monitor

STATIC = Path(__file__).parent / "static"
BOUNDARY = "vidqaframe"


@dataclass(frozen=True)
class ViewOptions:
    """How the server encodes and paces what it sends."""

    max_fps: float = 10.0  # JPEG encodes per second and stream, at most
    jpeg_quality: int = 75
    max_width: int = 960  # wider frames are scaled down before encoding
    heartbeat_s: float = 10.0  # SSE comment sent when idle, so dead clients are noticed
    snapshot_watch_s: float = 2.0  # a snapshot request counts as watching for this long


class TokenGate:
    """Rejects requests without the token (``?token=`` or ``Authorization: Bearer``) with 401."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self._allowed(HTTPConnection(scope)):
            response = PlainTextResponse(
                "401: this live view needs its token: add ?token=... to the URL or send "
                "'Authorization: Bearer ...'", status_code=401,
                headers={"WWW-Authenticate": "Bearer"})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _allowed(self, conn: HTTPConnection) -> bool:
        given = conn.query_params.get("token", "")
        auth = conn.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        return hmac.compare_digest(given.encode(), self.token)


class JpegCache:
    """The newest JPEG per stream, re-encoded only for a newer frame and at most max_fps."""

    def __init__(self, options: ViewOptions) -> None:
        self.options = options
        self.cache: dict[str, tuple[int, bytes, float]] = {}  # stream -> (seq, jpeg, encoded at)
        self.locks: dict[str, asyncio.Lock] = {}

    async def get(self, stream: StreamState) -> tuple[int, bytes] | None:
        latest = stream.latest
        if latest is None:
            return None
        if isinstance(latest[1], bytes):  # encoded (and paced) on the stream's side
            return latest[0], latest[1]
        lock = self.locks.setdefault(stream.stream_id, asyncio.Lock())
        async with lock:
            seq, jpeg, at = self.cache.get(stream.stream_id, (0, b"", 0.0))
            due = time.monotonic() - at >= 1.0 / self.options.max_fps
            if latest[0] != seq and due:
                jpeg = await anyio.to_thread.run_sync(self._encode, latest[1])
                seq = latest[0]
                self.cache[stream.stream_id] = (seq, jpeg, time.monotonic())
            return seq, jpeg

    def _encode(self, image: np.ndarray) -> bytes:
        return encode_jpeg(image, self.options)


def encode_jpeg(image: np.ndarray, options: ViewOptions) -> bytes:
    """A BGR frame as the view sends it: no wider than ``max_width``, at ``jpeg_quality``."""
    height, width = image.shape[:2]
    if width > options.max_width:
        scale = options.max_width / width
        image = cv2.resize(image, (options.max_width, max(1, round(height * scale))),
                           interpolation=cv2.INTER_AREA)
    ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, options.jpeg_quality])
    assert ok, "OpenCV could not encode a BGR uint8 frame as JPEG"
    return buffer.tobytes()


class StateResponse(JSONResponse):
    """JSON that also takes the numpy scalars a pipeline may put in its events."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, default=_jsonable, separators=(",", ":")).encode()


def build_app(hub: Hub, closing: threading.Event, options: ViewOptions,
              token: str | None, monitor: Monitor | None = None, page: bool = True,
              store: Callable[[], Path | None] | None = None, asks: AskJobs | None = None
              ) -> ASGIApp:
    """The ASGI app; ``closing.is_set()`` tells the streaming responses to finish. With a
    ``monitor`` it serves ``/metrics`` and ``/healthz`` too; ``page=False`` serves only
    those (``vidqa run --metrics PORT``). The page comes with the history of the event store
    (:mod:`vidqa.web.history`): the run's (its monitor's), or ``store()``'s, and its ask box
    (:mod:`vidqa.web.asking`), whose processes ``asks`` runs."""
    jpegs = JpegCache(options)
    # the page's own asset URLs carry the token too, or the browser could not load them
    query = "" if not token else "?token=" + html.escape(urllib.parse.quote(token, safe=""))
    index = (STATIC / "index.html").read_text(encoding="utf-8").replace("__QUERY__", query)

    async def index_page(request: Request) -> Response:
        return HTMLResponse(index, headers={"Cache-Control": "no-store"})

    async def state(request: Request) -> Response:
        return StateResponse(hub.state(), headers={"Cache-Control": "no-store"})

    async def snapshot(request: Request) -> Response:
        stream = hub.streams.get(request.path_params["stream_id"])
        if stream is not None:  # before the frame: a relayed stream sends none unwatched
            stream.snapshot_until = time.monotonic() + options.snapshot_watch_s
        got = None if stream is None else await jpegs.get(stream)
        if stream is None or got is None:
            return _no_stream(hub, request.path_params["stream_id"])
        return Response(got[1], media_type="image/jpeg", headers={"Cache-Control": "no-store"})

    async def video(request: Request) -> Response:
        stream_id = request.path_params["stream_id"]
        if stream_id not in hub.streams:
            return _no_stream(hub, stream_id)
        return StreamingResponse(
            _mjpeg(hub, jpegs, stream_id, closing, options),
            media_type=f"multipart/x-mixed-replace; boundary={BOUNDARY}",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    async def events(request: Request) -> Response:
        return StreamingResponse(
            _sse(hub, closing, options), media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    routes = [] if monitor is None else monitor_routes(monitor)
    if page:
        routes += [
            Route("/", index_page),
            Route("/api/state", state),
            Route("/events", events),
            Route("/streams/{stream_id}/video", video),
            Route("/streams/{stream_id}/snapshot.jpg", snapshot),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ]
        if store is None and monitor is not None:
            store = lambda: _store_path(monitor)  # noqa: E731
        if store is not None:
            routes += history_routes(store, query) + ask_routes(store, asks or AskJobs())
    app: ASGIApp = Starlette(routes=routes)
    return TokenGate(app, token) if token else app


def monitor_routes(monitor: Monitor) -> list[Route]:
    """``/metrics`` (Prometheus text format) and ``/healthz`` (200, or 503 with the reasons,
    one per line)."""

    async def metrics(request: Request) -> Response:
        body = await anyio.to_thread.run_sync(monitor.exposition)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    async def healthz(request: Request) -> Response:
        problems = monitor.health()
        if problems:
            return PlainTextResponse("\n".join(problems) + "\n", status_code=503)
        return PlainTextResponse("ok\n")

    return [Route("/metrics", metrics), Route("/healthz", healthz)]


def _store_path(monitor: Monitor) -> Path | None:
    store = monitor.store
    return None if store is None or not Path(store.path).exists() else Path(store.path)


def _no_stream(hub: Hub, stream_id: str) -> Response:
    known = ", ".join(sorted(tuple(hub.streams))) or "none yet"
    return PlainTextResponse(f"no frame published for stream {stream_id!r}; streams: {known}",
                             status_code=404)


async def _mjpeg(hub: Hub, jpegs: JpegCache, stream_id: str, closing: threading.Event,
                 options: ViewOptions) -> AsyncIterator[bytes]:
    client = hub.watch(stream_id)
    try:
        last = 0
        while not closing.is_set():
            got = await jpegs.get(client.stream)
            if got is not None and got[0] != last:
                last, jpeg = got
                yield (f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                       f"Content-Length: {len(jpeg)}\r\n\r\n").encode() + jpeg + b"\r\n"
                client.sent += 1
            await asyncio.sleep(1.0 / options.max_fps)
    finally:
        hub.unwatch(client)


async def _sse(hub: Hub, closing: threading.Event, options: ViewOptions) -> AsyncIterator[str]:
    queue = hub.subscribe(asyncio.get_running_loop())
    try:
        yield "retry: 2000\n\n"
        reported, idle = 0, 0.0
        while not closing.is_set():
            events = await queue.drain(timeout=0.5)
            idle = 0.0 if events else idle + 0.5
            if queue.dropped != reported:
                reported = queue.dropped
                yield _sse_message("dropped", {"dropped": reported})
            if events:
                yield "".join(_sse_message(_kind(e), e) for e in events)
            elif idle >= options.heartbeat_s:
                idle = 0.0
                yield ": keepalive\n\n"
        last = queue.take()  # what the run published as it ended
        if last:
            yield "".join(_sse_message(_kind(e), e) for e in last)
    finally:
        hub.unsubscribe(queue)


def _kind(event: dict[str, Any]) -> str:
    if event.get("type"):
        return str(event["type"])
    return "alert" if "alert" in event else "answer"


def _sse_message(kind: str, data: dict[str, Any]) -> str:
    return f"event: {kind}\ndata: {json.dumps(data, default=_jsonable)}\n\n"


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
