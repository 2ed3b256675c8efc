"""Replaying a traced pass, so a task-impact pass only computes the layers it alters.

The traced pass records every block's output. The pass that alters layer i of a tower then
replays the recorded output of layer i-1 (earlier blocks become identities), and a text layer
also gets the recorded vision encoder output: the pass costs only the layers from i on.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from torch import nn

from vidqa.vlm.compression.layers import LayerRef, swap_module, tower_root
from vidqa.vlm.compression.operators import Identity


class Replay(nn.Module):
    """Stands in for a module whose output is already known: returns it, computes nothing."""

    def __init__(self, output: Any) -> None:
        super().__init__()
        self.output = output

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.output


class Replayer:
    """Records the traced pass's outputs, then stubs out the work a task pass would repeat."""

    def __init__(self, model: nn.Module, layers: list[LayerRef]) -> None:
        self.model = model
        self.layers = layers
        self.vision = tower_root(model, layers, "vision")
        self.paths = [layer.path for layer in layers] + ([self.vision] if self.vision else [])
        self.recorded: list[dict[str, Any]] = []  # per batch: path -> recorded output

    @contextmanager
    def before(self, layer: LayerRef, batch: int) -> Iterator[None]:
        """Batch ``batch`` runs from ``layer`` on: earlier blocks of its tower replay, and a
        text layer gets the recorded vision output."""
        outputs = self.recorded[batch]
        earlier = [e.path for e in self.layers if e.tower == layer.tower and e.index < layer.index]
        with ExitStack() as stack:
            for path in earlier[:-1]:
                stack.enter_context(swap_module(self.model, path, Identity()))
            if earlier:
                stack.enter_context(swap_module(self.model, earlier[-1],
                                                Replay(outputs[earlier[-1]])))
            if layer.tower == "text" and self.vision:
                stack.enter_context(swap_module(self.model, self.vision,
                                                Replay(outputs[self.vision])))
            yield
