"""A stream's side of the Ray Serve deployment that answers for ``run.engine: ray``."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, InvalidStateError
from typing import Any

from vidqa.messages import Answer, Crop
from vidqa.serving.base import Abandoned, ServiceClosed

# One crop as it travels to the deployment: the crop, its questions, when it was submitted
# (wall clock: the stream and the replica may be different processes or machines).
CropRequest = tuple[Crop, tuple[str, ...], float]


class RayClient:
    """The :class:`~vidqa.serving.base.AnswerService` of a stream over a deployment handle:
    the answers come back on a private event loop thread as plain futures."""

    def __init__(self, handle: Any, max_in_flight: int) -> None:
        self._handle = handle
        self._max_in_flight = max_in_flight
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="vlm-client",
                                        daemon=True)
        self._thread.start()
        self._closed = False
        self._open: set[Future] = set()  # sent and not answered: failed by an abandoning close
        self.refused = 0

    def submit(self, crop: Crop, questions: Sequence[str], block: bool = True,
               timeout: float | None = None) -> Future[list[Answer]] | None:
        """Send one crop; its future resolves to one answer per question. When the stream has
        ``max_in_flight`` crops out, ``block=False`` returns None at once, ``block=True`` waits
        for one to come back (at most ``timeout`` seconds)."""
        if self._closed:
            raise ServiceClosed("the VLM client is closed: no more crops can be answered")
        if not self._slots.acquire(blocking=block, timeout=timeout if block else None):
            self.refused += 1
            return None
        request = (crop, tuple(questions), time.time())
        future = asyncio.run_coroutine_threadsafe(self._ask(request), self._loop)
        self._open.add(future)
        future.add_done_callback(self._done)
        return future

    @property
    def waiting(self) -> int:
        """Crops of this stream out at the deployment (its queue is Ray's to see)."""
        return self._max_in_flight - self._slots._value

    def expect(self, seconds: float) -> None:
        """Nothing: the driver tells every replica how much of the files is to come when it
        deploys them (:mod:`vidqa.engines.ray`); one stream cannot reach every replica."""

    def summary(self) -> dict[str, Any]:
        return {"worker": "ray", "refused_when_full": self.refused}

    async def _ask(self, request: CropRequest) -> list[Answer]:
        return await self._handle.answer.remote(request)

    def close(self, abandon: bool = False) -> None:
        """Stop the loop (answers still in flight are dropped; the stage has waited). With
        ``abandon`` the crops still out fail at once with :class:`Abandoned`."""
        if abandon:
            error = Abandoned("the run is stopping: the crop's answer is not waited for")
            for future in list(self._open):
                with contextlib.suppress(InvalidStateError):  # its answer came meanwhile
                    future.set_exception(error)
        if not self._closed:
            self._closed = True
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)

    def _done(self, future: Future) -> None:
        self._open.discard(future)
        self._slots.release()
