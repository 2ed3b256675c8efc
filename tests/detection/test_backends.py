"""Detector backends: which one runs, the export cache, and the same tracks as PyTorch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from factories import clip_frames

from vidqa.detection import backends
from vidqa.errors import ConfigError


@pytest.mark.parametrize("backend, device, machine, runtimes, expected", [
    ("auto", "cpu", "x86_64", {"openvino", "onnxruntime"}, "openvino"),
    ("auto", "cpu", "x86_64", {"onnxruntime"}, "torch"),
    ("auto", "cpu", "aarch64", {"openvino"}, "torch"),
    ("auto", "cuda", "x86_64", {"openvino"}, "torch"),
    ("auto", "cuda:1", "x86_64", {"openvino"}, "torch"),
    ("torch", "cpu", "x86_64", set(), "torch"),
    ("onnx", "cpu", "aarch64", {"onnxruntime"}, "onnx"),
    ("openvino", "cpu", "x86_64", {"openvino"}, "openvino"),
])
def test_resolve_backend_when_machine_and_runtimes_then_backend(monkeypatch, backend, device,
                                                                machine, runtimes, expected):
    monkeypatch.setattr(backends.platform, "machine", lambda: machine)
    monkeypatch.setattr(backends, "installed", lambda b: backends.RUNTIMES[b] in runtimes)

    assert backends.resolve_backend(backend, device) == expected


@pytest.mark.parametrize("backend, device, runtimes, message", [
    ("openvino", "cuda", {"openvino"}, "runs on the CPU"),
    ("onnx", "cpu", set(), "vidqa[cpu]"),
    ("tensorrt", "cpu", set(), "use one of auto, torch, openvino, onnx"),
])
def test_resolve_backend_when_impossible_then_error_says_the_fix(monkeypatch, backend, device,
                                                                 runtimes, message):
    monkeypatch.setattr(backends, "installed", lambda b: backends.RUNTIMES[b] in runtimes)

    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        backends.resolve_backend(backend, device)


def test_reference_gt_when_mot_rows_then_pedestrian_ground_truth(tmp_path: Path):
    mot = tmp_path / "mot.txt"
    mot.write_text("1,3,10.00,20.00,30.00,40.00,0.9000,-1,-1,-1\n")

    gt = backends.reference_gt(mot, tmp_path / "gt" / "gt.txt")

    assert gt.read_text() == "1,3,10.00,20.00,30.00,40.00,1,1,1\n"


def test_exported_model_when_weights_are_a_name_then_error_says_the_fix():
    with pytest.raises(Exception, match="tracker.weights to a .pt path"):
        backends.exported_model("yolov8n.pt", 640, "onnx")


EXPORT = """
import sys
from vidqa.detection.backends import exported_model
print(exported_model(sys.argv[1], 320, "onnx"))
"""


@pytest.mark.slow
def test_exported_model_when_two_processes_export_at_once_then_one_intact_copy(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from vidqa import assets

    checkpoint = tmp_path / "detector.pt"
    checkpoint.write_bytes(Path(assets.resolve_detector("auto").path).read_bytes())
    monkeypatch.setenv("VIDQA_CACHE", str(tmp_path / "cache"))  # no export there yet
    runs = [subprocess.Popen([sys.executable, "-c", EXPORT, str(checkpoint)],
                             stdout=subprocess.PIPE, text=True) for _ in range(2)]
    paths = [run.communicate(timeout=240)[0].strip().splitlines()[-1] for run in runs]

    assert [run.returncode for run in runs] == [0, 0]
    assert paths[0] == paths[1]
    export = Path(paths[0])
    assert export.parent.name.endswith("-320-onnx")
    assert [p.name for p in export.parent.iterdir()] == ["model.onnx"]
    assert not [p for p in export.parent.parent.iterdir() if p.name.startswith(".")]
    mtime = export.stat().st_mtime_ns
    assert backends.exported_model(str(checkpoint), 320, "onnx") == export  # cached
    assert export.stat().st_mtime_ns == mtime


def write_tracks(backend: str, frames: list, path: Path) -> Path:
    from vidqa.config import TrackerConfig
    from vidqa.sinks.mot import mot_rows
    from vidqa.tracking import PersonTracker

    tracker = PersonTracker(TrackerConfig(device="cpu", backend=backend))
    assert tracker.detector.info.backend == backend
    if backend == "openvino":  # compiled again with threads free to move between cores
        compiled = tracker.detector.model.predictor.model.backend.ov_compiled_model
        assert compiled.get_property("ENABLE_CPU_PINNING") is False
    rows = [row for frame in frames for row in mot_rows(frame.frame_index, tracker.update(frame))]
    assert all(seconds > 0 for seconds in tracker.frame_path().values())  # every stage timed
    path.write_text("".join(f"{row}\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def torch_tracks(tmp_path_factory: pytest.TempPathFactory) -> tuple[list, Path]:
    """The first 30 frames of the sample clip, and PyTorch's tracks of them as ground truth."""
    folder, frames = tmp_path_factory.mktemp("torch"), clip_frames(30)
    mot = write_tracks("torch", frames, folder / "mot.txt")
    return frames, backends.reference_gt(mot, folder / "gt.txt")


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["openvino", "onnx"])
def test_backend_when_tracking_the_sample_clip_then_tracks_are_torchs(tmp_path: Path, capsys,
                                                                      torch_tracks, backend: str):
    from vidqa.cli import main

    frames, gt = torch_tracks
    mot = write_tracks(backend, frames, tmp_path / f"{backend}.txt")
    capsys.readouterr()  # ultralytics' loading lines

    assert main(["eval", "tracks", str(mot), str(gt), "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)

    assert scores["gt_dets"] > 60  # the clip has people in it: the test can fail
    assert scores["IDF1"] >= 0.95 and scores["MOTA"] >= 0.95, scores
