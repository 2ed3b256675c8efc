"""Loading the configured VLM: the files :mod:`vidqa.assets` resolved (hub, local folder or the
offline stand-in), loaded as a :class:`~vidqa.vlm.model.VisionLanguageModel`."""

from __future__ import annotations

from vidqa.assets import ModelInfo, hub_reachable, resolve_vlm, warn_standin
from vidqa.config import VlmConfig
from vidqa.vlm.model import VisionLanguageModel


def load_vlm(cfg: VlmConfig, info: ModelInfo | None = None) -> VisionLanguageModel:
    """Resolve (unless given) and load the configured VLM, warning loudly about a stand-in."""
    info = info or resolve_vlm(cfg.model, cfg.revision)
    warn_standin(info)
    return VisionLanguageModel.load(info, cfg.device, cfg.dtype, cfg.image_splitting,
                                    local_files_only=not hub_reachable())
