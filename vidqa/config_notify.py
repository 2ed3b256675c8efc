"""The notification sections of the config: ``mqtt:`` and ``webhooks:`` (README: "Alerts and
history"), and ``${NAME}`` references to environment variables, which keep secrets out of the
YAML, and so out of ``summary.json`` and the store, where the resolved config is written.
The names are checked when the config loads; the values are read only where the client starts.
"""

from __future__ import annotations

import os
import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from vidqa.config_schema import require
from vidqa.errors import ConfigError

ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_env(text: str, key: str) -> str:
    """``text`` with each ``${NAME}`` replaced by that environment variable (secrets stay out
    of the YAML, the summary and the store); ConfigError naming an unset one."""
    def value(match: re.Match) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise ConfigError(f"{key} names the environment variable {name}, which is not set: "
                              f"export {name}=... where vidqa runs (the secret never goes in "
                              f"the YAML)")
        return os.environ[name]

    return ENV_REFERENCE.sub(value, text)


@dataclass(frozen=True)
class MqttConfig:
    """Answers, alerts and stream state to an MQTT broker (README: "Alerts and history")."""

    host: str = ""  # the broker; "" = no MQTT
    port: int = 1883  # 8883 is the usual port with TLS
    tls: bool | str = False  # true: TLS with the system's CAs; a path: TLS with that CA file
    username: str = ""  # "" = anonymous; may name an environment variable: ${MQTT_USER}
    password: str = ""  # only as an environment variable: ${VIDQA_MQTT_PASSWORD}
    client_id: str = ""  # "" = one the broker assigns
    topic_prefix: str = "vidqa"  # topics are <prefix>/<stream>/answers/<question>, ...
    qos: int = 1  # 1: delivered at least once, resent after a reconnect
    retain: bool = True  # the broker keeps the state, availability and latest snapshot topics
    answers: bool = True  # publish every answer too (false: alerts and state only)
    keepalive: int = 60  # seconds between pings; a dead connection is noticed within 1.5x
    outbox: int = 1000  # messages waiting while the broker is unreachable; the oldest dropped
    flush_s: float = 3.0  # at the end, how long the last messages may take to go out

    def __post_init__(self) -> None:
        require(1 <= self.port <= 65535, "mqtt.port", self.port, "a TCP port, 1-65535")
        require(self.qos in (0, 1, 2), "mqtt.qos", self.qos, "0, 1 or 2")
        require(self.keepalive >= 5, "mqtt.keepalive", self.keepalive, ">= 5 seconds")
        require(self.outbox >= 1, "mqtt.outbox", self.outbox, ">= 1 message")
        require(self.flush_s >= 0, "mqtt.flush_s", self.flush_s, ">= 0")
        levels = self.topic_prefix.split("/")
        require(all(levels) and not set(self.topic_prefix) & set("+#\0"), "mqtt.topic_prefix",
                 self.topic_prefix, "topic levels without +, # or empty levels, e.g. vidqa or "
                 "site1/vidqa")
        if isinstance(self.tls, str):
            _check_ca_file(self.tls)
        if self.password and not ENV_REFERENCE.fullmatch(self.password):
            raise ConfigError("mqtt.password must name an environment variable, e.g. password: "
                              "${VIDQA_MQTT_PASSWORD}: a secret in the YAML would be copied into "
                              "summary.json and the store")
        if self.host:
            expand_env(self.username, "mqtt.username")
            expand_env(self.password, "mqtt.password")


@dataclass(frozen=True)
class WebhookConfig:
    """One HTTP endpoint that every alert (of ``rules``) is POSTed to as JSON."""

    url: str  # http:// or https://
    headers: tuple[str, ...] = ()  # "Name: value", e.g. "Authorization: Bearer ${HOOK_TOKEN}"
    timeout_s: float = 5.0  # one attempt may take this long (connect, send, answer)
    rules: tuple[str, ...] = ()  # the rules whose alerts it gets; () = every rule
    snapshot: Literal["inline", "url", "none"] = "inline"  # inline: base64 JPEG; url: media_url
    media_url: str = ""  # snapshot url: vidqa's web server as the receiver reaches it
    attempts: int = 5  # tries per alert (5xx, 429, timeouts, refused); then counted failed
    backoff_s: float = 1.0  # wait before the second try, doubled for each next one
    queue_size: int = 100  # alerts waiting for this endpoint; the oldest dropped and counted
    flush_s: float = 3.0  # at the end, how long the alerts still queued may take

    def __post_init__(self) -> None:
        where = f"webhooks ({self.url})"
        if not re.match(r"https?://[^/\s]", self.url):
            raise ConfigError(f"webhooks: url {self.url!r} must start with http:// or https://")
        require(self.timeout_s > 0, f"{where}.timeout_s", self.timeout_s, "> 0")
        require(self.attempts >= 1, f"{where}.attempts", self.attempts, ">= 1")
        require(self.backoff_s >= 0, f"{where}.backoff_s", self.backoff_s, ">= 0")
        require(self.queue_size >= 1, f"{where}.queue_size", self.queue_size, ">= 1")
        require(self.flush_s >= 0, f"{where}.flush_s", self.flush_s, ">= 0")
        for header in self.headers:
            name, sep, value = header.partition(":")
            if not sep or not re.fullmatch(r"[A-Za-z0-9-]+", name.strip()):
                raise ConfigError(f"{where}.headers: {header!r} must read 'Name: value', e.g. "
                                  f"'Authorization: Bearer ${{HOOK_TOKEN}}'")
            expand_env(value, f"{where}.headers.{name.strip()}")
        if self.snapshot == "url" and not self.media_url:
            raise ConfigError(f"{where}.snapshot = 'url' needs media_url: the address at which "
                              f"the receiver reaches vidqa's web server (vidqa run --serve, "
                              f"vidqa serve), e.g. media_url: https://cameras.example.com")


def _check_ca_file(path: str) -> None:
    fix = "give the PEM file of the CA that signed the broker's certificate, or true for the " \
          "system's CAs"
    if not Path(path).is_file():
        raise ConfigError(f"mqtt.tls = {path!r}: no such CA file; {fix}")
    try:
        ssl.create_default_context(cafile=path)
    except (ssl.SSLError, ValueError) as err:
        raise ConfigError(f"mqtt.tls = {path!r} is not a CA file ({err}); {fix}") from None
