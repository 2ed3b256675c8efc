"""Timing, in one place: a block's wall time into a dict, each stage's own share of a run, and
the recent values of a latency, in fixed memory, for its percentiles.

Code that runs on a GPU passes the device, so the clock waits for queued kernels before reading
the time: without that a timed block measures only how fast work was queued.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
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


class Window:
    """The last ``size`` values of a measurement (a latency, a wait) for its percentiles, in
    fixed memory however long the run: a run of weeks answers millions of crops. ``count`` and
    ``total`` cover every value ever added."""

    def __init__(self, size: int = 4096) -> None:
        self.values: deque[float] = deque(maxlen=size)
        self.count = 0
        self.total = 0.0

    def add(self, value: float) -> None:
        self.values.append(value)
        self.count += 1
        self.total += value

    def percentile(self, q: float) -> float | None:
        """The ``q``-th percentile of the recent values, rounded; None when there is none."""
        return percentile(sorted(self.values), q)

    @property
    def mean(self) -> float | None:
        return self.total / self.count if self.count else None


def percentile(sorted_values: list[float], q: float) -> float | None:
    """The ``q``-th percentile of already sorted values, rounded; None when empty."""
    if not sorted_values:
        return None
    if len(sorted_values) == 1:
        return round(sorted_values[0], 2)
    return round(statistics.quantiles(sorted_values, n=100, method="inclusive")[int(q) - 1], 2)
