"""The device-side single-tile encoder against the Hugging Face processor (the reference)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from factories import person_crops

from vidqa.assets.smolvlm import make_processor, tiny_tokenizer
from vidqa.vlm.preprocess import TileEncoder, resized_size


def smooth_crops(count: int, seed: int = 0) -> list[np.ndarray]:
    """Person-shaped crops with camera-like smoothness (resampling filters differ on noise)."""
    return [cv2.GaussianBlur(crop, (5, 5), 2) for crop in person_crops(count, seed)]


@pytest.mark.parametrize("longest, tile", [(64, 64), (256, 64), (2048, 512)])
def test_tile_encoder_when_compared_to_processor_then_pixels_agree_within_tolerance(
        longest, tile):
    processor = make_processor(tiny_tokenizer(), tile, 4)
    processor.image_processor.size = {"longest_edge": longest}  # SmolVLM: 4 x tile
    crops = smooth_crops(5)

    reference = processor.image_processor([[c[:, :, ::-1].copy()] for c in crops],
                                          return_tensors="pt", do_image_splitting=False)
    mine = TileEncoder(processor, torch.device("cpu"), torch.float32).pixels(crops)

    difference = (reference["pixel_values"][:, 0] - mine).abs()  # values span [-1, 1]
    assert mine.shape == reference["pixel_values"][:, 0].shape
    # The processor resamples with Lanczos on the CPU, the encoder bicubically (what the
    # processor itself uses on CUDA): a grey level or two on average, a few at edges.
    assert float(difference.mean()) < 0.02 and float(difference.max()) < 0.15


def test_tile_encoder_when_encoding_then_text_inputs_equal_the_processors(tiny_vlm):
    crops = smooth_crops(3)
    prompt = tiny_vlm.prompt("Is this person carrying a backpack?")

    reference = tiny_vlm.encode(crops, "Is this person carrying a backpack?", reference=True)
    mine = tiny_vlm.tiles.encode(crops, prompt)

    assert torch.equal(mine["input_ids"], reference["input_ids"])
    assert torch.equal(mine["attention_mask"], reference["attention_mask"])
    assert mine["pixel_values"].shape == reference["pixel_values"].shape


def test_tile_encoder_when_answering_then_margins_match_the_processors(tiny_vlm):
    crops = smooth_crops(4, seed=1)
    question = "Is this person carrying a backpack?"

    reference = tiny_vlm.margins(tiny_vlm.encode(crops, question, reference=True))
    mine = tiny_vlm.margins(tiny_vlm.encode(crops, question))

    assert torch.allclose(mine, reference, atol=0.05)


@pytest.mark.parametrize("height, width, longest, expected", [
    (100, 50, 64, (64, 32)),
    (50, 100, 64, (32, 64)),
    (99, 40, 64, (64, 26)),  # int(64 * 40/99) = 25, made even
    (10, 10, 2048, (2048, 2048)),
])
def test_resized_size_when_given_a_crop_then_matches_processor_rule(height, width, longest,
                                                                   expected):
    assert resized_size(height, width, longest) == expected


def test_tile_encoder_when_tile_is_smaller_then_prompt_holds_its_image_tokens(tiny_vlm):
    # Given the tiny model's 64 px tile (4 image tokens, one per 32 px)
    question = "Is this person carrying a backpack?"
    image_token = tiny_vlm.model.config.image_token_id

    # When the crops are encoded at 32 px
    small = tiny_vlm.encode(smooth_crops(3), question, tile=32)
    full = tiny_vlm.encode(smooth_crops(3), question)

    # Then the pixels are 32 px, each prompt holds one image token, and the model answers
    assert small["pixel_values"].shape == (3, 1, 3, 32, 32)
    assert (small["input_ids"] == image_token).sum(dim=1).tolist() == [1, 1, 1]
    assert (full["input_ids"] == image_token).sum(dim=1).tolist() == [4, 4, 4]
    assert torch.isfinite(tiny_vlm.margins(small)).all()
    assert tiny_vlm.tiles.sizes() == [64, 32]


def test_tile_encoder_when_another_question_reuses_small_pixels_then_prompt_fits_them(tiny_vlm):
    small = tiny_vlm.encode(smooth_crops(2), "Is this person running?", tile=32)

    other = tiny_vlm.prompt_inputs("Is this person carrying a backpack?", small)

    assert (other["input_ids"] == tiny_vlm.model.config.image_token_id).sum().item() == 2
    assert torch.isfinite(tiny_vlm.margins(other)).all()


@pytest.mark.parametrize("tile", [48, 96, 0])
def test_tile_encoder_when_tile_is_not_a_multiple_of_the_unit_then_says_which_work(tiny_vlm,
                                                                                     tile):
    with pytest.raises(ValueError, match="multiple of 32 px"):
        tiny_vlm.encode(smooth_crops(1), "Is this person running?", tile=tile)
