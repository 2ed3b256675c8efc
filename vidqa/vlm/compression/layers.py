"""Finding a VLM's transformer layers by module path, and hooking them for one block of code.

Everything about layers is keyed by the dotted path ``model.named_modules()`` gives
(``model.vision_model.encoder.layers.3``, ``model.text_model.layers.7``), so profiles, plans,
JSON and plots line up with the model.

Hooks are global state of a model (TransformerLens warns about this), so they only ever live
inside a context manager that removes every one of them in ``finally``, in reverse order
(baukit ``TraceDict``): outside profiling the model runs with no hooks at all.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

Tower = Literal["vision", "text"]

# Where each tower's blocks live, as the suffix of a module path. Idefics3 (SmolVLM) has
# `model.vision_model.encoder.layers` and `model.text_model.layers`; the suffixes also match
# SigLIP/CLIP/Llama-style models wrapped another way.
_TOWER_SUFFIXES: tuple[tuple[Tower, str], ...] = (
    ("vision", "vision_model.encoder.layers"),
    ("text", "text_model.layers"),
)


@dataclass(frozen=True)
class LayerRef:
    """One transformer block: its module path, its tower and its index within the tower."""

    path: str  # e.g. "model.text_model.layers.7"
    tower: Tower
    index: int  # position inside its tower's ModuleList


def find_layers(model: nn.Module) -> list[LayerRef]:
    """Every transformer block of ``model``: the vision encoder's, then the text decoder's.

    Found from the structure (the ``layers`` ModuleList of each tower), never from a
    hard-coded count, so SmolVLM-500M gives 12 + 32 and the 256M stand-in 12 + 30. A block
    that was swapped for a wrapper (skip, int8) is still found: only its slot is read.
    """
    found: list[LayerRef] = []
    for tower, suffix in _TOWER_SUFFIXES:
        lists = [name for name, module in model.named_modules()
                 if isinstance(module, nn.ModuleList) and _ends_with(name, suffix)]
        if len(lists) > 1:
            raise LookupError(f"{type(model).__name__} has several {tower} layer lists "
                              f"{lists}: cannot tell which one runs")
        for prefix in lists:
            count = len(get_module(model, prefix))
            found += [LayerRef(f"{prefix}.{i}", tower, i) for i in range(count)]
    if not found:
        raise LookupError(f"no transformer layers found in {type(model).__name__}: expected a "
                          f"ModuleList ending in {' or '.join(s for _, s in _TOWER_SUFFIXES)}")
    return found


def tower_root(model: nn.Module, layers: Sequence[LayerRef], tower: Tower) -> str | None:
    """Path of the module that runs all of ``tower`` (``model.vision_model``), or None.

    For a vision encoder, the layer list's path without ``.encoder.layers``; None when the
    model is built another way (callers then simply do not use it).
    """
    paths = [layer.path for layer in layers if layer.tower == tower]
    suffix = ".encoder.layers"
    list_path = paths[0].rpartition(".")[0] if paths else ""
    if not list_path.endswith(suffix):
        return None
    root = list_path[:-len(suffix)]
    try:
        get_module(model, root)
    except LookupError:
        return None
    return root


def _ends_with(name: str, suffix: str) -> bool:
    return name == suffix or name.endswith("." + suffix)


def get_module(model: nn.Module, path: str) -> nn.Module:
    """The submodule at ``path``; a typo raises LookupError naming the closest paths."""
    try:
        return model.get_submodule(path)
    except AttributeError:
        names = [name for name, _ in model.named_modules() if name]
        close = difflib.get_close_matches(path, names, n=3, cutoff=0.6)
        hint = f" — did you mean {', '.join(close)}?" if close else ""
        raise LookupError(f"no module {path!r} in {type(model).__name__}{hint}") from None


def set_module(model: nn.Module, path: str, module: nn.Module) -> None:
    """Put ``module`` at ``path`` (a ModuleList slot or an attribute)."""
    parent_path, _, name = path.rpartition(".")
    parent = get_module(model, parent_path) if parent_path else model
    if isinstance(parent, (nn.ModuleList, nn.Sequential)):
        parent[int(name)] = module
    else:
        setattr(parent, name, module)


@contextmanager
def swap_module(model: nn.Module, path: str, module: nn.Module) -> Iterator[nn.Module]:
    """Run a block with ``module`` at ``path``; the original is always put back (baukit
    ``replace_module``). Yields the original."""
    original = get_module(model, path)
    set_module(model, path, module)
    try:
        yield original
    finally:
        set_module(model, path, original)


# --------------------------------------------------------------------------------------------
# Hooks

Reduce = Callable[[str, torch.Tensor, torch.Tensor], Any]  # (path, input, output) -> kept value


def hidden_input(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    """The hidden-state input of a block call: first positional argument or ``hidden_states``."""
    return args[0] if args else kwargs["hidden_states"]


def hidden_output(output: Any) -> torch.Tensor:
    """The hidden-state output of a block: the tensor itself, or the first item of a tuple
    (older transformers returned ``(hidden_states, attentions, ...)``)."""
    return output[0] if isinstance(output, (tuple, list)) else output


def _keep_both(path: str, inputs: torch.Tensor, output: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return inputs.detach(), output.detach()


@contextmanager
def trace_layers(model: nn.Module, paths: Sequence[str], reduce: Reduce | None = None
                 ) -> Iterator[dict[str, Any]]:
    """Capture each block's hidden-state input and output while the block runs.

    Yields a dict path -> ``reduce(path, input, output)`` of the latest call (default: the pair
    ``(input, output)`` detached). Pass a ``reduce`` that returns small per-ROI numbers when
    profiling a big model: keeping every block's full hidden states costs a whole copy of the
    activations. Every path is checked before any hook goes in (LookupError on a typo), and
    every hook is removed on exit, in reverse order, even when the block raises.
    """
    reduce = reduce or _keep_both
    captured: dict[str, Any] = {}

    def make_hook(path: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any],
                 output: Any) -> None:
            captured[path] = reduce(path, hidden_input(args, kwargs), hidden_output(output))

        return hook

    with _forward_hooks(model, paths, make_hook):
        yield captured


@contextmanager
def record_outputs(model: nn.Module, paths: Sequence[str]) -> Iterator[dict[str, Any]]:
    """Yields a dict path -> what the module at ``path`` returned in its latest call, as it
    returned it (a tensor, a ModelOutput...). Holding these keeps them in memory; hooks are
    checked and removed as in :func:`trace_layers`."""
    captured: dict[str, Any] = {}

    def make_hook(path: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any],
                 output: Any) -> None:
            captured[path] = output

        return hook

    with _forward_hooks(model, paths, make_hook):
        yield captured


@contextmanager
def _forward_hooks(model: nn.Module, paths: Sequence[str],
                   make_hook: Callable[[str], Callable[..., None]]) -> Iterator[None]:
    modules = [(path, get_module(model, path)) for path in paths]  # LookupError before any hook
    with ExitStack() as stack:
        for path, module in modules:
            handle = module.register_forward_hook(make_hook(path), with_kwargs=True)
            stack.callback(handle.remove)  # ExitStack unwinds last-in first-out
        yield


@contextmanager
def bypass_layer(model: nn.Module, path: str) -> Iterator[None]:
    """Run a block with the layer at ``path`` acting as the identity (output := input).

    A forward hook replaces the output, rather than a module swap, so the layer still writes
    its KV-cache slot (generate's bookkeeping stays right) and whatever module sits at the path
    (an original or another engineer's wrapper) is left in place. The price is that the
    bypassed layer is still computed once.
    """

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
        hidden = hidden_input(args, kwargs)
        if isinstance(output, tuple):
            return (hidden, *output[1:])
        return hidden

    handle = get_module(model, path).register_forward_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def hook_count(model: nn.Module) -> int:
    """Forward and pre-forward hooks installed on any module: 0 outside profiling."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
