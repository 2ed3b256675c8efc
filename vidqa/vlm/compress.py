"""Per-layer compression of a loaded VLM: keep, int8 or skip each layer, reversibly.

A :class:`Plan` maps module paths (``model.text_model.layers.7``) to an operator. A
:class:`Compressor` applies a plan by *swapping modules* on the one live model and puts the
recorded originals back on :meth:`Compressor.restore` — no reload, no second fp32 copy:

- **skip** swaps in a :class:`SkipLayer` that returns its hidden-state input. A skipped
  decoder layer still writes a placeholder into the KV cache (see :class:`SkipDecoderLayer`),
  so ``generate`` keeps its sequence-length bookkeeping, even when layer 0 is skipped.
- **int8** swaps in a copy of the layer whose Linear modules are dynamic int8. Copies are built
  once per path and kept, so switching between the plans of several queries is a pointer swap.
  The price is memory: every quantized path holds ~1/4 of its fp32 bytes *on top of* the
  original, which stays for audits and re-profiling.

Which int8 kernel runs depends on the device (:func:`int8_backend`): on CPU
``torch.ao.quantization.quantize_dynamic`` (1.5-2x per layer here; torchao was slower, see
FACTS.md); on CUDA there is no default kernel known to beat bf16, so int8 falls back to keep with
a logged reason unless ``int8_backend="int_mm"`` (``torch._int_mm``) is asked for explicitly.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
import warnings
import weakref
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

import torch
from loguru import logger
from torch import nn

from vidqa.vlm.layers import find_layers, get_module, set_module

Operator = Literal["keep", "int8", "skip"]
OPERATORS: tuple[str, ...] = ("keep", "int8", "skip")
Int8Backend = Literal["auto", "ao_dynamic", "int_mm", "none"]


def tower_of(path: str) -> str:
    """"vision" or "text" from a layer's module path."""
    return "vision" if "vision_model" in path else "text"


# --------------------------------------------------------------------------------------------
# Plan


@dataclass(frozen=True, eq=False)
class Plan:
    """What to do with each layer, keyed by module path. Frozen; ``id`` hashes the ops."""

    ops: Mapping[str, str]
    note: str = field(default="", compare=False)  # how it was chosen, for logs and summaries

    def __post_init__(self) -> None:
        bad = {path: op for path, op in self.ops.items() if op not in OPERATORS}
        if bad:
            raise ValueError(f"Plan ops must be one of {OPERATORS}, got {bad}")
        object.__setattr__(self, "ops", MappingProxyType(dict(sorted(self.ops.items()))))

    @classmethod
    def keep_all(cls, paths: Iterable[str], note: str = "full model") -> Plan:
        return cls({path: "keep" for path in paths}, note)

    @property
    def id(self) -> str:
        """Short hash of the compressed layers; plans that do the same thing share an id."""
        changed = {path: op for path, op in self.ops.items() if op != "keep"}
        if not changed:
            return "full"
        digest = hashlib.sha1(json.dumps(changed, sort_keys=True).encode()).hexdigest()
        return digest[:10]

    @property
    def compressed(self) -> bool:
        return any(op != "keep" for op in self.ops.values())

    def paths(self, op: str) -> list[str]:
        return [path for path, o in self.ops.items() if o == op]

    def counts(self) -> dict[str, int]:
        counts = Counter(self.ops.values())
        return {op: counts.get(op, 0) for op in OPERATORS}

    def summary(self) -> dict[str, Any]:
        """Id, note and operator counts overall and per tower."""
        towers = {}
        for tower in ("vision", "text"):
            ops = Counter(op for path, op in self.ops.items() if tower_of(path) == tower)
            towers[tower] = {op: ops.get(op, 0) for op in OPERATORS}
        return {"id": self.id, "note": self.note, "counts": self.counts(), "towers": towers}

    def with_ops(self, changes: Mapping[str, str], note: str | None = None) -> Plan:
        return Plan({**self.ops, **changes}, self.note if note is None else note)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "note": self.note, "ops": dict(self.ops)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Plan:
        plan = cls(data["ops"], data.get("note", ""))
        if "id" in data and data["id"] != plan.id:
            raise ValueError(f"plan id {data['id']!r} does not match its ops (hash {plan.id!r})")
        return plan

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Plan) and dict(self.ops) == dict(other.ops)

    def __hash__(self) -> int:
        return hash(tuple(self.ops.items()))


# --------------------------------------------------------------------------------------------
# Operators


class SkipLayer(nn.Module):
    """Stands in for a skipped encoder layer: returns its hidden-state input unchanged.

    Idefics3EncoderLayer.forward(hidden_states, attention_mask, **kw) -> Tensor, so the first
    argument is all it needs. It holds no weights: skipping costs no memory.
    """

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return hidden_states

    def extra_repr(self) -> str:
        return f"skips {self.path}"


class SkipDecoderLayer(SkipLayer):
    """A skipped decoder layer that keeps the KV cache's bookkeeping right.

    ``DynamicCache.get_seq_length()`` and the causal-mask sizes read cache layer 0, and generate()
    derives the next token's position from it. A layer that never writes its cache slot would
    report length 0 and shift every later position. So this module writes zeros of the real
    K/V shape ``(B, kv_heads, T, head_dim)``: exactly what the full layer would have cached, and
    never read, because only this layer's own attention reads its slot.
    """

    def __init__(self, path: str, layer_idx: int, kv_heads: int, head_dim: int) -> None:
        super().__init__(path)
        self.layer_idx = layer_idx
        self.kv_heads = kv_heads
        self.head_dim = head_dim

    def forward(self, hidden_states: torch.Tensor, *args: Any, cache: Any = None,
                past_key_values: Any = None, **kwargs: Any) -> torch.Tensor:
        cache = cache if cache is not None else past_key_values
        if cache is not None:
            batch, length = hidden_states.shape[:2]
            # A broadcast view costs nothing here; the cache materializes what it keeps.
            zeros = hidden_states.new_zeros(()).expand(batch, self.kv_heads, length,
                                                       self.head_dim)  # (B, kv, T, hd)
            cache.update(zeros, zeros, self.layer_idx)
        return hidden_states


def skip_module(path: str, layer: nn.Module) -> SkipLayer:
    """The skip stand-in for ``layer``: cache-aware for decoder layers, plain otherwise."""
    attn = getattr(layer, "self_attn", None)
    layer_idx = getattr(attn, "layer_idx", None)
    if layer_idx is None:
        return SkipLayer(path)
    config = attn.config
    return SkipDecoderLayer(path, layer_idx, config.num_key_value_heads, attn.head_dim)


class Int8Linear(nn.Module):
    """A Linear with int8 weights (per output channel) and int8 activations (per row),
    multiplied by ``torch._int_mm``: the dynamic int8 path for CUDA.

    ``torch._int_mm`` on CUDA wants more than 16 rows and K, N multiples of 8; smaller inputs are
    padded with zero rows.
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach().float()  # (N, K)
        scale = weight.abs().amax(dim=1).clamp(min=1e-8) / 127  # (N,)
        quantized = (weight / scale[:, None]).round().clamp(-127, 127).to(torch.int8)
        # Stored (N, K) row-major and passed transposed: cuBLASLt's int8 GEMM wants the
        # second operand column-major, as torchao does it.
        self.register_buffer("weight_int8", quantized.contiguous())  # (N, K)
        self.register_buffer("weight_scale", scale.to(linear.weight.dtype))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(),
                                                                  requires_grad=False)
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])  # (M, K)
        row_scale = rows.abs().amax(dim=1, keepdim=True).clamp(min=1e-8) / 127  # (M, 1)
        quantized = (rows / row_scale).round().clamp(-127, 127).to(torch.int8)
        count = quantized.shape[0]
        if count <= 16:
            quantized = torch.nn.functional.pad(quantized, (0, 0, 0, 17 - count))  # (17, K)
        acc = torch._int_mm(quantized, self.weight_int8.t())[:count]  # (M, N) int32
        # Rescale in float32: int32 sums reach ~127 * 127 * K, past bf16's 8-bit mantissa.
        out = acc.float() * row_scale.float() * self.weight_scale.float()
        if self.bias is not None:
            out = out + self.bias.float()
        return out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)  # (..., N)


def int8_backend(device: torch.device, requested: Int8Backend = "auto") -> tuple[str, str]:
    """(backend, reason): the int8 kernel to use on ``device``, or "none" and why not."""
    if requested not in ("auto", "ao_dynamic", "int_mm", "none"):
        raise ValueError(f"int8 backend {requested!r}: choose auto, ao_dynamic, int_mm or none")
    if requested == "none":
        return "none", "int8 disabled by request"
    if device.type == "cpu":
        if requested == "int_mm":
            return "int_mm", "torch._int_mm on CPU (slower than ao_dynamic here: 1.3x vs 1.7x)"
        if "fbgemm" not in torch.backends.quantized.supported_engines and \
                "x86" not in torch.backends.quantized.supported_engines:
            return "none", "this torch build has no x86/fbgemm quantized engine"
        return "ao_dynamic", "torch.ao quantize_dynamic (fastest measured on CPU)"
    if device.type == "cuda" and requested == "int_mm":
        return "int_mm", "torch._int_mm dynamic int8 (asked for explicitly)"
    if requested == "ao_dynamic":
        return "none", f"quantize_dynamic has no {device.type} kernels"
    return "none", (f"no int8 kernel known to beat {device.type} bf16 for these layer sizes; "
                    f"int8 falls back to keep (measure with int8_backend='int_mm')")


def quantize_layer(layer: nn.Module, backend: str) -> nn.Module:
    """An int8 copy of ``layer`` (its Linear modules quantized); ``layer`` is left untouched."""
    clone = copy.deepcopy(layer)
    if backend == "ao_dynamic":
        with warnings.catch_warnings():  # torch 2.14 deprecates torch.ao but it is the fast one
            warnings.simplefilter("ignore")
            return torch.ao.quantization.quantize_dynamic(clone, {nn.Linear}, dtype=torch.qint8,
                                                          inplace=True)
    if backend == "int_mm":
        for parent in list(clone.modules()):
            for name, child in list(parent.named_children()):
                # torch._int_mm wants K and N multiples of 8; other shapes stay float.
                if isinstance(child, nn.Linear) and child.in_features % 8 == 0 \
                        and child.out_features % 8 == 0:
                    setattr(parent, name, Int8Linear(child))
        return clone
    raise ValueError(f"cannot quantize with backend {backend!r}")


def module_bytes(module: nn.Module) -> int:
    """Bytes of a module's parameters, buffers and packed (torch.ao) int8 weights."""
    total = sum(t.numel() * t.element_size() for t in module.parameters())
    total += sum(t.numel() * t.element_size() for t in module.buffers())
    for sub in module.modules():
        # Count packed weights once, at the quantized Linear (its LinearPackedParams child
        # holds the same ScriptObject).
        if hasattr(sub, "_packed_params") and hasattr(sub, "weight") and callable(sub.weight):
            weight, bias = sub._weight_bias()
            total += weight.numel() * weight.element_size()
            total += 0 if bias is None else bias.numel() * bias.element_size()
    return total


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
        stray = [p for p, m in self.originals.items() if isinstance(m, SkipLayer)]
        if stray:
            raise RuntimeError(f"model is already compressed at {stray}: restore it first")
        device = next(model.parameters()).device
        self.int8_backend, self.int8_reason = int8_backend(device, int8)
        self._variants: dict[tuple[str, str], nn.Module] = {}  # (path, op) -> built module
        self._pins: dict[str, Plan] = {}  # owner -> plan whose built layers prune() keeps
        self.current = Plan.keep_all(paths)
        self.build_seconds = 0.0
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
        start = time.perf_counter()
        module = quantize_layer(original, self.int8_backend).eval()
        self.build_seconds += time.perf_counter() - start
        return module


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
