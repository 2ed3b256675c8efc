"""Shared fixtures: tests/ on sys.path for `factories`, a tiny random VLM saved and reloaded."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from factories import build_tiny_vlm  # noqa: E402

from vidqa.vlm.model import ModelInfo, VisionLanguageModel  # noqa: E402


@pytest.fixture(scope="session")
def tiny_vlm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Idefics3 (2 vision + 4 text layers) saved with save_pretrained."""
    return build_tiny_vlm(tmp_path_factory.mktemp("models") / "tiny-smolvlm")


@pytest.fixture()
def tiny_vlm(tiny_vlm_dir: Path) -> VisionLanguageModel:
    """The tiny model loaded through the same from_pretrained path a user's model takes."""
    info = ModelInfo(requested=str(tiny_vlm_dir), resolved=str(tiny_vlm_dir))
    return VisionLanguageModel.load(info, device="cpu", local_files_only=True)
