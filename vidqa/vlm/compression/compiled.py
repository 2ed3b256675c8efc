"""One compiled graph per plan: plan swaps without recompiling every batch.

Compiling the model in place and then swapping its layer modules between batches (one plan
per question) invalidates the compiled graph's guards at every swap: dynamo recompiles, and
past its cache limit falls back to eager. Here each plan gets its own module instead — a copy
of the model's containers (``model.model`` down to the layer lists) whose slots hold the plan's
layers, sharing every weight with the model — compiled once, the first time the plan runs.
The full model is a plan too ("full"). Swapping plans is then a dictionary lookup. The
compiled modules belong to the model's compressor, not to one stage: a stage built later on the
same model (the next mode of a benchmark, a restarted run in the same process) reuses them.
"""

from __future__ import annotations

import copy
import weakref
from typing import Any

import torch
from loguru import logger
from torch import nn

from vidqa.vlm.compression.compressor import Compressor
from vidqa.vlm.compression.plan import Plan


def plan_module(model: nn.Module, root: str, compressor: Compressor, plan: Plan) -> nn.Module:
    """A copy of ``model.<root>`` whose layer slots hold ``plan``'s modules; the weights are
    shared (only containers on the way to a swapped slot are copied)."""
    original = model.get_submodule(root)
    clones: dict[int, nn.Module] = {}
    top = _clone(original, clones)
    prefix = f"{root}."
    for path in compressor.paths:
        op = plan.ops.get(path, "keep")
        if op == "keep":
            continue
        parent = top
        names = path[len(prefix):].split(".")
        for name in names[:-1]:  # copy each container on the way down, once
            child = parent._modules[name]
            parent._modules[name] = child = _clone(child, clones)
            parent = child
        parent._modules[names[-1]] = compressor.module_for(path, op)
    return top


def _clone(module: nn.Module, clones: dict[int, nn.Module]) -> nn.Module:
    """A shallow copy of ``module`` with its own child slots (one per original)."""
    if any(twin is module for twin in clones.values()):  # a copy made here already
        return module
    if id(module) not in clones:
        twin = copy.copy(module)  # a new object with the same attributes...
        twin._modules = dict(module._modules)  # ...and its own child slots
        clones[id(module)] = twin
    return clones[id(module)]


# Per compressor (one per model), the compiled module of each (root, compile mode, plan id),
# and the keys whose graph has been built (run once).
_BODIES: weakref.WeakKeyDictionary[Compressor, dict[tuple[str, str | None, str], Any]] = \
    weakref.WeakKeyDictionary()
_BUILT: weakref.WeakKeyDictionary[Compressor, set[tuple[str, str | None, str]]] = \
    weakref.WeakKeyDictionary()


class CompiledPlans:
    """``torch.compile`` of one plan module per plan id, built on first use and kept with the
    compressor, so every ``CompiledPlans`` of one model shares them."""

    def __init__(self, model: nn.Module, compressor: Compressor, root: str = "model",
                 mode: str | None = None) -> None:
        self.model = model
        self.compressor = compressor
        self.root = root
        self.mode = mode
        self._bodies = _BODIES.setdefault(compressor, {})
        self._built = _BUILT.setdefault(compressor, set())

    def body(self, plan: Plan) -> Any:
        """The compiled module of ``plan`` (compiled at its first call, then reused); the
        full model is the plan "full"."""
        plan = self.compressor.effective(plan)
        key = self._key(plan)
        if key not in self._bodies:
            self.compressor.prepare(plan)
            module = plan_module(self.model, self.root, self.compressor, plan)
            self._bodies[key] = torch.compile(module, mode=self.mode)
            logger.info("torch.compile of plan {} ({} plans; it compiles at its first call)",
                        plan.id, len(self._bodies))
        return self._bodies[key]

    def built(self, plan: Plan) -> bool:
        """Whether ``plan``'s graph has been compiled (see :meth:`mark_built`)."""
        return self._key(plan) in self._built

    def mark_built(self, plan: Plan) -> None:
        """Record that ``plan``'s graph ran once: compilation happens at the first call, and
        the caller that made it knows what it cost."""
        self._built.add(self._key(plan))

    def _key(self, plan: Plan) -> tuple[str, str | None, str]:
        return self.root, self.mode, self.compressor.effective(plan).id

    def __len__(self) -> int:
        return len(self._bodies)


def compile_counters() -> dict[str, int]:
    """Dynamo's counts so far: frames compiled (``unique_graphs``) and recompilations."""
    from torch._dynamo.utils import counters

    stats = counters["stats"]
    return {"unique_graphs": int(stats.get("unique_graphs", 0)),
            "calls_captured": int(stats.get("calls_captured", 0)),
            "recompiles": int(sum(counters["recompiles"].values()))
            if "recompiles" in counters else 0}
