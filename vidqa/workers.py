"""What every worker process of a run shares: whether a process is still there, errors that
survive the trip between processes, and a client's replies resolved into futures."""

from __future__ import annotations

import itertools
import pickle
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import psutil

from vidqa.errors import ModelError


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie does not)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def picklable(error: BaseException) -> Exception:
    """``error`` itself when it pickles, else a RuntimeError that names it."""
    try:
        pickle.dumps(error)
        return error  # type: ignore[return-value]
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")


class Replies:
    """One client's futures, resolved by a reader thread from the client's reply queue.

    A reply is ``(kind, request_id, outcome)``, the outcome a result or an exception;
    ``("stop",)`` ends the reader, and so does ``on_other(kind, payload)`` returning True for a
    kind of its own. When the serving process dies (``alive()`` false while no reply comes),
    every open future fails with ``ModelError(died)``: a caller never waits forever."""

    def __init__(self, replies: Any, alive: Callable[[], bool], died: str, name: str,
                 on_other: Callable[[str, list], bool] | None = None) -> None:
        self._replies = replies
        self._alive = alive
        self._died = died
        self._on_other = on_other
        self._futures: dict[int, Future] = {}
        self._ids = itertools.count()
        self._thread = threading.Thread(target=self._read, name=name, daemon=True)

    def start(self) -> Replies:
        self._thread.start()
        return self

    def expect(self) -> tuple[int, Future]:
        """A new request id and the future its reply will resolve."""
        request_id, future = next(self._ids), Future()
        self._futures[request_id] = future
        return request_id, future

    def forget(self, request_id: int) -> None:
        """The request was never sent."""
        self._futures.pop(request_id, None)

    def stop(self, timeout: float) -> None:
        """End the reader (it reads what is queued before the stop first)."""
        if self._thread.is_alive():
            self._replies.put(("stop",))
        self.join(timeout)

    def join(self, timeout: float) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout=timeout)

    def _read(self) -> None:
        while True:
            try:
                kind, *payload = self._replies.get(timeout=1.0)
            except queue.Empty:
                if not self._alive():
                    self._fail_all(ModelError(self._died))
                    return
                continue
            if kind == "stop":
                return
            if kind != "reply":
                if self._on_other is not None and self._on_other(kind, payload):
                    return
                continue
            request_id, outcome = payload
            future = self._futures.pop(request_id)
            if isinstance(outcome, Exception):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

    def _fail_all(self, error: Exception) -> None:
        for future in self._futures.values():
            if not future.done():
                future.set_exception(error)
        self._futures.clear()
