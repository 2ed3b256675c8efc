"""Profiling inside the answers: the first tracks' full-model passes are also the profile.

The stream answers its first K tracks with the full model anyway. Hooks on those very passes
read each layer's block influence and activation (as :func:`~.importance.profile_rois`'s traced
pass does) and time each layer, so profiling costs no extra forward pass. The batches are kept
as they ran (crops, seconds, margins): a candidate plan is then confirmed by re-running exactly
those batches compressed — a paired measurement, same crops and batch size, no second full pass.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from vidqa.clock import synchronize
from vidqa.messages import Crop
from vidqa.vlm.compression.layers import LayerRef, find_layers, get_module, trace_layers
from vidqa.vlm.model import VisionLanguageModel
from vidqa.vlm.profiling.importance import Profile, _per_crop, _token_stats

# Tokens per row the stream's hooks read: a strided sample, not all of them. Reading every one
# of a 512-px tile's 1024 patches in 12 vision layers was 7-13% of a profiled pass on the CPU,
# most of what a cold plan lost on a short clip; block influence is a mean over tokens, and a
# mean over 64 evenly spaced ones ranks the layers the same (tests/vlm/profiling).
SAMPLED_TOKENS = 64


@dataclass
class ProfiledBatch:
    """One batch the full model answered while profiling."""

    crops: list[Crop]
    seconds: float  # the full model's wall time for it, as answered
    margins: np.ndarray  # (B,)


@dataclass
class StreamProfile:
    """What the profiled answers measured: per-ROI layer stats, layer times, the batches."""

    layers: list[LayerRef]
    batches: list[ProfiledBatch] = field(default_factory=list)
    stats: list[np.ndarray] = field(default_factory=list)  # per batch (B, n_layers, 2)
    layer_s: np.ndarray | None = None  # (n_layers,) summed seconds inside each layer
    hook_s: float = 0.0  # seconds the profiling hooks themselves took, last batch

    @property
    def crops(self) -> int:
        return sum(len(b.crops) for b in self.batches)

    @property
    def seconds(self) -> float:
        return sum(b.seconds for b in self.batches)

    def profile(self, question: str, model: str) -> Profile:
        both = np.concatenate(self.stats)  # (n_rois, n_layers, 2)
        margins = np.concatenate([b.margins for b in self.batches]).astype(np.float64)
        return Profile(question=question, layers=self.layers,
                       scores={"activation": both[..., 0], "block_influence": both[..., 1]},
                       margins=margins, p_yes=1 / (1 + np.exp(-margins)),
                       crop_ids=[crop.track_id for b in self.batches for crop in b.crops],
                       seconds={"answers": self.seconds}, passes={"answers": len(self.batches)},
                       model=model)

    def layer_seconds_per_crop(self) -> np.ndarray:
        return (self.layer_s if self.layer_s is not None else np.zeros(len(self.layers))) / \
            max(self.crops, 1)


def traced_margins(vlm: VisionLanguageModel, inputs: Any, into: StreamProfile
                   ) -> torch.Tensor:
    """``vlm.margins(inputs)`` with block influence, activation (over :data:`SAMPLED_TOKENS`
    tokens per row) and each layer's time recorded into ``into`` (the answers are those of the
    plain pass: hooks only read). The hooks' own work is timed into ``into.hook_s``: it is
    profiling, not answering, and is taken out of the full model's time that confirmations
    are paired with."""
    paths = [layer.path for layer in into.layers]
    spent = [0.0]

    def reduce(path: str, h_in: torch.Tensor, h_out: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        out = _token_stats(path, h_in, h_out, SAMPLED_TOKENS)
        synchronize(vlm.device)
        spent[0] += time.perf_counter() - start
        return out

    with ExitStack() as stack:
        timer = stack.enter_context(layer_timer(vlm.model, paths, vlm.device))
        stats = stack.enter_context(trace_layers(vlm.model, paths, reduce))
        margins = vlm.margins(inputs)
    start = time.perf_counter()
    into.stats.append(_per_crop(stats, inputs, into.layers, vlm, SAMPLED_TOKENS).double()
                      .numpy())
    into.hook_s = spent[0] + time.perf_counter() - start
    seconds = np.asarray([timer[p] for p in paths])
    into.layer_s = seconds if into.layer_s is None else into.layer_s + seconds
    return margins


def new_stream_profile(vlm: VisionLanguageModel) -> StreamProfile:
    return StreamProfile(layers=find_layers(vlm.model))


@contextmanager
def layer_timer(model: nn.Module, paths: Sequence[str], device: Any
                ) -> Iterator[dict[str, float]]:
    """Seconds spent inside each module at ``paths`` during the block (CUDA synchronised
    around each layer, so use it on profiled batches only). Its hooks are registered first,
    so the trace hooks' own work is not counted as the layer's."""
    spent = dict.fromkeys(paths, 0.0)
    started: dict[str, float] = {}
    handles = []

    def before(path: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any) -> None:
            synchronize(device)
            started[path] = time.perf_counter()
        return hook

    def after(path: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            synchronize(device)
            spent[path] += time.perf_counter() - started.pop(path, time.perf_counter())
        return hook

    try:
        for path in paths:
            module = get_module(model, path)
            handles.append(module.register_forward_pre_hook(before(path)))
            handles.append(module.register_forward_hook(after(path)))
        yield spent
    finally:
        for handle in reversed(handles):
            handle.remove()
