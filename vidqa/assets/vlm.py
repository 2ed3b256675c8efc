"""Which VLM runs — a local directory, a hub id, or, offline with nothing cached, the stand-in —
and loading it as the pipeline and the experiments do."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from loguru import logger

from vidqa.assets.fetch import cache_dir, hub_reachable
from vidqa.assets.types import STANDIN_WARNING, ModelInfo
from vidqa.errors import ModelError

if TYPE_CHECKING:  # torch and transformers take seconds to import: only when a VLM loads
    pass

SMOLVLM_ID = "HuggingFaceTB/SmolVLM-500M-Instruct"
STANDIN_DIRNAME = "smolvlm-256m-standin"


def _hub_cached(repo_id: str, revision: str) -> bool:
    """Whether the config and the weights of ``repo_id`` are in the local HF cache."""
    from huggingface_hub import try_to_load_from_cache

    def cached(filename: str) -> bool:
        return isinstance(try_to_load_from_cache(repo_id, filename, revision=revision), str)

    return cached("config.json") and (cached("model.safetensors")
                                      or cached("model.safetensors.index.json"))


def _local_vlm(spec: str, path: Path) -> ModelInfo:
    if not (path / "config.json").is_file():
        raise ModelError(f"VLM directory {path} has no config.json: point vlm.model at a "
                         f"directory written by save_pretrained, or use vlm.model: auto")
    standin = (path / "standin.json").is_file()
    return ModelInfo(requested=spec, resolved=str(path), standin=standin,
                     note="offline stand-in: random vision, answers carry no visual meaning"
                     if standin else "local directory")


def _standin(spec: str) -> ModelInfo:
    from vidqa.assets.standin import build_standin  # torch and transformers: only when needed

    path = build_standin(cache_dir() / "vlm" / STANDIN_DIRNAME)
    logger.warning("hub unreachable and {} not cached: using the offline stand-in {} "
                   "(real SmolLM2-135M text, RANDOM vision — answers carry no visual meaning)",
                   SMOLVLM_ID, path)
    return ModelInfo(requested=spec, resolved=str(path), standin=True,
                     note="offline stand-in: SmolLM2-135M text + random vision encoder")


def _looks_like_path(spec: str) -> bool:
    # A hub id is exactly "owner/name"; anything else with a separator is a filesystem path.
    return spec.startswith(("/", ".", "~")) or spec.count("/") != 1 or "\\" in spec


def resolve_vlm(spec: str, revision: str = "main") -> ModelInfo:
    """The VLM for ``vlm.model``: "auto", a local directory or a hub id (checked quickly)."""
    path = Path(spec).expanduser()
    if spec != "auto" and (path.exists() or _looks_like_path(spec)):
        if not path.is_dir():
            raise ModelError(f"VLM directory {spec} not found (a hub id reads owner/name): "
                             f"fix vlm.model, or use vlm.model: auto")
        return _local_vlm(spec, path)
    repo_id = SMOLVLM_ID if spec == "auto" else spec
    online = hub_reachable()  # first: when offline, it turns HF_HUB_OFFLINE on
    if online or _hub_cached(repo_id, revision):
        note = "from the hub" if online else "from the local Hugging Face cache (offline)"
        return ModelInfo(requested=spec, resolved=repo_id, revision=revision, note=note)
    if spec == "auto":
        return _standin(spec)
    raise ModelError(f"VLM {repo_id!r} is not in the local Hugging Face cache and the hub is "
                     f"unreachable: set vlm.model to a local directory, or vlm.model: auto "
                     f"for the offline stand-in")


def prefetch_hub(info: ModelInfo) -> None:
    """Download a hub model now, so later runs work offline."""
    if info.standin or Path(info.resolved).is_dir() or not hub_reachable():
        return
    from huggingface_hub import snapshot_download

    snapshot_download(info.resolved, revision=info.revision,
                      allow_patterns=["*.json", "*.safetensors", "*.txt", "*.jinja", "*.model"])



def warn_standin(info: ModelInfo) -> None:
    """Say loudly, in the log, that the model about to run is the stand-in."""
    if not info.standin:
        return
    logger.warning("=" * 78)
    logger.warning("OFFLINE STAND-IN VLM at {}", info.resolved)
    logger.warning(STANDIN_WARNING)
    logger.warning("For real answers run where the Hugging Face hub is reachable (vlm.model: auto)")
    logger.warning("=" * 78)
