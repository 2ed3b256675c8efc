import numpy as np
import pytest
import torch
from factories import person_crops

from vidqa.assets.types import ModelInfo
from vidqa.errors import ModelError
from vidqa.vlm.model import VisionLanguageModel

QUESTION = "Is this person carrying a backpack?"


def test_answer_yes_no_when_scored_then_p_yes_is_sigmoid_of_margin(tiny_vlm):
    results = tiny_vlm.answer_yes_no(person_crops(3), QUESTION)

    for r in results:
        assert 0.0 < r.p_yes < 1.0
        assert r.p_yes == pytest.approx(1 / (1 + np.exp(-r.margin)), rel=1e-5)
        assert r.answer == ("yes" if r.margin > 0 else "no")


def test_margins_when_computed_then_match_softmax_over_yes_and_no_words(tiny_vlm):
    inputs = tiny_vlm.encode(person_crops(2), QUESTION)

    logits = tiny_vlm.model(**inputs).logits[:, -1].float()  # (B, V) full forward, last position
    probs = logits.softmax(dim=-1)
    both = tiny_vlm.yes_ids + tiny_vlm.no_ids
    p_yes = probs[:, tiny_vlm.yes_ids].sum(1) / probs[:, both].sum(1)
    margins = tiny_vlm.margins(inputs)
    torch.testing.assert_close(torch.sigmoid(margins), p_yes, atol=1e-5, rtol=1e-4)


def test_answer_yes_no_when_batched_then_same_as_one_by_one(tiny_vlm):
    crops = person_crops(5, seed=3)

    batched = tiny_vlm.answer_yes_no(crops, QUESTION)
    single = [tiny_vlm.answer_yes_no([crop], QUESTION)[0] for crop in crops]

    assert [b.answer for b in batched] == [s.answer for s in single]
    np.testing.assert_allclose([b.margin for b in batched], [s.margin for s in single], atol=1e-5)


def test_answer_yes_no_when_crops_differ_then_margins_differ(tiny_vlm):
    margins = [r.margin for r in tiny_vlm.answer_yes_no(person_crops(4, seed=5), QUESTION)]

    assert len(set(np.round(margins, 6))) == 4  # the image reaches the answer


def test_answer_text_when_generated_then_one_string_per_crop(tiny_vlm):
    texts = tiny_vlm.answer_text(person_crops(2), "Describe the person.", max_new_tokens=3)

    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)


def test_yes_and_no_tokens_when_loaded_then_distinct(tiny_vlm):
    assert tiny_vlm.yes_ids and tiny_vlm.no_ids
    assert not set(tiny_vlm.yes_ids) & set(tiny_vlm.no_ids)


def test_load_when_directory_missing_then_model_error_names_it(tmp_path):
    missing = tmp_path / "no-model"

    with pytest.raises(ModelError, match="no-model"):
        VisionLanguageModel.load(ModelInfo(str(missing), str(missing)), device="cpu",
                                 local_files_only=True)


def test_weight_bytes_when_fp32_then_four_bytes_per_parameter(tiny_vlm):
    params = sum(p.numel() for p in tiny_vlm.model.parameters())

    assert tiny_vlm.weight_bytes() >= 4 * params
