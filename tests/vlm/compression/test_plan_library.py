"""Plan files: per model, found by question; the nearest question for borrowing."""

from __future__ import annotations

import pytest

from vidqa.errors import ConfigError
from vidqa.vlm.compression.plan import Plan
from vidqa.vlm.compression.plan_library import (
    find,
    load_library,
    nearest,
    save_library,
    similarity,
)

PATHS = ["model.vision_model.encoder.layers.0", "model.text_model.layers.0"]


def library_file(tmp_path, paths=PATHS):
    plan = Plan({PATHS[0]: "skip", PATHS[1]: "keep"})
    return save_library(tmp_path / "plans.json", "m", paths,
                        [{"question": "Is this person carrying a backpack?",
                          "plan": plan.to_dict(), "planning_s": 3.0}]), plan


def test_load_library_when_layers_match_finds_the_question(tmp_path):
    file, plan = library_file(tmp_path)
    library = load_library(file, PATHS)
    found = find(library, "is this person  carrying a backpack?")
    assert found is not None and found.plan == plan and found.checks["planning_s"] == 3.0


def test_load_library_when_made_for_another_model_is_refused(tmp_path):
    file, _ = library_file(tmp_path, paths=PATHS[:1])
    with pytest.raises(ConfigError, match="per model"):
        load_library(file, PATHS)


def test_load_library_when_folder_skips_other_models(tmp_path):
    library_file(tmp_path, paths=PATHS[:1])
    assert load_library(tmp_path, PATHS) == []


@pytest.mark.parametrize(("a", "b", "expected"), [
    ("Is this person carrying a backpack?", "Is this person carrying a bag?", 1 / 3),
    ("Is this person wearing a hat?", "Is this person carrying a bag?", 0.0),
    ("Is this person wearing a hat?", "Is this person wearing a hat?", 1.0),
])
def test_similarity_when_questions_share_words(a, b, expected):
    assert similarity(a, b) == pytest.approx(expected)


def test_nearest_when_several_questions_picks_the_most_similar_other():
    best = nearest("Is this person carrying a bag?",
                   ["Is this person wearing a hat?", "Is this person carrying a backpack?",
                    "Is this person carrying a bag?"])
    assert best[0] == "Is this person carrying a backpack?"
