"""Applying plans to one live model by swapping its layer modules, reversibly.

A :class:`Compressor` swaps modules on the one loaded model and puts the recorded originals back
on :meth:`Compressor.restore` — no reload, no second copy of the weights. int8 copies are built
once per path and kept, so switching between the plans of several questions is a pointer swap;
the price is memory: each quantized path holds about a quarter of its fp32 bytes on top of the
original, which stays for audits and re-profiling.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from loguru import logger
from torch import nn

from vidqa.vlm.compression.layers import find_layers, get_module, set_module
from vidqa.vlm.compression.operators import (
    Identity,
    Int8Backend,
    int8_backend,
    quantize_layer,
    skip_module,
)
from vidqa.vlm.compression.plan import Plan
from vidqa.vlm.model import module_bytes


def layer_paths(model: nn.Module) -> list[str]:
    """Module paths of the vision encoder layers, then the text decoder layers."""
    return [ref.path for ref in find_layers(model)]


# --------------------------------------------------------------------------------------------
# Compressor


class Compressor:
    """Applies plans to one live model by swapping layer modules; restores the originals.

    One compressor per model (:func:`compressor_for`): the swaps are global state of that
    model, so two compressors would each believe they hold the originals.
    """

    def __init__(self, model: nn.Module, paths: Sequence[str] | None = None,
                 int8: Int8Backend = "auto") -> None:
        # A weak reference: the per-model registry below maps model -> compressor, and a
        # strong one back would keep every model alive for the life of the process.
        self._model = weakref.ref(model)
        paths = list(paths) if paths is not None else layer_paths(model)
        self.originals: dict[str, nn.Module] = {p: get_module(model, p) for p in paths}
        stray = [p for p, m in self.originals.items() if isinstance(m, Identity)]
        if stray:
            raise RuntimeError(f"model is already compressed at {stray}: restore it first")
        device = next(model.parameters()).device
        self.int8_backend, self.int8_reason = int8_backend(device, int8)
        self._variants: dict[tuple[str, str], nn.Module] = {}  # (path, op) -> built module
        self._pins: dict[str, Plan] = {}  # owner -> plan whose built layers prune() keeps
        self.current = Plan.keep_all(paths)
        if self.int8_backend == "none":
            logger.info("int8 layers will be kept: {}", self.int8_reason)

    @property
    def model(self) -> nn.Module:
        model = self._model()
        if model is None:
            raise RuntimeError("the model of this compressor was garbage-collected")
        return model

    @property
    def paths(self) -> list[str]:
        return list(self.originals)

    def supports(self, op: str) -> bool:
        return op != "int8" or self.int8_backend != "none"

    def effective(self, plan: Plan) -> Plan:
        """``plan`` as it will run here: int8 becomes keep where there is no int8 kernel."""
        unknown = set(plan.ops) - set(self.originals)
        if unknown:
            raise LookupError(f"plan names layers this compressor does not manage: "
                              f"{sorted(unknown)[:3]}")
        if self.supports("int8") or not plan.paths("int8"):
            return plan
        return plan.with_ops({p: "keep" for p in plan.paths("int8")},
                             f"{plan.note} (int8 kept: {self.int8_reason})")

    def apply(self, plan: Plan) -> Plan:
        """Swap in ``plan``'s modules (layers it does not name are kept); returns what runs."""
        plan = self.effective(plan)
        for path in self.originals:
            target = self._module(path, plan.ops.get(path, "keep"))
            if get_module(self.model, path) is not target:
                set_module(self.model, path, target)
        self.current = plan
        return plan

    def restore(self) -> None:
        """Put every original module back: outputs are bit-identical to before any plan."""
        self.apply(Plan.keep_all(self.originals))

    @contextmanager
    def using(self, plan: Plan) -> Iterator[Plan]:
        """Run a block under ``plan``, then return to the plan that was active before."""
        previous = self.current
        applied = self.apply(plan)
        try:
            yield applied
        finally:
            self.apply(previous)

    def prepare(self, plan: Plan) -> None:
        """Build the int8 copies ``plan`` needs now, so the first compressed batch is not slow."""
        for path in self.effective(plan).paths("int8"):
            self._module(path, "int8")

    def cached_bytes(self) -> int:
        """Bytes held by built int8 copies, on top of the original model."""
        return sum(module_bytes(m) for (path, op), m in self._variants.items() if op == "int8")

    def pin(self, owner: str, plan: Plan | None) -> None:
        """Keep ``plan``'s built layers through :meth:`prune` (None releases ``owner``'s pin).

        Each query pins its own plan, so pruning after one query's search does not throw away
        the int8 copies another query is using."""
        if plan is None:
            self._pins.pop(owner, None)
        else:
            self._pins[owner] = plan

    def prune(self) -> None:
        """Forget built copies that neither the active plan nor a pinned one uses: a plan
        search builds int8 copies of layers it then rejects (they are rebuilt on demand)."""
        plans = [self.current, *self._pins.values()]
        keep = {(path, op) for plan in plans for path, op in plan.ops.items()}
        self._variants = {k: m for k, m in self._variants.items() if k in keep}

    def module_for(self, path: str, op: str) -> nn.Module:
        """The module ``op`` puts at ``path`` (built once and kept, as :meth:`apply` does)."""
        return self._module(path, op)

    def _module(self, path: str, op: str) -> nn.Module:
        if op == "keep":
            return self.originals[path]
        key = (path, op)
        if key not in self._variants:
            self._variants[key] = self._build(path, op)
        return self._variants[key]

    def _build(self, path: str, op: str) -> nn.Module:
        original = self.originals[path]
        if op == "skip":
            return skip_module(path, original)
        return quantize_layer(original, self.int8_backend).eval()


_COMPRESSORS: weakref.WeakKeyDictionary[nn.Module, Compressor] = weakref.WeakKeyDictionary()


def compressor_for(model: nn.Module, int8: Int8Backend = "auto") -> Compressor:
    """The one :class:`Compressor` of ``model``, created on first use.

    Module swaps are state of the model itself, shared by every query answered on it; a weak
    registry keyed by the model lets independent answerers find the compressor that recorded
    the originals, without keeping the model alive.
    """
    compressor = _COMPRESSORS.get(model)
    if compressor is None:
        compressor = _COMPRESSORS[model] = Compressor(model, int8=int8)
    elif int8 != "auto" and int8_backend(next(model.parameters()).device, int8)[0] != \
            compressor.int8_backend:
        logger.warning("model already has a compressor with int8 backend {}; ignoring {}",
                       compressor.int8_backend, int8)
    return compressor
