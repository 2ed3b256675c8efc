"""The one interface every engine's streams use to reach the model: submit a crop, get a future.

:class:`~vidqa.serving.batching.BatchingService` (the model on a thread of this process),
:class:`~vidqa.serving.worker.WorkerService` and its :class:`~vidqa.serving.worker.WorkerClient`
(the model in a worker process) and :class:`~vidqa.serving.ray_client.RayClient` (a Ray Serve
deployment) all have it; :class:`~vidqa.serving.stage.AnswerStage` is typed against it.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any, Protocol, runtime_checkable

from vidqa.messages import Answer, Crop


class ServiceClosed(RuntimeError):
    """A crop was submitted after the service was closed."""


class Abandoned(RuntimeError):
    """A crop whose answer will not be waited for: the run is stopping."""


@runtime_checkable
class AnswerService(Protocol):
    """Crops in, answers out."""

    def submit(self, crop: Crop, questions: Sequence[str], block: bool = True,
               timeout: float | None = None) -> Future[list[Answer]] | None:
        """Queue one crop; its future resolves to one answer per question. ``block=False``
        returns None at once when the service is full (live streams); ``block=True`` waits for
        room, at most ``timeout`` seconds (None: as long as it takes)."""

    @property
    def waiting(self) -> int:
        """Crops queued and not yet taken into a batch (0 where the service cannot tell)."""

    def expect(self, seconds: float) -> None:
        """The files of the run have ``seconds`` of stream still to come: adaptive planning
        spends only what the plan can return on them (no call: live streams, no end)."""

    def close(self, abandon: bool = False) -> None:
        """No more crops; idempotent. The crops queued are answered first, or with ``abandon``
        failed at once with :class:`Abandoned` (the run is stopping: it waits seconds, not for
        the model)."""

    def summary(self) -> dict[str, Any]:
        """How the service batched: sizes, waits, refusals."""
