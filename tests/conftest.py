"""Shared fixtures: tests/ on sys.path for `factories`, a tiny random VLM saved and reloaded."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from factories import build_tiny_vlm  # noqa: E402

from vidqa.vlm.model import ModelInfo, VisionLanguageModel  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Tiny models run fastest on one thread; two threads on a busy 2-core machine spin (150x).
    The real tracker takes every core back when it starts (vidqa.tracking)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_vlm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Idefics3 (2 vision + 4 text layers) saved with save_pretrained."""
    return build_tiny_vlm(tmp_path_factory.mktemp("models") / "tiny-smolvlm")


@pytest.fixture()
def tiny_vlm(tiny_vlm_dir: Path) -> VisionLanguageModel:
    """The tiny model loaded through the same from_pretrained path a user's model takes."""
    info = ModelInfo(requested=str(tiny_vlm_dir), resolved=str(tiny_vlm_dir))
    return VisionLanguageModel.load(info, device="cpu", local_files_only=True)
