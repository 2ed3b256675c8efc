"""Alerts POSTed as JSON to HTTP endpoints (``webhooks:``), with httpx.

Each endpoint has its own :class:`~vidqa.notify.outbox.Outbox` (``queue_size`` alerts, the
oldest dropped and counted) and its own thread, so a slow or dead endpoint delays neither the
streams nor the other endpoints. An alert is tried up to ``attempts`` times: a 5xx, 408 or
429 answer, a timeout (``timeout_s``) or a refused connection waits ``backoff_s``, then twice
that, and so on (at most :data:`MAX_BACKOFF_S`); any other 4xx is not tried again. An alert
that never got a 2xx is counted ``failed``. The body::

    {"event": "alert", "run": {"id": 3, "dir": "runs/factory"}, "stream_id": "cam1",
     "sent_at": 1764851234.5, "alert": {<its alerts.jsonl line>},
     "snapshot": {"path": "snapshots/cam1/alert-7.jpg", "content_type": "image/jpeg",
                  "base64": "/9j/4AAQ..."}}

``snapshot`` carries ``url`` (``media_url`` + ``/media/`` + path) instead of ``base64`` with
``snapshot: url``, and is null with ``snapshot: none`` or when the alert has no snapshot.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from typing import Any

import httpx
from loguru import logger

from vidqa.config_notify import WebhookConfig, expand_env
from vidqa.notify.base import ALERTS, Line, RunInfo
from vidqa.notify.outbox import Outbox

MAX_BACKOFF_S = 60.0
RETRIED_STATUSES = (408, 429)  # and every 5xx


class WebhookNotifier:
    """One endpoint of ``webhooks:`` (see the module doc)."""

    name = "webhooks"

    def __init__(self, cfg: WebhookConfig) -> None:
        self.cfg = cfg
        self.outbox: Outbox[dict[str, Any]] = Outbox(cfg.queue_size)
        self.run: RunInfo | None = None
        self.counts = {"delivered": 0, "retries": 0, "failed": 0, "undelivered": 0}
        self._abandon = threading.Event()  # the end's flush ran out: stop trying
        self._lock = threading.Lock()  # guards the counts and the two flags below
        self._busy = False  # an alert is being tried now
        self._written_off = False  # ... and join() counted it undelivered
        self._thread = threading.Thread(target=self._deliver_all, name="webhook", daemon=True)

    def start(self, run: RunInfo) -> None:
        self.run = run
        headers = {"Content-Type": "application/json", "User-Agent": "vidqa"}
        for header in self.cfg.headers:
            name, _, value = header.partition(":")
            headers[name.strip()] = expand_env(value.strip(), f"webhooks.headers.{name}")
        self._client = httpx.Client(timeout=self.cfg.timeout_s, headers=headers)
        self._thread.start()

    def committed(self, lines: list[Line]) -> None:
        rules = self.cfg.rules
        for _, kind, event in lines:
            if kind == ALERTS and event.get("event", "alert") == "alert" and (
                    not rules or event["rule"] in rules):
                self.outbox.put(event)

    def end(self, end_reason: str | None) -> None:
        self.outbox.close()  # the thread sends what is left, then ends

    def join(self, started: float) -> None:
        """Wait for the queue to empty, at most ``flush_s`` after ``started``; what is left
        (and the alert being tried) is counted undelivered."""
        if self.run is None:  # never started
            return
        self._thread.join(max(0.0, started + self.cfg.flush_s - time.monotonic()))
        if not self._thread.is_alive():
            self._client.close()
            return
        with self._lock:
            self._abandon.set()
            self._written_off = self._busy
            self.counts["undelivered"] += self.outbox.clear() + int(self._busy)
        logger.warning("webhook {}: {} alerts not delivered before the end (flush_s = {:g}; "
                       "every alert is in the store)", self.cfg.url, self.counts["undelivered"],
                       self.cfg.flush_s)

    def summary(self) -> dict[str, Any]:
        with self._lock:
            return {"url": self.cfg.url, **self.counts, "dropped": self.outbox.dropped,
                    "queued": len(self.outbox)}

    # ------------------------------------------------------------------ the sender thread

    def _deliver_all(self) -> None:
        while not self._abandon.is_set() and not self.outbox.done:
            with self._lock:  # taking an alert and marking it busy are one step for join()
                event = self.outbox.get(timeout=0.1)
                self._busy = event is not None
            if event is None:
                continue
            try:
                self._settle(self._deliver(event))
            except Exception as err:  # a bad alert must not end the endpoint's thread
                logger.opt(exception=True).error("webhook {}: {}", self.cfg.url, err)
                self._settle("failed")

    def _settle(self, outcome: str) -> None:
        """Count the alert just tried, unless the end wrote it off as undelivered already
        (then only a late success moves it)."""
        with self._lock:
            self._busy = False
            if not self._written_off:
                self.counts[outcome] += 1
            elif outcome == "delivered":
                self.counts["undelivered"] -= 1
                self.counts["delivered"] += 1

    def _deliver(self, event: dict[str, Any]) -> str:
        """Try one alert up to ``attempts`` times: ``delivered`` or ``failed``."""
        body = json.dumps(self._body(event)).encode()
        why = ""
        for attempt in range(self.cfg.attempts):
            if attempt:
                self.counts["retries"] += 1
                delay = min(self.cfg.backoff_s * 2 ** (attempt - 1), MAX_BACKOFF_S)
                if self._abandon.wait(delay):
                    return "failed"  # the end came: written off as undelivered
            try:
                response = self._client.post(self.cfg.url, content=body)
            except httpx.HTTPError as err:  # timeouts, refused or reset connections
                why = f"{type(err).__name__}: {err}"
                continue
            if response.is_success:
                return "delivered"
            why = f"HTTP {response.status_code}"
            if response.status_code < 500 and response.status_code not in RETRIED_STATUSES:
                break  # the request itself is wrong: trying again will not help
        if not self._abandon.is_set():
            logger.warning("webhook {}: alert {} ({}) not delivered after {} attempts: {}",
                           self.cfg.url, event.get("alert_id"), event.get("rule"),
                           attempt + 1, why)
        return "failed"

    def _body(self, event: dict[str, Any]) -> dict[str, Any]:
        run = self.run
        return {"event": "alert", "run": {"id": run.run_id, "dir": str(run.run_dir)},
                "stream_id": event.get("stream_id"), "sent_at": round(time.time(), 3),
                "alert": event, "snapshot": self._snapshot(event.get("snapshot"))}

    def _snapshot(self, path: str | None) -> dict[str, Any] | None:
        mode = self.cfg.snapshot
        if not path or mode == "none":
            return None
        if mode == "url":
            return {"path": path, "content_type": "image/jpeg",
                    "url": f"{self.cfg.media_url.rstrip('/')}/media/{path}"}
        try:
            data = (self.run.store_folder / path).read_bytes()
        except OSError:  # retention deleted it already
            return None
        return {"path": path, "content_type": "image/jpeg",
                "base64": base64.b64encode(data).decode("ascii")}
