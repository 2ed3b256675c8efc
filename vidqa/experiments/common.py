"""What both experiments share: labels, output folders, memory peaks."""

from __future__ import annotations

import csv
import ctypes
import json
import sys
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from vidqa.errors import ConfigError, OutputError
from vidqa.messages import Crop


def load_labels(path: str | Path) -> dict[str, str]:
    """Track id (as a string) -> "yes"/"no", from JSON ``{"12": "yes"}`` or CSV with a header
    ``track_id,answer``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"labels file {path} not found")
    if path.suffix.lower() == ".json":
        raw = json.loads(path.read_text())
        pairs = raw.items() if isinstance(raw, dict) else []
    else:
        with path.open(newline="") as handle:
            pairs = [(row.get("track_id"), row.get("answer")) for row in csv.DictReader(handle)]
    labels = {str(k).strip(): str(v).strip().lower() for k, v in pairs if k is not None}
    bad = {k: v for k, v in labels.items() if v not in ("yes", "no")}
    if not labels or bad:
        got = dict(list(bad.items())[:3]) or "nothing"
        raise ConfigError(f"labels file {path}: expected track_id -> yes/no pairs "
                          f"(JSON object or CSV 'track_id,answer'), got {got}")
    return labels


def crops_and_ids(crops: Iterable[Crop | np.ndarray]) -> tuple[list[np.ndarray], list[str]]:
    """BGR crops and their ids: the track id of a Roi, the position of a bare crop."""
    images, ids = [], []
    for i, crop in enumerate(crops):
        if isinstance(crop, Crop):
            images.append(crop.image)
            ids.append(str(crop.track_id))
        else:
            images.append(crop)
            ids.append(str(i))
    if not images:
        raise ConfigError("compress-report got no crops: is the source empty or too short?")
    return images, ids


def prepare_out_dir(out_dir: Path) -> Path:
    """Create an experiment's output folder, or say why it cannot be."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create output directory {out_dir}: {err.strerror} — choose "
                          f"another with --out DIR") from None
    return out_dir


def peak_memory_reset(device: torch.device) -> None:
    """Start a fresh peak: CUDA's allocator peak, or Linux's VmHWM (via clear_refs)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    _malloc_trim()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # not Linux or not permitted: the peak is then the process's lifetime peak


def peak_memory(device: torch.device) -> int | None:
    """Peak bytes since :func:`peak_memory_reset` (GPU allocator, or process RSS on CPU)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _malloc_trim() -> None:
    """Hand freed heap back to the OS, so a configuration's peak is not its predecessor's."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
