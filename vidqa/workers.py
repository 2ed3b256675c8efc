"""What every worker process of a run shares: whether a process is still there, errors that
survive the trip between processes, a client's replies resolved into futures, and the
supervisor that starts a worker again when it dies.

A worker that dies (killed, out of memory, a segfault in a driver) is started again on the same
queues, so the clients in stream processes keep theirs. Its owner tells every client
(``("restarted", n)`` on the client's reply queue), and each client sends again the requests
it has no reply for; a reply that then comes twice resolves its future once. When the worker
cannot be started again the owner says so (``("fail", error)``) and every open future fails.
"""

from __future__ import annotations

import itertools
import os
import pickle
import queue
import signal
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

import psutil
from loguru import logger

from vidqa.errors import ModelError

RESTART_DELAYS_S = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)  # before each new start, then 30 s each
MAX_FAILED_STARTS = 5  # starts in a row that did not get ready: the worker is given up
STABLE_S = 60.0  # a worker that lived this long died by bad luck: the delays start over
MAX_ASKS = 3  # a request open through this many deaths may be what kills the worker


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie does not)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def run_for_owner(poll_s: float = 0.5) -> None:
    """In a worker process: leave Ctrl-C and SIGTERM to the owner (they reach the whole process
    group; the owner stops its streams and then this worker, which must not die first), and
    exit when the owner is gone (killed with SIGKILL, it could not say so), instead of waiting
    forever on its queues."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    owner = os.getppid()

    def watch() -> None:
        while os.getppid() == owner:
            time.sleep(poll_s)
        os._exit(0)

    threading.Thread(target=watch, name="owner-watch", daemon=True).start()


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
    kind of its own. ``("restarted", n)`` sends every open request again (``resend(request)``
    with what :meth:`expect` was given); ``("fail", error)`` fails every open future and ends
    the reader. When the serving side is gone (``alive()`` false while no reply comes), every
    open future fails with ``ModelError(died)``: a caller never waits forever."""

    def __init__(self, replies: Any, alive: Callable[[], bool], died: str, name: str,
                 on_other: Callable[[str, list], bool] | None = None,
                 resend: Callable[[int, Any], None] | None = None) -> None:
        self._replies = replies
        self._alive = alive
        self._died = died
        self._on_other = on_other
        self._resend = resend
        self._open: dict[int, _Open] = {}
        self._lock = threading.Lock()  # callers add, the reader resolves
        self._ended: BaseException | None = None  # why the reader failed everything
        self._ids = itertools.count()
        self._thread = threading.Thread(target=self._read, name=name, daemon=True)

    def start(self) -> Replies:
        self._thread.start()
        return self

    def expect(self, request: Any = None) -> tuple[int, Future]:
        """A new request id and the future its reply will resolve; ``request`` is what
        ``resend`` gets after a restart. Once the worker is given up the future fails at once."""
        request_id, future = next(self._ids), Future()
        with self._lock:
            if self._ended is not None:
                future.set_exception(self._ended)
            else:
                self._open[request_id] = _Open(future, request)
        return request_id, future

    def forget(self, request_id: int) -> None:
        """The request was never sent."""
        with self._lock:
            self._open.pop(request_id, None)

    def fail_all(self, error: BaseException) -> int:
        """Fail every open future with ``error`` now (replies that come later are ignored);
        how many were open."""
        with self._lock:
            opened, self._open = self._open, {}
        for entry in opened.values():
            if not entry.future.done():
                entry.future.set_exception(error)
        return len(opened)

    def stop(self, timeout: float) -> None:
        """End the reader (it reads what is queued before the stop first)."""
        if self._thread.is_alive():
            self._replies.put(("stop",))
        self.join(timeout)

    def join(self, timeout: float) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout=timeout)

    @property
    def reading(self) -> bool:
        return self._thread.is_alive()

    def _read(self) -> None:
        while True:
            try:
                kind, *payload = self._replies.get(timeout=1.0)
            except queue.Empty:
                if not self._alive():
                    self._end(ModelError(self._died))
                    return
                continue
            if kind == "stop":
                return
            if kind == "fail":
                self._end(payload[0])
                return
            if kind == "restarted":
                self._ask_again()
            elif kind == "reply":
                self._resolve(*payload)
            elif self._on_other is not None and self._on_other(kind, payload):
                return

    def _resolve(self, request_id: int, outcome: Any) -> None:
        with self._lock:
            entry = self._open.pop(request_id, None)
        if entry is None or entry.future.done():
            return  # asked twice around a restart, or abandoned: the first outcome stands
        if isinstance(outcome, BaseException):
            entry.future.set_exception(outcome)
        else:
            entry.future.set_result(outcome)

    def _ask_again(self) -> None:
        """After a restart: every open request again, but not one that was open through
        :data:`MAX_ASKS` deaths (it may be what kills the worker)."""
        with self._lock:
            opened = list(self._open.items())
        for request_id, entry in opened:
            entry.asks += 1
            if entry.asks > MAX_ASKS:
                with self._lock:
                    self._open.pop(request_id, None)
                entry.future.set_exception(ModelError(
                    f"{self._died} {MAX_ASKS} times while this request was open; it is not "
                    f"asked again"))
            elif self._resend is not None:
                self._resend(request_id, entry.request)

    def _end(self, error: BaseException) -> None:
        with self._lock:
            self._ended = error
        self.fail_all(error)


class _Open:
    """An open request: its future, what it asked, how many workers it was asked of."""

    __slots__ = ("asks", "future", "request")

    def __init__(self, future: Future, request: Any) -> None:
        self.future, self.request, self.asks = future, request, 1


class Supervisor:
    """Watches a worker process and starts a new one when it dies while its owner serves.

    ``launch(stop)`` starts a new process on the same queues and returns it once it is ready
    (it raises when the process cannot start, and kills it and returns None when ``stop`` is
    set). Between attempts it waits :data:`RESTART_DELAYS_S`; after :data:`MAX_FAILED_STARTS`
    failed starts in a row it gives up: ``on_give_up(reason)``. ``on_restart(n)`` follows the
    n-th successful restart. ``queues`` are those the worker reads and those it writes: a dead
    one may hold a lock of them (:func:`release_locks`)."""

    def __init__(self, what: str, process: Any, launch: Callable[[threading.Event], Any],
                 queues: tuple[Sequence[Any], Sequence[Any]], on_restart: Callable[[int], None],
                 on_give_up: Callable[[str], None]) -> None:
        self.what = what
        self.process = process
        self._launch = launch
        self._queues = queues  # (those the worker reads, those it writes)
        self._on_restart, self._on_give_up = on_restart, on_give_up
        self.restarts = 0
        self.stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=f"{what}-supervisor",
                                        daemon=True)

    def start(self) -> Supervisor:
        logger.info("the {} runs as pid {}", self.what, self.process.pid)
        self._thread.start()
        return self

    def stop(self) -> None:
        """No more restarts; a worker being started is killed (returns within a second)."""
        self.stopping.set()
        if self._thread.is_alive():
            self._thread.join()

    @property
    def watching(self) -> bool:
        """Whether it still watches: the worker runs or is being started again."""
        return self._thread.is_alive()

    def _watch(self) -> None:
        attempt, born = 0, time.monotonic()
        while not self.stopping.is_set():
            self.process.join(timeout=0.2)
            if self.process.exitcode is None or self.stopping.is_set():
                continue
            if time.monotonic() - born >= STABLE_S:
                attempt = 0
            logger.error("the {} died (exit code {}); restarting it (restart {}) with the "
                         "requests it had not answered", self.what, self.process.exitcode,
                         self.restarts + 1)
            release_locks(*self._queues)
            process, attempt = self._start_again(attempt)
            if process is None:
                return
            self.process, born = process, time.monotonic()
            self.restarts += 1
            logger.warning("the {} is back (restart {}, pid {})", self.what, self.restarts,
                           process.pid)
            self._on_restart(self.restarts)

    def _start_again(self, attempt: int) -> tuple[Any, int]:
        """A new ready process and the next attempt's index, or None when stopped or given
        up."""
        failed = 0
        while failed < MAX_FAILED_STARTS:
            delay = RESTART_DELAYS_S[min(attempt, len(RESTART_DELAYS_S) - 1)]
            attempt += 1
            if self.stopping.wait(delay):
                return None, attempt
            try:
                process = self._launch(self.stopping)
            except Exception as err:
                failed += 1
                logger.error("the {} did not start again ({} of {} attempts): {}", self.what,
                             failed, MAX_FAILED_STARTS, err)
                continue
            return process, attempt  # None when stopped while it started
        reason = f"the {self.what} died and could not be started again " \
                 f"({MAX_FAILED_STARTS} attempts)"
        logger.error("{}: its open requests fail", reason)
        self._on_give_up(reason)
        return None, attempt


def await_ready(ready: Any, process: Any, timeout_s: float, what: str,
                stop: threading.Event | None = None) -> Any:
    """The payload of a new worker's ``("ready", payload)`` on ``ready``; raises what it
    reported instead, or :class:`ModelError` when it died or took longer than ``timeout_s``
    (killed then). None when ``stop`` was set meanwhile (killed too)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            kind, payload = ready.get(timeout=0.5)
            break
        except queue.Empty:
            if stop is not None and stop.is_set():
                _kill(process)
                return None
            if process.exitcode is not None:
                raise ModelError(f"the {what} exited with code {process.exitcode} while "
                                 f"starting") from None
            if time.monotonic() > deadline:
                _kill(process)
                raise ModelError(f"the {what} did not start within {timeout_s:g} s") from None
    if kind != "ready":
        process.join(timeout=10)
        raise payload if isinstance(payload, Exception) else ModelError(str(payload))
    return payload


def release_locks(read: Sequence[Any], written: Sequence[Any]) -> None:
    """A process killed inside a queue's ``get`` or ``put`` holds that queue's lock for ever,
    and every later reader or writer would wait on it: take back the read lock of the queues
    it ``read`` (it was their only reader) and the write lock of those it ``written`` (a live
    writer of one small message lets go within the second; the dead one never). A kill in the
    middle of a message would also leave half of it in the pipe: that is rare, and not
    repaired."""
    locks = [(q._rlock, 0.0) for q in read] + [(q._wlock, 1.0) for q in written]
    for lock, patience in locks:
        if lock is not None:  # Windows has no write lock
            lock.acquire(timeout=patience)
            lock.release()


def _kill(process: Any) -> None:
    process.kill()
    process.join(timeout=10)

