"""A real mosquitto broker on loopback for the MQTT tests: start, stop, restart, and a
subscriber that records what arrives.

:class:`Broker` writes a minimal config (one listener on 127.0.0.1 and a free port, anonymous
clients, persistence in its own folder so a restart keeps retained topics and the QoS 1
messages queued for a persistent subscriber), starts ``mosquitto`` as a child process, waits
for the port, and kills it on ``stop()``. Debian's package: ``apt-get install mosquitto``
(``tools/install_system_deps.sh``).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def mosquitto_missing() -> str | None:
    """None when mosquitto can run here, else why not (for ``pytest.skip``)."""
    if not Path(MOSQUITTO).exists():
        return "mosquitto is not installed: apt-get install -y mosquitto " \
               "(make test runs tools/install_system_deps.sh)"
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Broker:
    """One mosquitto on 127.0.0.1:``port`` (see the module doc)."""

    def __init__(self, folder: Path, port: int | None = None) -> None:
        self.folder = folder
        self.port = port or free_port()
        self.config = folder / "mosquitto.conf"
        self.log = folder / "mosquitto.log"
        self.proc: subprocess.Popen | None = None
        (folder / "data").mkdir(parents=True, exist_ok=True)
        user = pwd.getpwuid(os.geteuid()).pw_name  # as root it would switch to "mosquitto"
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\nuser {user}\n"
            f"persistence true\npersistence_location {folder / 'data'}/\n"
            f"autosave_interval 1\nlog_dest file {self.log}\n")

    def start(self, timeout_s: float = 10.0) -> Broker:
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.config)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.proc.stderr.read().decode()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on port {self.port} in {timeout_s} s")

    def stop(self) -> None:
        """SIGTERM (mosquitto saves its persistence file), SIGKILL if it lingers."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Subscriber:
    """A paho client that records every message on ``topics`` (QoS 1, a persistent session,
    so messages published while it reconnects after a broker restart still reach it)."""

    def __init__(self, port: int, topics: str = "vidqa/#", client_id: str = "test-subscriber"
                 ) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []  # (topic, payload, retained)
        self._changed = threading.Condition()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  clean_session=False)
        self.client.reconnect_delay_set(0.2, 1)
        self.client.on_connect = lambda c, u, f, r, p: c.subscribe(topics, qos=1)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()

    def _on_message(self, client: Any, userdata: Any, message: paho.MQTTMessage) -> None:
        with self._changed:
            self.messages.append((message.topic, message.payload, bool(message.retain)))
            self._changed.notify_all()

    def on(self, topic: str) -> list[bytes]:
        with self._changed:
            return [payload for t, payload, _ in self.messages if t == topic]

    def json_on(self, match: Callable[[str], bool]) -> list[dict[str, Any]]:
        with self._changed:
            return [json.loads(payload) for t, payload, _ in self.messages if match(t)]

    def wait_for(self, ready: Callable[[], Any], timeout_s: float = 20.0) -> Any:
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while not (value := ready()):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("timed out waiting for MQTT messages; got topics "
                                         f"{sorted({t for t, _, _ in self.messages})}")
                self._changed.wait(min(left, 0.2))
        return value

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
