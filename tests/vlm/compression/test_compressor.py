"""Compression operators on the tiny model: skip, int8, restore, plans."""

from __future__ import annotations

import pytest
import torch
from factories import make_identity_layer, person_crops

from vidqa.vlm.compression.compressor import Compressor, compressor_for, layer_paths
from vidqa.vlm.compression.layers import get_module
from vidqa.vlm.compression.operators import Identity, Int8Linear, SkipDecoderLayer
from vidqa.vlm.compression.plan import Plan
from vidqa.vlm.model import VisionLanguageModel, module_bytes

QUESTION = "Is this person carrying a backpack?"
VISION_0 = "model.vision_model.encoder.layers.0"
TEXT = "model.text_model.layers.{}"

# int8 tolerance on the tiny random model: |Δ margin| (logit units) — measured ~7e-4.
INT8_MARGIN_ATOL = 0.02


def make_identity(vlm: VisionLanguageModel, path: str) -> None:
    make_identity_layer(vlm.model, path)


@pytest.fixture()
def inputs(tiny_vlm: VisionLanguageModel):
    return tiny_vlm.encode(person_crops(3), QUESTION)


@pytest.mark.parametrize("path", [VISION_0, TEXT.format(0), TEXT.format(2)])
def test_skip_when_layer_is_identity_leaves_margins_unchanged(tiny_vlm, inputs, path):
    make_identity(tiny_vlm, path)
    reference = tiny_vlm.margins(inputs)
    compressor = Compressor(tiny_vlm.model)

    with compressor.using(Plan({path: "skip"})):
        skipped = tiny_vlm.margins(inputs)

    torch.testing.assert_close(skipped, reference, atol=1e-5, rtol=0)


@pytest.mark.parametrize("index", [0, 2])
def test_generate_when_text_layer_skipped_matches_identity_reference(tiny_vlm, index):
    # Layer 0 is the one DynamicCache reads its sequence length from.
    path = TEXT.format(index)
    make_identity(tiny_vlm, path)
    crops = person_crops(2, seed=3)
    reference = tiny_vlm.answer_text(crops, QUESTION, max_new_tokens=6)
    compressor = Compressor(tiny_vlm.model)

    with compressor.using(Plan({path: "skip"})):
        assert isinstance(get_module(tiny_vlm.model, path), SkipDecoderLayer)
        skipped = tiny_vlm.answer_text(crops, QUESTION, max_new_tokens=6)

    assert skipped == reference


def test_skip_when_layer_is_not_identity_changes_margins(tiny_vlm, inputs):
    reference = tiny_vlm.margins(inputs)
    with Compressor(tiny_vlm.model).using(Plan({TEXT.format(1): "skip"})):
        skipped = tiny_vlm.margins(inputs)
    assert not torch.allclose(skipped, reference, atol=1e-4)


def test_int8_when_every_layer_quantized_stays_close_to_fp32(tiny_vlm, inputs):
    reference = tiny_vlm.margins(inputs)
    compressor = Compressor(tiny_vlm.model)

    with compressor.using(Plan({p: "int8" for p in compressor.paths})):
        quantized = tiny_vlm.margins(inputs)
        compressed_bytes = module_bytes(tiny_vlm.model)

    torch.testing.assert_close(quantized, reference, atol=INT8_MARGIN_ATOL, rtol=0)
    assert compressed_bytes < module_bytes(tiny_vlm.model)


def test_restore_when_plan_was_applied_gives_bit_identical_outputs(tiny_vlm, inputs):
    before = tiny_vlm.margins(inputs)
    originals = [get_module(tiny_vlm.model, p) for p in layer_paths(tiny_vlm.model)]
    compressor = Compressor(tiny_vlm.model)
    plan = Plan({VISION_0: "int8", TEXT.format(1): "skip", TEXT.format(2): "int8"})

    compressor.apply(plan)
    changed = tiny_vlm.margins(inputs)
    compressor.restore()

    assert not torch.equal(changed, before)
    assert torch.equal(tiny_vlm.margins(inputs), before)
    assert all(get_module(tiny_vlm.model, p) is m
               for p, m in zip(layer_paths(tiny_vlm.model), originals, strict=True))


def test_using_when_block_raises_restores_previous_plan(tiny_vlm):
    compressor = Compressor(tiny_vlm.model)
    original = get_module(tiny_vlm.model, VISION_0)

    with pytest.raises(RuntimeError), compressor.using(Plan({VISION_0: "skip"})):
        raise RuntimeError("boom")

    assert get_module(tiny_vlm.model, VISION_0) is original
    assert compressor.current.id == "full"


def test_apply_when_switching_between_plans_reuses_built_int8_copies(tiny_vlm):
    compressor = Compressor(tiny_vlm.model)
    first = Plan({VISION_0: "int8", TEXT.format(0): "int8"})
    second = Plan({TEXT.format(3): "skip"})

    compressor.apply(first)
    quantized = get_module(tiny_vlm.model, VISION_0)
    compressor.apply(second)
    assert isinstance(get_module(tiny_vlm.model, TEXT.format(3)), Identity)
    compressor.apply(first)

    assert get_module(tiny_vlm.model, VISION_0) is quantized
    assert 0 < compressor.cached_bytes() < module_bytes(tiny_vlm.model)


def test_effective_when_no_int8_kernel_keeps_int8_layers(tiny_vlm):
    compressor = Compressor(tiny_vlm.model, int8="none")
    plan = Plan({VISION_0: "int8", TEXT.format(1): "skip"})

    effective = compressor.effective(plan)

    assert effective.ops[VISION_0] == "keep"
    assert effective.ops[TEXT.format(1)] == "skip"
    assert not compressor.supports("int8")


def test_effective_when_plan_names_unknown_layer_raises(tiny_vlm):
    with pytest.raises(LookupError, match="does not manage"):
        Compressor(tiny_vlm.model).effective(Plan({"model.text_model.layers.99": "skip"}))


def test_compressor_for_when_asked_twice_returns_the_same_compressor(tiny_vlm):
    assert compressor_for(tiny_vlm.model) is compressor_for(tiny_vlm.model)


def test_int8_linear_when_int_mm_backend_stays_close_to_linear():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 32)
    x = torch.randn(5, 7, 64)  # 35 rows; 3 rows exercises the padding below 17
    for batch in (x, x[:1, :3]):
        torch.testing.assert_close(Int8Linear(linear)(batch), linear(batch), atol=0.03, rtol=0.05)


@pytest.mark.parametrize(("ops", "expected"), [
    ({"a": "keep", "b": "keep"}, "full"),
    ({"a": "skip", "b": "keep"}, Plan({"a": "skip"}).id),  # keep entries do not change the id
])
def test_plan_id_when_only_keep_entries_differ_is_stable(ops, expected):
    assert Plan(ops).id == expected


def test_plan_when_round_tripped_through_dict_is_equal():
    plan = Plan({TEXT.format(1): "int8", VISION_0: "skip", TEXT.format(2): "keep"}, "note")
    again = Plan.from_dict(plan.to_dict())
    assert again == plan and again.id == plan.id and again.note == "note"
    assert plan.summary()["towers"]["vision"] == {"keep": 0, "int8": 0, "skip": 1}


def test_plan_when_it_has_a_tile_then_it_compresses_and_round_trips_with_its_own_id():
    layers = Plan({"a": "skip"})
    tiled = layers.with_tile(384)

    again = Plan.from_dict(tiled.to_dict())

    assert again == tiled and again.tile == 384 and again.id == tiled.id != layers.id
    assert Plan({"a": "keep"}, tile=256).compressed and not Plan({"a": "keep"}).compressed
    assert "tile" not in layers.to_dict()  # plans without a tile read as they always did
    assert tiled.with_ops({"b": "int8"}).tile == 384


@pytest.mark.parametrize(("data", "error"), [
    ({"ops": {"a": "fp4"}}, "must be one of"),
    ({"ops": {"a": "skip"}, "tile": -4}, "positive number of pixels"),
    ({"ops": {"a": "skip"}, "id": "0123456789"}, "does not match"),
])
def test_plan_from_dict_when_invalid_raises(data, error):
    with pytest.raises(ValueError, match=error):
        Plan.from_dict(data)


def test_compressor_for_when_model_is_dropped_lets_it_be_collected(tiny_vlm_dir):
    import gc
    import weakref

    from vidqa.assets.types import ModelInfo

    info = ModelInfo(requested=str(tiny_vlm_dir), resolved=str(tiny_vlm_dir))
    vlm = VisionLanguageModel.load(info, device="cpu", local_files_only=True)
    compressor_for(vlm.model).apply(Plan({VISION_0: "int8"}))
    ref = weakref.ref(vlm.model)

    del vlm
    gc.collect()

    assert ref() is None


def test_prune_when_plans_are_pinned_keeps_only_their_int8_copies(tiny_vlm):
    compressor = Compressor(tiny_vlm.model)
    kept, other = Plan({VISION_0: "int8"}), Plan({TEXT.format(0): "int8"})
    compressor.prepare(kept)
    compressor.prepare(other)
    compressor.pin("query-a", kept)

    compressor.prune()
    with compressor.using(kept):
        quantized = get_module(tiny_vlm.model, VISION_0)
    compressor.prune()

    assert {path for path, _ in compressor._variants} == {VISION_0}
    with compressor.using(kept):
        assert get_module(tiny_vlm.model, VISION_0) is quantized  # not rebuilt
    compressor.pin("query-a", None)
    compressor.prune()
    assert compressor.cached_bytes() == 0
