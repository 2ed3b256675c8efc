"""What every notifier shares: the committed lines it is handed, the run it reports, and the
interface :class:`~vidqa.notify.Notifiers` drives."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

Line = tuple[str, str, dict[str, Any]]  # (stream_id, kind, event); kinds below
ANSWERS, ALERTS, STREAMS = "events", "alerts", "streams"


@dataclass(frozen=True)
class RunInfo:
    """What every notification says about the run that sent it."""

    run_id: int
    run_dir: Path
    store_folder: Path  # snapshot paths in the events are relative to it


class Notifier(Protocol):
    name: str

    def start(self, run: RunInfo) -> None: ...

    def committed(self, lines: list[Line]) -> None:
        """Queue what these lines announce; never blocks."""

    def end(self, end_reason: str | None) -> None:
        """The last lines have come: queue the final messages, send what is left."""

    def join(self, started: float) -> None:
        """Wait until everything went out or ``flush_s`` after ``started`` (monotonic)."""

    def summary(self) -> dict[str, Any]: ...
