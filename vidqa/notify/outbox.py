"""The bounded queue between the store's writer, which must never wait, and a thread that
delivers to the network, which may wait a long time.

``put`` never blocks: when the outbox is full the oldest item is dropped and counted, so a
broker or endpoint that is down for hours costs a fixed amount of memory and loses the oldest
news first.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class Outbox(Generic[T]):
    """A FIFO of at most ``cap`` items; ``get`` returns None once closed and empty."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.dropped = 0  # items pushed out by newer ones
        self._items: deque[T] = deque()
        self._changed = threading.Condition()
        self._closed = False

    def __len__(self) -> int:
        return len(self._items)

    @property
    def done(self) -> bool:
        """Closed, and everything in it taken."""
        return self._closed and not self._items

    def put(self, item: T) -> None:
        """Add ``item``; never blocks (a full outbox drops its oldest item, counted)."""
        with self._changed:
            if len(self._items) >= self.cap:
                self._items.popleft()
                self.dropped += 1
            self._items.append(item)
            self._changed.notify()

    def put_back(self, item: T) -> None:
        """Return an item that could not go out, to be the next one (unless the outbox filled
        up meanwhile: then it is the oldest, and dropped)."""
        with self._changed:
            if len(self._items) >= self.cap:
                self.dropped += 1
                return
            self._items.appendleft(item)
            self._changed.notify()

    def get(self, timeout: float | None = None) -> T | None:
        """The oldest item; None after ``timeout`` seconds without one, or once closed and
        empty."""
        with self._changed:
            self._changed.wait_for(lambda: self._items or self._closed, timeout)
            return self._items.popleft() if self._items else None

    def close(self) -> None:
        """No more items will come: ``get`` drains what is left, then returns None."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def clear(self) -> int:
        """Forget what is left (the end: it will not go out); how many items that was."""
        with self._changed:
            left = len(self._items)
            self._items.clear()
            return left
