"""LiveView: a local web page that shows a running pipeline, served by uvicorn on a thread.

The pipeline calls the ``publish_*`` methods from its own thread; they return at once, whatever
the browsers do (see :mod:`vidqa.web.hub`). The server binds loopback unless a token is given.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import uvicorn
from loguru import logger

from vidqa.errors import ConfigError, OutputError
from vidqa.web.app import ViewOptions, build_app
from vidqa.web.asking import AskJobs
from vidqa.web.hub import Hub
from vidqa.web.metrics import Monitor

START_TIMEOUT_S = 10.0


def is_loopback(host: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class LiveView:
    """A live web view of one or more streams: video, a tracks table, counters, an event feed.

    Use as a context manager, or call :meth:`start` and :meth:`close`. ``port=0`` picks a free
    port; :attr:`url` tells where the page is.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 8765, token: str | None = None,
                 options: ViewOptions | None = None, queue_size: int = 256,
                 monitor: Monitor | None = None, page: bool = True,
                 store: Path | None = None) -> None:
        if not is_loopback(host) and not token:
            raise ConfigError(
                f"the live view would be reachable from the network on host {host!r} without a "
                f"token; expected a loopback host (127.0.0.1, ::1, localhost) or a token: keep "
                f"the default host, or pass a token that every request must then carry")
        self.host = host
        self.port = port
        self.token = token
        self.options = options or ViewOptions()
        self.hub = Hub(queue_size=queue_size)
        self.monitor = monitor  # serves /metrics and /healthz when given
        self.page = page  # False: only /metrics and /healthz (vidqa run --metrics)
        self.store = store  # the history of this store file (else the monitor's run's)
        self.asks = AskJobs()  # the history page's `vidqa ask` process
        self._closing = threading.Event()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> LiveView:
        """Bind, start the server thread and return once it accepts connections."""
        if self._thread is not None:
            return self
        self._closing.clear()
        sock = self._bind()
        self.port = sock.getsockname()[1]
        store = self.store
        app = build_app(self.hub, self._closing, self.options, self.token, self.monitor,
                        self.page, None if store is None else lambda: store, self.asks)
        config = uvicorn.Config(app, log_config=None, log_level="warning", access_log=False,
                                lifespan="off", timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        name="vidqa-liveview", daemon=True)
        self._thread.start()
        self._wait_started(sock)
        logger.info("live view at {}", self.url)
        return self

    def _bind(self) -> socket.socket:
        address = "127.0.0.1" if self.host == "localhost" else self.host
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, self.port))
            sock.listen(128)
        except OSError as err:
            sock.close()
            if err.errno == errno.EADDRINUSE:
                raise OutputError(f"port {self.port} on {self.host} is in use: pick another "
                                  f"with --serve PORT") from None
            raise OutputError(f"cannot listen on {self.host} port {self.port}: {err.strerror}; "
                              f"expected a local address and a free port") from None
        return sock

    def _wait_started(self, sock: socket.socket) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        assert self._server is not None and self._thread is not None
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.close()
                sock.close()
                raise OutputError(f"the live view server did not start on {self.host} port "
                                  f"{self.port}; see the log above for uvicorn's error")
            time.sleep(0.01)

    def close(self) -> None:
        """Stop the server and end every open stream; safe to call twice."""
        self._closing.set()
        self.asks.close()
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout=5.0)
        if self._thread.is_alive():  # a client that never reads holds its response open
            self._server.force_exit = True
            self._thread.join(timeout=5.0)
        self._server = None
        self._thread = None

    def __enter__(self) -> LiveView:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def url(self) -> str:
        return self.address("")

    def address(self, path: str) -> str:
        """The URL of ``path`` (e.g. ``history``) on this server, with the token."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        query = f"?token={self.token}" if self.token else ""
        return f"http://{host}:{self.port}/{path}{query}"

    # -- publishing: called from the pipeline's thread, never blocks ---------------------------

    def publish_frame(self, stream_id: str, image: np.ndarray) -> None:
        """Offer the newest annotated BGR frame; the caller must not modify it afterwards."""
        self.hub.publish_frame(stream_id, image)

    def publish_jpeg(self, stream_id: str, jpeg: bytes, size: tuple[int, int]) -> None:
        """Offer the newest frame as a JPEG that a stream in another process (or Ray actor)
        encoded; ``size``: the frame's (width, height) before any scaling."""
        self.hub.publish_frame(stream_id, jpeg, size)

    def publish_event(self, event: dict[str, Any]) -> None:
        """An answer or alert event (an events.jsonl line with "stream_id")."""
        self.hub.publish_event(event)

    def publish_status(self, stream_id: str, counters: dict[str, Any]) -> None:
        """Counters of one stream (fps, frames, frames_dropped, vlm_queue, phase, ...), merged."""
        self.hub.publish_status(stream_id, counters)

    def end_tracks(self, stream_id: str, track_ids: tuple[int, ...]) -> None:
        """Mark tracks the cropper ended; the table greys them out."""
        if track_ids:
            self.hub.end_tracks(stream_id, track_ids)

    def is_watched(self, stream_id: str) -> bool:
        """Whether a browser shows this stream's video now (lets a sink skip drawing)."""
        return self.hub.is_watched(stream_id)

    def clients(self) -> dict[str, list[dict[str, Any]]]:
        """Connected clients with their queue sizes and dropped counters."""
        return self.hub.clients()
