import json

import numpy as np
import pytest
import torch
from factories import person_crops

from vidqa.assets.types import ModelInfo
from vidqa.vlm.compression.layers import LayerRef, find_layers, get_module, hook_count, trace_layers
from vidqa.vlm.model import VisionLanguageModel
from vidqa.vlm.profiling import stream
from vidqa.vlm.profiling.importance import (
    TASK_METRICS,
    TRACE_METRICS,
    Profile,
    _token_stats,
    crop_means,
    profile_crops,
    token_stride,
    vision_tokens,
)
from vidqa.vlm.profiling.stream import new_stream_profile

QUESTION = "Is this person carrying a backpack?"
ALL = {"metrics": TRACE_METRICS, "task_impact": True}
RESIDUAL_WRITERS = ("out_proj", "fc2", "o_proj", "down_proj")  # Linears that feed the residual


def make_identity(layer: torch.nn.Module) -> None:
    """Zero what a block adds to its residual stream: the block becomes output = input."""
    with torch.no_grad():
        for name, module in layer.named_modules():
            if name.rsplit(".", 1)[-1] in RESIDUAL_WRITERS:
                for param in module.parameters():
                    param.zero_()


@pytest.fixture(scope="module")
def profiled(tiny_vlm_dir):
    """A full profile (every metric) of 3 crops, and the model it came from."""
    info = ModelInfo(requested=str(tiny_vlm_dir), resolved=str(tiny_vlm_dir))
    vlm = VisionLanguageModel.load(info, device="cpu", local_files_only=True)
    return vlm, profile_crops(vlm, person_crops(3), QUESTION, [7, 8, 9], batch_size=2, **ALL)


def test_profile_crops_when_profiled_then_one_row_per_crop_and_one_column_per_layer(profiled):
    vlm, profile = profiled

    assert profile.layers == find_layers(vlm.model)
    assert profile.crop_ids == [7, 8, 9]
    assert set(profile.scores) == set(TRACE_METRICS + TASK_METRICS)
    for matrix in [*profile.scores.values(), *profile.deltas.values()]:
        assert matrix.shape == (3, 6)
        assert np.isfinite(matrix).all()


def test_profile_crops_when_profiled_then_full_model_answers_are_recorded(profiled):
    vlm, profile = profiled

    plain = vlm.answer_yes_no(person_crops(3), QUESTION)

    np.testing.assert_allclose(profile.margins, [a.margin for a in plain], atol=1e-5)
    np.testing.assert_allclose(profile.p_yes, [a.p_yes for a in plain], atol=1e-6)
    assert profile.answers == [a.answer for a in plain]


def test_profile_crops_when_done_then_model_has_no_hooks_and_same_layers(profiled):
    vlm, _ = profiled

    assert hook_count(vlm.model) == 0
    assert all(type(get_module(vlm.model, layer.path)).__name__ in
               ("Idefics3EncoderLayer", "LlamaDecoderLayer") for layer in find_layers(vlm.model))


def test_profile_crops_when_layer_is_identity_then_influence_and_task_impact_are_zero(tiny_vlm):
    identity = [layer for layer in find_layers(tiny_vlm.model)
                if layer.path.endswith(("encoder.layers.0", "text_model.layers.1"))]
    for layer in identity:
        make_identity(get_module(tiny_vlm.model, layer.path))

    profile = profile_crops(tiny_vlm, person_crops(3), QUESTION, **ALL)

    columns = [profile.layers.index(layer) for layer in identity]
    others = [i for i in range(len(profile.layers)) if i not in columns]
    np.testing.assert_allclose(profile.scores["block_influence"][:, columns], 0, atol=1e-5)
    np.testing.assert_array_equal(profile.scores["task_skip"][:, columns], 0)
    np.testing.assert_allclose(profile.scores["task_int8"][:, columns], 0, atol=1e-6)
    # The other layers do move the answer: the check above could fail.
    assert (profile.scores["task_skip"][:, others].max(axis=0) > 1e-6).all()
    assert (profile.scores["block_influence"][:, others] > 1e-4).all()


def test_activation_when_computed_then_mean_token_norm_of_layer_output(tiny_vlm):
    crops = person_crops(2)
    path = "model.text_model.layers.2"
    inputs = tiny_vlm.encode(crops, QUESTION)
    with trace_layers(tiny_vlm.model, [path]) as traced:
        tiny_vlm.margins(inputs)
    hidden_in, hidden_out = traced[path]  # (B, T, C)

    profile = profile_crops(tiny_vlm, crops, QUESTION, task_impact=False)

    column = [layer.path for layer in profile.layers].index(path)
    expected_activation = hidden_out.norm(dim=-1).mean(dim=1)  # (B,)
    cos = torch.nn.functional.cosine_similarity(hidden_in, hidden_out, dim=-1)  # (B, T)
    np.testing.assert_allclose(profile.scores["activation"][:, column], expected_activation,
                               rtol=1e-5)
    np.testing.assert_allclose(profile.scores["block_influence"][:, column],
                               (1 - cos).mean(dim=1), rtol=1e-4)


def test_profile_crops_when_batch_size_changes_then_scores_are_the_same(tiny_vlm):
    crops = person_crops(2, seed=4)

    one = profile_crops(tiny_vlm, crops, QUESTION, batch_size=1)
    both = profile_crops(tiny_vlm, crops, QUESTION, batch_size=2)

    for metric in one.scores:
        np.testing.assert_allclose(one.scores[metric], both.scores[metric], rtol=1e-3,
                                   atol=1e-5)


def test_task_deltas_when_recorded_then_signed_and_consistent_with_scores(profiled):
    _, profile = profiled

    for metric in TASK_METRICS:
        margin, p_yes = profile.deltas[f"{metric}.margin"], profile.deltas[f"{metric}.p_yes"]
        np.testing.assert_array_equal(np.abs(margin), profile.scores[metric])
        assert (np.sign(p_yes) == np.sign(margin)).all()  # p_yes is monotone in the margin
    assert profile.passes["task_skip"] == 2 * 6  # 2 batches x 6 layers


def test_profile_crops_when_model_is_not_float32_then_task_int8_skipped_with_reason(tiny_vlm_dir):
    info = ModelInfo(requested=str(tiny_vlm_dir), resolved=str(tiny_vlm_dir))
    vlm = VisionLanguageModel.load(info, device="cpu", dtype="bfloat16", local_files_only=True)

    profile = profile_crops(vlm, person_crops(2), QUESTION, task_impact=True)

    assert "task_int8" not in profile.scores
    assert "float32" in profile.skipped["task_int8"]
    assert "task_skip" in profile.scores


@pytest.mark.parametrize(("metrics", "task_impact", "match"), [
    (("activation", "magnitude"), (), "magnitude"),
    (("activation",), ("task_skip", "task_fp4"), "task_fp4"),
])
def test_profile_crops_when_metric_unknown_then_value_error(tiny_vlm, metrics, task_impact, match):
    with pytest.raises(ValueError, match=match):
        profile_crops(tiny_vlm, person_crops(1), QUESTION, metrics=metrics,
                     task_impact=task_impact)


def test_vision_tokens_when_padding_image_and_masked_pixels_then_only_real_patches():
    pixels = torch.ones(2, 2, 3, 4, 4)  # (B, n_images, C, H, W), patch 2 -> 4 patches per image
    pixels[1, 1] = 0  # ROI 1 has one real image, then a padding image
    pixel_mask = torch.ones(2, 2, 4, 4, dtype=torch.bool)
    pixel_mask[0, 1, :, 2:] = False  # ROI 0's second tile: right half is padding

    owner, mask = vision_tokens({"pixel_values": pixels, "pixel_attention_mask": pixel_mask}, 2)

    assert owner.tolist() == [0, 0, 1]
    assert mask.tolist() == [[1, 1, 1, 1], [1, 0, 1, 0], [1, 1, 1, 1]]


def test_crop_means_when_tokens_padded_then_padding_is_left_out():
    tokens = torch.tensor([[[1.0, 0.0], [3.0, 1.0], [99.0, 99.0]],
                           [[5.0, 2.0], [99.0, 99.0], [99.0, 99.0]]])  # (N=2, T=3, 2)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])

    means = crop_means(tokens, mask, torch.tensor([0, 1]), batch=2)

    assert means.tolist() == [[2.0, 0.5], [5.0, 2.0]]


def test_crop_means_when_one_crop_owns_two_rows_then_averages_all_its_tokens():
    tokens = torch.tensor([[[2.0, 0.0]], [[4.0, 1.0]]])  # (N=2, T=1, 2): two tiles of ROI 0

    means = crop_means(tokens, torch.ones(2, 1), torch.tensor([0, 0]), batch=1)

    assert means.tolist() == [[3.0, 0.5]]


def make_profile(scores: np.ndarray) -> Profile:
    layers = [LayerRef(f"model.text_model.layers.{i}", "text", i) for i in range(scores.shape[1])]
    margins = np.linspace(-1, 1, len(scores))
    return Profile(question="q?", layers=layers, scores={"activation": scores}, margins=margins,
                   p_yes=1 / (1 + np.exp(-margins)), crop_ids=list(range(len(scores))),
                   seconds={"trace": 0.5})


@pytest.mark.parametrize(("scores", "ranking"), [
    ([[3.0, 1.0, 2.0]], [1, 2, 0]),
    ([[1.0, 1.0, 1.0]], [0, 1, 2]),  # ties keep layer order
    # Per-ROI normalisation: ROI 1's large scale must not outvote ROI 0.
    ([[0.1, 0.2, 0.7], [600.0, 300.0, 100.0]], [1, 0, 2]),
])
def test_ranking_when_scores_known_then_least_important_first(scores, ranking):
    assert make_profile(np.array(scores)).ranking("activation") == ranking


def test_normalized_when_a_crop_is_all_zero_then_its_row_stays_zero():
    normalized = make_profile(np.array([[0.0, 0.0], [1.0, 3.0]])).normalized("activation")

    assert normalized.tolist() == [[0.0, 0.0], [0.25, 0.75]]


def test_ranking_when_metric_missing_then_key_error_lists_available():
    with pytest.raises(KeyError, match="activation"):
        make_profile(np.ones((2, 3))).ranking("task_skip")


def test_profile_when_round_tripped_through_json_then_equal(profiled):
    _, profile = profiled

    back = Profile.from_dict(json.loads(json.dumps(profile.to_dict(), allow_nan=False)))

    assert back.to_dict() == profile.to_dict()
    assert back.layers == profile.layers
    for metric in profile.scores:
        np.testing.assert_array_equal(back.scores[metric], profile.scores[metric])
    np.testing.assert_array_equal(back.margins, profile.margins)
    assert back.ranking("task_skip") == profile.ranking("task_skip")


def test_task_impact_when_prefix_replayed_then_same_as_full_passes(tiny_vlm):
    crops = person_crops(3, seed=2)
    paths = [layer.path for layer in find_layers(tiny_vlm.model)]
    layers_before = [get_module(tiny_vlm.model, path) for path in paths]

    replayed = profile_crops(tiny_vlm, crops, QUESTION, task_impact=True, batch_size=2)
    full = profile_crops(tiny_vlm, crops, QUESTION, task_impact=True, batch_size=2, replay=False)

    for metric in TASK_METRICS:
        # bit-identical on CPU: the replayed tensors are the ones a full pass computes
        np.testing.assert_array_equal(replayed.deltas[f"{metric}.margin"],
                                      full.deltas[f"{metric}.margin"])
    layers_after = [get_module(tiny_vlm.model, path) for path in paths]
    assert all(a is b for a, b in zip(layers_before, layers_after, strict=True))
    assert tiny_vlm.model.model.vision_model.__class__.__name__ == "Idefics3VisionTransformer"


def test_token_stats_when_sampled_then_reads_every_strided_token_only():
    torch.manual_seed(0)
    h_in, h_out = torch.randn(2, 100, 8), torch.randn(2, 100, 8)

    sampled = _token_stats("layer", h_in, h_out, sampled=10)

    assert token_stride(100, 10) == 10 and token_stride(100, None) == 1
    assert torch.equal(sampled, _token_stats("layer", h_in, h_out)[:, ::10])


def test_stream_profile_when_hooks_sample_tokens_then_answers_are_unchanged_and_means_close(
        tiny_vlm, monkeypatch):
    # Given one batch profiled reading every token, and the same batch reading one in two
    inputs = tiny_vlm.encode(person_crops(3), QUESTION)
    every = new_stream_profile(tiny_vlm)
    monkeypatch.setattr(stream, "SAMPLED_TOKENS", None)
    margins = stream.traced_margins(tiny_vlm, inputs, every)
    sampled = new_stream_profile(tiny_vlm)
    monkeypatch.setattr(stream, "SAMPLED_TOKENS", 2)
    again = stream.traced_margins(tiny_vlm, inputs, sampled)

    # Then the answers are the plain pass's, and the per-crop means stay close
    assert torch.equal(margins, again)
    full, part = every.stats[0], sampled.stats[0]  # (B, n_layers, 2)
    assert part.shape == full.shape and np.isfinite(part).all()
    assert np.allclose(part, full, rtol=0.5, atol=0.05)
