"""Answers, alerts and stream state to an MQTT broker, with paho-mqtt.

Topics (``<prefix>`` is ``mqtt.topic_prefix``, ``vidqa`` by default)::

    <prefix>/available                          online | offline (retained; offline is the will)
    <prefix>/<stream>/state                     {"state": "running" | "ended", ...} (retained)
    <prefix>/<stream>/answers/<question>        one answer, JSON (its events.jsonl line)
    <prefix>/<stream>/alerts/<rule>             one alert, JSON (its alerts.jsonl line)
    <prefix>/<stream>/alerts/<rule>/snapshot    that alert's JPEG (retained), sent just before
    <prefix>/<stream>/clips                     a clip is ready: its path, the alert ids it shows

``<question>`` and ``<rule>`` are slugs (:func:`topic_slug`): the question's name (else its
text) or the rule's name, lowercased, every run of other characters than ``a-z 0-9 _ -``
made one ``-``; stable, and free of ``+ # /``.

How nothing waits: the store's writer puts messages on an :class:`Outbox` (``mqtt.outbox``
messages, the oldest dropped and counted). One thread hands them to paho while the client is
connected and fewer than :data:`WINDOW` are unacknowledged; paho's network thread connects
(``connect_async``: a broker that is down at the start delays nothing), reconnects with
backoff, and resends the QoS 1 messages it holds after a reconnect. While the broker is away
new messages wait in the outbox, not in paho, so the outbox cap is the bound.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from loguru import logger

from vidqa.config_notify import MqttConfig, expand_env
from vidqa.notify.base import ALERTS, ANSWERS, STREAMS, Line, RunInfo
from vidqa.notify.outbox import Outbox

WINDOW = 50  # messages handed to paho and not yet acknowledged, at most
RECONNECT_S = (1, 10)  # paho's reconnect backoff: first and longest wait
STOP_S = 2.0  # longest wait for paho's network thread to end
SLUG_MAX = 48  # longer names are cut and end in a hash of the whole name


def topic_slug(name: str) -> str:
    """A topic level for ``name``: ``Is this person wearing jeans?`` ->
    ``is-this-person-wearing-jeans``."""
    slug = re.sub(r"[^a-z0-9_-]+", "-", name.lower()).strip("-")
    if len(slug) > SLUG_MAX or not slug:
        digest = hashlib.sha1(name.encode()).hexdigest()[:8]
        slug = f"{slug[:SLUG_MAX - 9].rstrip('-')}-{digest}".lstrip("-")
    return slug


@dataclass(frozen=True)
class Message:
    topic: str
    body: dict[str, Any] | str | Path  # JSON, text, or a file's bytes (a snapshot)
    retain: bool = False


class MqttNotifier:
    """The run's MQTT client (see the module doc)."""

    name = "mqtt"

    def __init__(self, cfg: MqttConfig, labels: dict[str, str]) -> None:
        self.cfg = cfg
        self.prefix = cfg.topic_prefix
        self.slugs = {text: topic_slug(label) for text, label in labels.items()}
        self.outbox: Outbox[Message] = Outbox(cfg.outbox)
        self.run: RunInfo | None = None
        self.client: paho.Client | None = None
        self.states: dict[str, dict[str, Any]] = {}  # stream -> its state, resent on connect
        self.counts = {"delivered": 0, "reconnects": 0, "connect_failures": 0,
                       "snapshots_missing": 0, "undelivered": 0}
        self._lock = threading.Condition()  # guards the fields below and the counts
        self._connected = False
        self._connects = 0
        self._refused = False  # the broker refused us (credentials): said once
        self._pending = 0  # handed to paho, not acknowledged yet
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._publish, name="mqtt-publisher",
                                        daemon=True)

    @property
    def broker(self) -> str:
        return f"{self.cfg.host}:{self.cfg.port}"

    def start(self, run: RunInfo) -> None:
        cfg, self.run = self.cfg, run
        client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=cfg.client_id)
        if cfg.username:
            client.username_pw_set(expand_env(cfg.username, "mqtt.username"),
                                   expand_env(cfg.password, "mqtt.password") or None)
        if cfg.tls:
            client.tls_set(ca_certs=cfg.tls if isinstance(cfg.tls, str) else None)
        client.will_set(self._topic("available"), "offline", qos=1, retain=True)
        client.reconnect_delay_set(*RECONNECT_S)
        client.max_inflight_messages_set(WINDOW)
        client.on_connect, client.on_disconnect = self._on_connect, self._on_disconnect
        client.on_connect_fail, client.on_publish = self._on_connect_fail, self._on_publish
        self.client = client  # before the network thread: its on_connect publishes
        logger.info("MQTT: publishing to {} under {}/", self.broker, self.prefix)
        client.connect_async(cfg.host, cfg.port, cfg.keepalive)
        client.loop_start()
        self._thread.start()

    # ------------------------------------------------------------------ the store's writer side

    def committed(self, lines: list[Line]) -> None:
        for stream_id, kind, event in lines:
            if kind == ALERTS and event.get("event") == "clip":  # an alert's clip is ready
                self.outbox.put(Message(self._topic(stream_id, "clips"), self._with_run(event)))
            elif kind == ALERTS:
                for message in self._alert(stream_id, event):
                    self.outbox.put(message)
            elif kind == ANSWERS and self.cfg.answers:
                question = self.slugs.get(event["question"]) or topic_slug(event["question"])
                self.outbox.put(Message(self._topic(stream_id, "answers", question),
                                        self._with_run(event)))
            elif kind == STREAMS:
                self._state(stream_id, {"state": "running", **event})

    def end(self, end_reason: str | None) -> None:
        for stream_id in list(self.states):
            self._state(stream_id, {"state": "ended", "reason": end_reason or "completed"})

    def join(self, started: float) -> None:
        """Send what is queued until ``mqtt.flush_s``, then say offline and disconnect."""
        if self.client is None:  # never started
            return
        deadline = started + self.cfg.flush_s
        while (len(self.outbox) or self._pending) and time.monotonic() < deadline:
            with self._lock:
                self._lock.wait(0.05)
        self._stopping.set()
        self._thread.join(STOP_S)
        with self._lock:
            connected = self._connected
            self.counts["undelivered"] = self.outbox.clear() + self._pending
        if connected:  # a clean end: the will is not sent, so say it
            info = self._send(Message(self._topic("available"), "offline", retain=True))
            with contextlib.suppress(ValueError, RuntimeError, AttributeError):
                info.wait_for_publish(max(0.5, deadline - time.monotonic()))
        self.client.disconnect()
        stopper = threading.Thread(target=self.client.loop_stop, name="mqtt-stop", daemon=True)
        stopper.start()
        stopper.join(STOP_S)
        self._warn_undelivered()

    def summary(self) -> dict[str, Any]:
        with self._lock:
            return {"broker": self.broker, **self.counts, "dropped": self.outbox.dropped,
                    "queued": len(self.outbox), "connected": self._connected}

    # ------------------------------------------------------------------ messages

    def _topic(self, *levels: str) -> str:
        return "/".join((self.prefix, *levels))

    def _with_run(self, event: dict[str, Any]) -> dict[str, Any]:
        return {**event, "run_id": self.run.run_id if self.run else None}

    def _alert(self, stream_id: str, event: dict[str, Any]) -> list[Message]:
        """The snapshot first (retained: the rule's latest picture), then the alert."""
        topic = self._topic(stream_id, "alerts", topic_slug(event["rule"]))
        messages = [Message(topic, self._with_run(event))]
        if event.get("snapshot") and self.run is not None:
            path = self.run.store_folder / event["snapshot"]
            messages.insert(0, Message(f"{topic}/snapshot", path, retain=self.cfg.retain))
        return messages

    def _state(self, stream_id: str, state: dict[str, Any]) -> None:
        state = {**state, "stream_id": stream_id, "at": round(time.time(), 3)}
        self.states[stream_id] = self._with_run(state)
        self.outbox.put(Message(self._topic(stream_id, "state"), self.states[stream_id],
                                retain=self.cfg.retain))

    # ------------------------------------------------------------------ the publisher thread

    def _publish(self) -> None:
        while not self._stopping.is_set():
            with self._lock:
                if not self._lock.wait_for(
                        lambda: self._connected and self._pending < WINDOW, timeout=0.2):
                    continue
            message = self.outbox.get(timeout=0.2)
            if message is None:
                continue
            if not self._connected:  # lost while we waited: it stays first in the outbox
                self.outbox.put_back(message)
                continue
            self._send(message, requeue=True)

    def _send(self, message: Message, requeue: bool = False) -> paho.MQTTMessageInfo | None:
        payload = self._payload(message)
        if payload is None:
            return None
        qos = self.cfg.qos
        with self._lock:
            self._pending += 1
        info = self.client.publish(message.topic, payload, qos=qos, retain=message.retain)
        if info.rc != paho.MQTT_ERR_SUCCESS and qos == 0:  # lost with the connection
            with self._lock:
                self._pending -= 1
            if requeue:
                self.outbox.put_back(message)
        return info

    def _payload(self, message: Message) -> bytes | None:
        body = message.body
        if isinstance(body, Path):
            try:
                return body.read_bytes()
            except OSError:  # retention deleted it already
                with self._lock:
                    self.counts["snapshots_missing"] += 1
                return None
        if isinstance(body, dict):
            return json.dumps(body).encode()
        return body.encode()

    # ------------------------------------------------------------------ paho's callbacks

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        if reason.is_failure:
            if not self._refused:
                logger.error("MQTT: {} refused the connection: {} (check mqtt.username, "
                             "mqtt.password and the broker's ACL); retrying", self.broker,
                             reason)
            self._refused = True
            return
        with self._lock:
            self._connects += 1
            if self._connects > 1:
                self.counts["reconnects"] += 1
            self._connected = True
            self._lock.notify_all()
        if self._connects > 1:
            logger.info("MQTT: reconnected to {}; {} messages waiting", self.broker,
                        len(self.outbox))
        else:
            logger.info("MQTT: connected to {}", self.broker)
        # a broker that restarted without persistence lost the retained topics: say them again
        self._send(Message(self._topic("available"), "online", retain=True))
        for stream_id, state in list(self.states.items()):
            self._send(Message(self._topic(stream_id, "state"), state, retain=self.cfg.retain))

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any,
                       properties: Any) -> None:
        with self._lock:
            was, self._connected = self._connected, False
        if was and not self._stopping.is_set():
            logger.warning("MQTT: lost the broker {} ({}); messages wait in the outbox (at most "
                           "{}, the oldest dropped) while paho reconnects", self.broker, reason,
                           self.cfg.outbox)

    def _on_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        with self._lock:
            self.counts["connect_failures"] += 1
            first = self.counts["connect_failures"] == 1
        if first:
            logger.warning("MQTT: cannot reach the broker {}; messages wait in the outbox (at "
                           "most mqtt.outbox = {}, the oldest dropped) while vidqa retries every "
                           "{}-{} s; the store keeps every event either way", self.broker,
                           self.cfg.outbox, *RECONNECT_S)

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason: Any,
                    properties: Any) -> None:
        with self._lock:
            self._pending = max(0, self._pending - 1)
            self.counts["delivered"] += 1
            self._lock.notify_all()

    def _warn_undelivered(self) -> None:
        left = self.counts["undelivered"]
        if left and not self._connects:
            logger.warning("MQTT: the broker {} was never reached: {} messages were not "
                           "published (every event is in the store)", self.broker, left)
        elif left:
            logger.warning("MQTT: {} messages were not published to {} before the end "
                           "(mqtt.flush_s = {:g}); every event is in the store", left,
                           self.broker, self.cfg.flush_s)
