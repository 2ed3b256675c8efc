"""Timing, in one place: a block's wall time into a dict, and each stage's own share of a run.

Code that runs on a GPU passes the device, so the clock waits for queued kernels before reading
the time: without that a timed block measures only how fast work was queued.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, MutableMapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch takes seconds to import; the asset code times itself without it
    import torch


def synchronize(device: torch.device | str | None) -> None:
    """Wait for the kernels queued on a CUDA ``device``; nothing for the CPU or None."""
    if device is not None and str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)


@contextmanager
def timed(into: MutableMapping[str, float], key: str,
          device: torch.device | str | None = None) -> Iterator[None]:
    """Add the block's wall seconds to ``into[key]`` (also when it raises)."""
    synchronize(device)
    start = time.perf_counter()
    try:
        yield
    finally:
        synchronize(device)
        into[key] = into.get(key, 0.0) + time.perf_counter() - start


class StageClock:
    """Times stages from the outside: the wall time spent inside each stage's ``next``.

    Stages are nested generators, so a stage's cumulative time includes its upstream's;
    :meth:`own_seconds` subtracts it to give each stage its own share.
    """

    def __init__(self) -> None:
        self.order: list[str] = []
        self.cumulative: dict[str, float] = {}

    def wrap(self, name: str, items: Iterable[Any]) -> Iterator[Any]:
        # Registered now, not on the first next(): the order must be upstream first.
        self.order.append(name)
        self.cumulative[name] = 0.0
        return self._timed(name, iter(items))

    def _timed(self, name: str, iterator: Iterator[Any]) -> Iterator[Any]:
        while True:
            start = time.perf_counter()
            try:
                item = next(iterator)
            except StopIteration:
                return
            finally:
                self.cumulative[name] += time.perf_counter() - start
            yield item

    def own_seconds(self) -> dict[str, float]:
        own, upstream = {}, 0.0
        for name in self.order:
            own[name] = round(self.cumulative[name] - upstream, 3)
            upstream = self.cumulative[name]
        return own
