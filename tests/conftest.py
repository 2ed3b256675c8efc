"""Shared fixtures: tests/ on sys.path for `factories`, isolation of caches and run folders,
a tiny random VLM saved and reloaded."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from factories import build_tiny_vlm  # noqa: E402

from vidqa.assets import ModelInfo, cache_dir  # noqa: E402
from vidqa.vlm.model import VisionLanguageModel  # noqa: E402

# Fetched assets are shared by every test (content-checked and written atomically); plans,
# profiles and anything else a test writes under the cache are not.
SHARED_ASSETS = ("video", "detectors", "vlm", "ultralytics")
_ASSETS = cache_dir()  # the user's or CI's asset cache, read before any test isolates it


def isolated_cache(root: Path) -> Path:
    """A fresh cache folder whose asset subfolders link to the shared asset cache."""
    root.mkdir(parents=True, exist_ok=True)
    for name in SHARED_ASSETS:
        (_ASSETS / name).mkdir(parents=True, exist_ok=True)
        (root / name).symlink_to(_ASSETS / name, target_is_directory=True)
    return root


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """One rule for the lanes: a test that starts an RTSP server is slow too."""
    for item in items:
        if item.get_closest_marker("rtsp") and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True, scope="session")
def session_cache(tmp_path_factory: pytest.TempPathFactory):
    """For module- and session-scoped fixtures (and the subprocesses they start)."""
    previous = os.environ.get("VIDQA_CACHE")
    os.environ["VIDQA_CACHE"] = str(isolated_cache(tmp_path_factory.mktemp("cache")))
    yield
    if previous is None:
        os.environ.pop("VIDQA_CACHE", None)
    else:
        os.environ["VIDQA_CACHE"] = previous


@pytest.fixture(autouse=True)
def isolated_run(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory,
                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets its own cache (no plan of another test, nothing in ~/.cache/vidqa) and
    runs in its own folder, so a default `runs/` lands in tmp_path."""
    monkeypatch.setenv("VIDQA_CACHE", str(isolated_cache(tmp_path_factory.mktemp("cache"))))
    monkeypatch.chdir(tmp_path)


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
