"""The layer operators a plan can apply: skip (identity) and int8 (dynamic quantization).

- **skip** swaps in an :class:`Identity` that returns its hidden-state input; a skipped decoder
  layer still writes a placeholder into the KV cache (:class:`SkipDecoderLayer`), so
  ``generate`` keeps its sequence-length bookkeeping.
- **int8** is a copy of the layer whose Linear modules are dynamic int8. Which kernel runs
  depends on the device (:func:`int8_backend`): on CPU ``torch.ao`` ``quantize_dynamic``; on
  CUDA no default kernel is known to beat bf16 at these layer sizes, so int8 falls back to keep
  with a logged reason unless ``int8_backend="int_mm"`` (``torch._int_mm``) is asked for.
  Measured speeds are in the README (Layer profiling and compression).
"""

from __future__ import annotations

import copy
import warnings
from typing import Any, Literal

import torch
from torch import nn

Int8Backend = Literal["auto", "ao_dynamic", "int_mm", "none"]


# --------------------------------------------------------------------------------------------
# Operators


class Identity(nn.Module):
    """Stands in for a layer that is skipped or need not run: returns its hidden-state input.

    Transformer blocks take ``(hidden_states, attention_mask, **kw)``, so the first argument is
    all it needs. It holds no weights: skipping costs no memory.
    """

    def __init__(self, path: str = "") -> None:
        super().__init__()
        self.path = path

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return hidden_states

    def extra_repr(self) -> str:
        return f"skips {self.path}" if self.path else "identity"


class SkipDecoderLayer(Identity):
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


def skip_module(path: str, layer: nn.Module) -> Identity:
    """The skip stand-in for ``layer``: cache-aware for decoder layers, plain otherwise."""
    attn = getattr(layer, "self_attn", None)
    layer_idx = getattr(attn, "layer_idx", None)
    if layer_idx is None:
        return Identity(path)
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
            return "int_mm", "torch._int_mm on CPU (asked for explicitly; ao_dynamic is faster)"
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
        with warnings.catch_warnings():  # torch.ao is deprecated, and still the fast CPU path
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
