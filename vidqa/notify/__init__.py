"""Notifications: what the store committed, sent on to people over MQTT and webhooks.

Every record of every stream reaches the run's one event store, whatever the layout (threads,
``run.processes``, Ray), so the store is the one place that notifies: after each commit its
writer hands the committed lines — ``(stream_id, kind, event)``, the event dicts of the JSONL
export with their ``answer_id`` / ``alert_id`` and ``snapshot`` path, plus a ``streams`` line
when a stream starts — to :meth:`Notifiers.committed`. A notifier only puts them on its
bounded :class:`~vidqa.notify.outbox.Outbox` (never waiting: a full one drops its oldest,
counted); its own thread does the network. When the store closes, :meth:`Notifiers.close`
gives every notifier until its ``flush_s`` to send what is left, then counts the rest
undelivered. Everything is in the store either way: a notification is a copy, never the
record.

This package knows the event dicts, never the store's writer (dependencies point one way).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from loguru import logger

from vidqa.config import PipelineConfig
from vidqa.notify.base import ALERTS, ANSWERS, STREAMS, Line, Notifier, RunInfo


class Notifiers:
    """The store's notifiers, from the config: MQTT when ``mqtt.host`` is set, one per
    ``webhooks`` entry."""

    def __init__(self, notifiers: list[Notifier]) -> None:
        self.notifiers = notifiers
        self.failed_batches = 0

    @classmethod
    def from_config(cls, cfg: PipelineConfig) -> Notifiers:
        notifiers: list[Notifier] = []
        if cfg.mqtt.host:
            from vidqa.notify.mqtt import MqttNotifier

            notifiers.append(MqttNotifier(cfg.mqtt, question_labels(cfg)))
        if cfg.webhooks:
            from vidqa.notify.webhooks import WebhookNotifier

            notifiers += [WebhookNotifier(hook) for hook in cfg.webhooks]
        return cls(notifiers)

    def __bool__(self) -> bool:
        return bool(self.notifiers)

    def start(self, run_id: int, run_dir: Path, store_folder: Path) -> None:
        run = RunInfo(run_id, Path(run_dir), Path(store_folder))
        for notifier in self.notifiers:
            notifier.start(run)

    def committed(self, lines: list[Line]) -> None:
        """Hand the lines to every notifier; one that fails loses these lines, logged and
        counted (``failed_batches``), and never the store's commit or the others'."""
        for notifier in self.notifiers:
            try:
                notifier.committed(lines)
            except Exception as err:
                self.failed_batches += 1
                logger.opt(exception=True).error("the {} notifier could not take {} committed "
                                                 "lines: {}", notifier.name, len(lines), err)

    def close(self, end_reason: str | None) -> None:
        """Final messages, then at most each notifier's ``flush_s`` (they flush together)."""
        started = time.monotonic()
        for notifier in self.notifiers:
            notifier.end(end_reason)
        for notifier in self.notifiers:
            notifier.join(started)

    def summary(self) -> dict[str, Any]:
        """``{"mqtt": {...}, "webhooks": [{...}, ...]}`` for the notifiers there are."""
        found: dict[str, Any] = {}
        for notifier in self.notifiers:
            if notifier.name == "webhooks":
                found.setdefault("webhooks", []).append(notifier.summary())
            else:
                found[notifier.name] = notifier.summary()
        if self.failed_batches:
            found["failed_batches"] = self.failed_batches
        return found


def question_labels(cfg: PipelineConfig) -> dict[str, str]:
    """Each question's text -> its name when it has one (the name is the shorter topic)."""
    questions = [*cfg.vlm.questions, *(q for s in cfg.streams for q in s.questions)]
    return {q.question: q.label for q in questions}


__all__ = ["ALERTS", "ANSWERS", "STREAMS", "Line", "Notifier", "Notifiers", "RunInfo"]
