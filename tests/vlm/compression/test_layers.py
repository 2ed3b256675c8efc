import pytest
import torch
from factories import person_crops
from torch import nn

from vidqa.vlm.compression.layers import (
    LayerRef,
    bypass_layer,
    find_layers,
    get_module,
    hook_count,
    swap_module,
    trace_layers,
)

QUESTION = "Is this person carrying a backpack?"
VISION = "model.vision_model.encoder.layers"
TEXT = "model.text_model.layers"


class Wrapper(nn.Module):
    """Stands in for another engineer's skip/int8 swap."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, hidden_states, *args, **kwargs):
        return self.inner(hidden_states, *args, **kwargs)


def test_find_layers_when_tiny_model_then_vision_layers_then_text_layers(tiny_vlm):
    layers = find_layers(tiny_vlm.model)

    assert layers == [LayerRef(f"{VISION}.{i}", "vision", i) for i in range(2)] + \
        [LayerRef(f"{TEXT}.{i}", "text", i) for i in range(4)]


def test_find_layers_when_path_resolved_then_gives_that_block(tiny_vlm):
    model = tiny_vlm.model
    blocks = list(model.model.vision_model.encoder.layers) + list(model.model.text_model.layers)

    resolved = [get_module(model, layer.path) for layer in find_layers(model)]

    assert all(a is b for a, b in zip(resolved, blocks, strict=True))


def test_find_layers_when_a_layer_was_swapped_for_a_wrapper_then_still_found(tiny_vlm):
    model = tiny_vlm.model
    path = f"{TEXT}.2"

    with swap_module(model, path, Wrapper(get_module(model, path))):
        layers = find_layers(model)

    assert [layer.path for layer in layers].count(path) == 1
    assert len(layers) == 6


def test_find_layers_when_model_has_no_layer_lists_then_lookup_error():
    with pytest.raises(LookupError, match="no transformer layers"):
        find_layers(nn.Sequential(nn.Linear(2, 2)))


@pytest.mark.parametrize(("path", "suggestion"), [
    ("model.text_model.layer.1", "model.text_model.layers.1"),
    ("model.vision_model.encoder.layres.0", "model.vision_model.encoder.layers.0"),
    ("model.text_model.layers.9", "model.text_model.layers"),
])
def test_get_module_when_path_has_a_typo_then_lookup_error_names_close_paths(tiny_vlm, path,
                                                                             suggestion):
    with pytest.raises(LookupError, match="did you mean") as error:
        get_module(tiny_vlm.model, path)

    assert suggestion in str(error.value)


def test_trace_layers_when_block_succeeds_then_every_hook_is_removed(tiny_vlm):
    paths = [layer.path for layer in find_layers(tiny_vlm.model)]
    inputs = tiny_vlm.encode(person_crops(2), QUESTION)

    with trace_layers(tiny_vlm.model, paths) as traced:
        assert hook_count(tiny_vlm.model) == len(paths)
        tiny_vlm.margins(inputs)

    assert set(traced) == set(paths)
    assert hook_count(tiny_vlm.model) == 0


def test_trace_layers_when_block_raises_then_every_hook_is_removed(tiny_vlm):
    paths = [layer.path for layer in find_layers(tiny_vlm.model)]

    with pytest.raises(RuntimeError, match="boom"), trace_layers(tiny_vlm.model, paths):
        raise RuntimeError("boom")

    for module in tiny_vlm.model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks


def test_trace_layers_when_a_path_is_wrong_then_lookup_error_and_no_hook_left(tiny_vlm):
    with pytest.raises(LookupError), trace_layers(tiny_vlm.model, [f"{TEXT}.0", f"{TEXT}.99"]):
        pass

    assert hook_count(tiny_vlm.model) == 0


def test_trace_layers_when_traced_then_each_layer_input_is_previous_layer_output(tiny_vlm):
    paths = [f"{TEXT}.{i}" for i in range(4)]
    inputs = tiny_vlm.encode(person_crops(2), QUESTION)

    with trace_layers(tiny_vlm.model, paths) as traced:
        tiny_vlm.margins(inputs)

    for before, after in zip(paths, paths[1:]):
        torch.testing.assert_close(traced[after][0], traced[before][1])
    assert traced[paths[0]][1].shape[:2] == inputs["input_ids"].shape  # (B, T, C)


def test_bypass_layer_when_active_then_output_is_input_and_hook_removed_after(tiny_vlm):
    path = f"{TEXT}.1"
    inputs = tiny_vlm.encode(person_crops(2), QUESTION)
    full = tiny_vlm.margins(inputs)

    with bypass_layer(tiny_vlm.model, path), trace_layers(tiny_vlm.model, [path]) as traced:
        bypassed = tiny_vlm.margins(inputs)

    hidden_in, hidden_out = traced[path]  # a later hook sees the output the bypass returned
    assert torch.equal(hidden_in, hidden_out)
    assert not torch.allclose(bypassed, full)
    assert hook_count(tiny_vlm.model) == 0
    torch.testing.assert_close(tiny_vlm.margins(inputs), full)


def test_swap_module_when_block_raises_then_original_is_back(tiny_vlm):
    path = f"{VISION}.0"
    original = get_module(tiny_vlm.model, path)

    with pytest.raises(ValueError), swap_module(tiny_vlm.model, path, nn.Identity()):
        assert isinstance(get_module(tiny_vlm.model, path), nn.Identity)
        raise ValueError

    assert get_module(tiny_vlm.model, path) is original
