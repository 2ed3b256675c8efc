"""Detector backends: the same YOLO checkpoint run by PyTorch, OpenVINO or ONNX Runtime.

PyTorch eager is what CUDA wants, but on a small x86 CPU it spends most of a frame in
framework overhead: the runtimes made for CPUs run the same network 3-5x faster (README:
"Detector backends"). The exported model is built once, by ultralytics' own exporter, and
cached under the asset cache keyed by the checkpoint's hash, the image size and the backend;
ultralytics' predictor then runs it like the checkpoint, so the tracker above is unchanged.

Exports are dynamic in shape: the predictor then letterboxes a frame to the same rectangle as
for PyTorch (640x480 for a 4:3 frame, not a padded 640x640 square), which keeps the boxes, and
so the tracks, the torch backend's; any batch size runs too.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import shutil
import tempfile
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from loguru import logger

from vidqa.assets.fetch import cache_dir
from vidqa.errors import ConfigError, ModelError

BACKENDS = ("auto", "torch", "openvino", "onnx")
RUNTIMES = {"openvino": "openvino", "onnx": "onnxruntime"}  # backend -> module it needs
EXPORT_FORMATS = {"openvino": "openvino", "onnx": "onnx"}  # backend -> ultralytics format
X86 = ("x86_64", "amd64", "i686", "x86")
INSTALL_HINT = "pip install 'vidqa[cpu]' (OpenVINO and ONNX Runtime)"


def resolve_backend(backend: str, device: str) -> str:
    """The backend that runs: ``auto`` is torch on CUDA and OpenVINO on an x86 CPU where it is
    installed (else torch); an explicit one must be installed and run on the CPU."""
    if backend not in BACKENDS:
        raise ConfigError(f"tracker.backend = {backend!r}: use one of {', '.join(BACKENDS)}")
    on_cuda = _on_cuda(device)
    if backend == "auto":
        if on_cuda or platform.machine().lower() not in X86 or not installed("openvino"):
            return "torch"
        return "openvino"
    if backend != "torch":
        if on_cuda:
            raise ConfigError(f"tracker.backend = {backend!r} runs on the CPU but "
                              f"tracker.device is {device!r} (CUDA): use backend torch or auto "
                              f"on CUDA, or set tracker.device: cpu")
        if not installed(backend):
            raise ConfigError(f"tracker.backend = {backend!r} needs the Python package "
                              f"{RUNTIMES[backend]!r}, which is not installed: {INSTALL_HINT}, "
                              f"or use tracker.backend: torch")
    return backend


def installed(backend: str) -> bool:
    return find_spec(RUNTIMES[backend]) is not None


def exported_model(checkpoint: str, imgsz: int, backend: str) -> Path:
    """The checkpoint exported for ``backend`` at ``imgsz``: from the cache, else exported now.

    Two processes exporting at once each export into a private folder and rename it into
    place; the loser's rename fails (the folder exists) and it uses the winner's, so nobody
    ever reads a half-written export.
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise ModelError(f"tracker.backend {backend!r} exports a checkpoint file, but "
                         f"{checkpoint!r} is not one: set tracker.weights to a .pt path, or "
                         f"tracker.backend: torch")
    root = cache_dir() / "detectors" / "exports"
    final = root / f"{file_hash(path)[:16]}-{imgsz}-{backend}"
    if not final.is_dir():
        root.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(dir=root, prefix=f".{final.name}."))
        try:
            _export(path, imgsz, backend, work)
            try:
                os.rename(work, final)
            except OSError:  # another process got there first: its export is the same
                if not final.is_dir():
                    raise
                logger.info("another process exported {} first; using its copy", final.name)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return _model_in(final, backend)


def file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _export(checkpoint: Path, imgsz: int, backend: str, work: Path) -> None:
    """ultralytics' exporter writes beside the checkpoint: a private copy keeps it in ``work``;
    the copy is removed so that only the exported model is renamed into the cache."""
    from ultralytics import YOLO

    local = work / "model.pt"
    shutil.copyfile(checkpoint, local)
    logger.info("exporting detector {} to {} at imgsz {} (once; cached in {})", checkpoint,
                backend, imgsz, work.parent)
    try:
        YOLO(str(local), task="detect").export(format=EXPORT_FORMATS[backend], imgsz=imgsz,
                                               dynamic=True, verbose=False)
    except Exception as err:  # ultralytics raises many kinds
        raise ModelError(f"exporting {checkpoint} to {backend} failed: {err} — use "
                         f"tracker.backend: torch") from err
    local.unlink()


def _model_in(folder: Path, backend: str) -> Path:
    """What ``ultralytics.YOLO`` loads from an export folder (names say the format)."""
    name = "model_openvino_model" if backend == "openvino" else "model.onnx"
    if not (folder / name).exists():
        raise ModelError(f"the cached export {folder} lacks {name}: delete the folder to "
                         f"export again")
    return folder / name


def _on_cuda(device: str) -> bool:
    if device == "auto":
        import torch

        return torch.cuda.is_available()
    return device.startswith("cuda") or device.isdigit()


def reference_gt(mot: Path, gt: Path) -> Path:
    """A run's ``mot.txt`` rewritten as MOT16 ground truth (consider 1, class pedestrian,
    visible), so that ``vidqa eval tracks`` scores one backend's tracks against another's."""
    rows = [line.split(",")[:6] for line in mot.read_text().splitlines() if line.strip()]
    gt.parent.mkdir(parents=True, exist_ok=True)
    gt.write_text("".join(f"{','.join(row)},1,1,1\n" for row in rows))
    return gt


def unpin_openvino(model: Any, export: Path) -> bool:
    """Compile ultralytics' OpenVINO model again without pinning its threads to cores.

    OpenVINO pins by default; on a machine it shares (the VLM worker, other processes) a pinned
    thread waits for its own core instead of taking a free one: unpinned, one frame took 1118
    ms instead of 1864 at load average 9 on 2 cores (`tools/bench_backends.py`, the figures in
    the README). Reaches into ultralytics' backend (its core and compile settings), so it
    returns False and leaves the model as it was where that layout differs.
    """
    backend = getattr(model, "backend", None)
    compile_model = getattr(backend, "compile_model", None)
    core = getattr(getattr(compile_model, "func", None), "__self__", None)
    keywords = getattr(compile_model, "keywords", {})
    if core is None or keywords.get("device_name") != "CPU" or \
            getattr(backend, "read_model", None) is not None:
        logger.info("OpenVINO threads stay pinned: ultralytics' backend is not the one vidqa "
                    "knows (or not on the CPU)")
        return False
    config = {**keywords.get("config", {}), "ENABLE_CPU_PINNING": False}
    backend.compile_model = functools.partial(compile_model.func, device_name="CPU",
                                              config=config)
    backend.ov_compiled_model = backend.compile_model(core.read_model(next(export.glob("*.xml"))))
    return True
