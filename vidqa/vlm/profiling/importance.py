"""Per-layer importance of a VLM for one yes/no question, measured on a few ROIs.

Metrics, per ROI and per layer (layers in :func:`~vidqa.vlm.compression.layers.find_layers`
order: vision
encoder blocks, then text decoder blocks), higher = more important:

- ``activation`` — the seed's metric: the mean over tokens of the L2 norm (over channels) of
  the block's output hidden state, ``mean_t ||h_out[t]||_2``. Tokens are the ROI's real
  tokens only: for text blocks those where ``attention_mask`` is 1 (padding left out), for
  vision blocks the patches the model itself treats as real (from ``pixel_attention_mask``),
  over every tile of the ROI. It reads the residual stream, so in the text tower it mostly
  grows with depth: a weak proxy.
- ``block_influence`` — ShortGPT: ``mean_t (1 - cos(h_in[t], h_out[t]))`` over the same
  tokens. 0 for a block that leaves its input unchanged. Same forward pass as ``activation``.
- ``task_skip`` — ``|Δ margin|`` when the block is bypassed (output := input), where
  ``margin = logit(yes) - logit(no)`` (:meth:`VisionLanguageModel.margins`). One extra
  batched forward pass per layer per batch.
- ``task_int8`` — ``|Δ margin|`` when the block's Linear modules are dynamically quantized to
  int8 (``torch.ao.quantization.quantize_dynamic`` on a copy). CPU fp32 only: elsewhere it is
  skipped and the reason recorded in ``Profile.skipped``.

Task passes do not recompute what cannot change: the traced pass records every block's
output, and the pass that alters layer i of a tower replays the recorded output of layer i-1
(layers before it are stubbed out) and, for a text layer, the recorded vision encoder output
(:mod:`~vidqa.vlm.profiling.replay`). A pass then costs only the layers from i on. The price
is memory: the recorded outputs, one hidden state per layer per ROI. On CPU the margins are
bit-identical to full passes (tested).

For the task metrics the signed changes are kept too, in ``Profile.deltas``:
``"<metric>.margin"`` (Δ margin) and ``"<metric>.p_yes"`` (Δ p_yes), each (n_rois, n_layers).

Normalisation: ``Profile.scores`` keeps the raw values. Every ROI's vector has the same length
and layer order. :meth:`Profile.normalized` scales each ROI's vector to sum 1 (a vector of
zeros stays zeros), so every ROI weighs the same in :meth:`Profile.mean` and
:meth:`Profile.ranking`. The stability statistics of Experiment 1
(:mod:`vidqa.experiments.stats`) use the raw scores: Pearson, Spearman and bottom-k sets do not
change when a row is scaled. They are not computed here: the stream profiles only what the
planner uses.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from loguru import logger
from torch import nn
from torch.nn import functional as F

from vidqa.clock import timed
from vidqa.vlm.compression.layers import (
    LayerRef,
    bypass_layer,
    find_layers,
    get_module,
    record_outputs,
    swap_module,
    trace_layers,
)
from vidqa.vlm.compression.operators import quantize_layer
from vidqa.vlm.model import VisionLanguageModel
from vidqa.vlm.profiling.replay import Replayer

TRACE_METRICS = ("activation", "block_influence")
TASK_METRICS = ("task_skip", "task_int8")
ALL_METRICS = TRACE_METRICS + TASK_METRICS


@dataclass
class Profile:
    """Layer importance of one question on a few ROIs, with their full-model answers."""

    question: str
    layers: list[LayerRef]
    scores: dict[str, np.ndarray]  # metric -> (n_rois, n_layers) raw, higher = more important
    margins: np.ndarray  # (n_rois,) full-model logit(yes) - logit(no)
    p_yes: np.ndarray  # (n_rois,) sigmoid(margins)
    crop_ids: list[int]  # track id of each row
    seconds: dict[str, float]  # wall time per group: encode, trace, task_skip, total
    deltas: dict[str, np.ndarray] = field(default_factory=dict)  # "task_skip.margin" -> signed
    passes: dict[str, int] = field(default_factory=dict)  # forward passes per metric group
    skipped: dict[str, str] = field(default_factory=dict)  # metric -> why it was not measured
    model: str = ""

    @property
    def answers(self) -> list[str]:
        return ["yes" if m > 0 else "no" for m in self.margins]

    @property
    def metrics(self) -> list[str]:
        return list(self.scores)

    def normalized(self, metric: str) -> np.ndarray:
        """Scores with each ROI's vector scaled to sum 1, (n_rois, n_layers)."""
        raw = self._scores(metric)
        sums = raw.sum(axis=1, keepdims=True)  # (n_rois, 1)
        return np.divide(raw, sums, out=np.zeros_like(raw), where=sums != 0)

    def mean(self, metric: str) -> np.ndarray:
        """Mean normalised importance per layer over the ROIs, (n_layers,)."""
        return self.normalized(metric).mean(axis=0)

    def ranking(self, metric: str) -> list[int]:
        """Layer indices (into ``layers``), least important first; ties keep layer order."""
        return np.argsort(self.mean(metric), kind="stable").tolist()

    def _scores(self, metric: str) -> np.ndarray:
        if metric not in self.scores:
            why = f" ({self.skipped[metric]})" if metric in self.skipped else ""
            raise KeyError(f"metric {metric!r} was not profiled{why}; this profile has "
                           f"{', '.join(self.scores)}")
        return self.scores[metric]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe; :meth:`from_dict` gives back an equal profile (float64 round-trips)."""
        return {
            "question": self.question, "model": self.model,
            "layers": [{"path": ref.path, "tower": ref.tower, "index": ref.index}
                       for ref in self.layers],
            "roi_ids": [int(r) for r in self.crop_ids],
            "margins": _floats(self.margins), "p_yes": _floats(self.p_yes),
            "scores": {m: _floats(v) for m, v in self.scores.items()},
            "deltas": {m: _floats(v) for m, v in self.deltas.items()},
            "seconds": dict(self.seconds), "passes": dict(self.passes),
            "skipped": dict(self.skipped),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Profile:
        n_layers = len(data["layers"])

        def matrix(values: list) -> np.ndarray:
            return np.asarray(values, np.float64).reshape(-1, n_layers)  # (n_rois, n_layers)

        return cls(
            question=data["question"], model=data.get("model", ""),
            layers=[LayerRef(**layer) for layer in data["layers"]],
            scores={m: matrix(v) for m, v in data["scores"].items()},
            margins=np.asarray(data["margins"], np.float64),
            p_yes=np.asarray(data["p_yes"], np.float64), crop_ids=list(data["roi_ids"]),
            seconds=dict(data["seconds"]),
            deltas={m: matrix(v) for m, v in data["deltas"].items()},
            passes=dict(data.get("passes", {})), skipped=dict(data.get("skipped", {})),
        )


def _floats(array: np.ndarray) -> list:
    return np.asarray(array, np.float64).tolist()


# --------------------------------------------------------------------------------------------
# Profiling


def profile_crops(vlm: VisionLanguageModel, images: Sequence[np.ndarray], question: str,
                 track_ids: Sequence[int] | None = None,
                 metrics: Sequence[str] = TRACE_METRICS,
                 task_impact: Sequence[str] | bool = ("task_skip",), batch_size: int = 8,
                 replay: bool = True) -> Profile:
    """Answer ``question`` on every crop with the full model and measure layer importance.

    ``metrics``: any of ``activation``, ``block_influence`` (one traced forward per batch,
    which also gives the full-model answers). ``task_impact``: any of ``task_skip``,
    ``task_int8`` (True = both, False = none) — one forward per layer per batch each.
    ``replay``: reuse the traced
    pass's outputs in task passes (see the module docstring); False runs every pass in full.
    """
    task = _task_metrics(task_impact)
    _check_metrics(metrics, task, len(images))
    track_ids = list(range(len(images))) if track_ids is None else [int(t) for t in track_ids]
    layers = find_layers(vlm.model)
    seconds: dict[str, float] = {}
    with timed(seconds, "encode", vlm.device):
        batches = [vlm.encode(images[i:i + batch_size], question)
                   for i in range(0, len(images), batch_size)]
    replayer = Replayer(vlm.model, layers) if task and replay else None
    with timed(seconds, "trace", vlm.device):
        margins, traced = _trace(vlm, batches, layers, replayer)
    profile = Profile(question=question, layers=layers,
                      scores={m: traced[m] for m in metrics}, margins=margins,
                      p_yes=_sigmoid(margins), crop_ids=track_ids, seconds=seconds,
                      passes={"trace": len(batches)}, model=vlm.info.name)
    for metric in task:
        _add_task_metric(profile, vlm, batches, metric, replayer)
    seconds["total"] = sum(seconds.values())
    _log(profile)
    return profile


def _add_task_metric(profile: Profile, vlm: VisionLanguageModel, batches: list[Any],
                     metric: str, replayer: Replayer | None) -> None:
    """Measure ``metric`` into ``profile`` (scores, signed deltas, cost), or record why not."""
    reason = _unavailable(vlm, metric)
    if reason:
        profile.skipped[metric] = reason
        logger.info("profiling: {} skipped: {}", metric, reason)
        return
    margins = profile.margins
    with timed(profile.seconds, metric, vlm.device):
        delta = _task_impact(vlm, batches, profile.layers, metric, margins, replayer)
    profile.scores[metric] = np.abs(delta)  # (n_rois, n_layers)
    profile.deltas[f"{metric}.margin"] = delta
    profile.deltas[f"{metric}.p_yes"] = _sigmoid(margins[:, None] + delta) - \
        _sigmoid(margins)[:, None]
    profile.passes[metric] = len(batches) * len(profile.layers)


def _task_metrics(task_impact: Sequence[str] | bool) -> tuple[str, ...]:
    if task_impact is True:
        return TASK_METRICS
    if task_impact is False:
        return ()
    return tuple(dict.fromkeys(task_impact))


def _check_metrics(metrics: Sequence[str], task: Sequence[str], n_images: int) -> None:
    bad = [m for m in metrics if m not in TRACE_METRICS] + [t for t in task
                                                           if t not in TASK_METRICS]
    if bad:
        raise ValueError(f"unknown metric(s) {bad}: metrics are {TRACE_METRICS}, task impact "
                         f"is {TASK_METRICS}")
    if n_images == 0:
        raise ValueError("profile_rois needs at least one crop")


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-np.asarray(x, np.float64)))


def _log(profile: Profile) -> None:
    timing = ", ".join(f"{k} {v:.2f} s" for k, v in profile.seconds.items())
    logger.info("profiled {} ROIs x {} layers for {!r}: {}", len(profile.crop_ids),
                len(profile.layers), profile.question, timing)


# --------------------------------------------------------------------------------------------
# Activation and block influence: one traced forward per batch


def token_stride(tokens: int, sampled: int | None) -> int:
    """Every how many tokens a hook reads so that about ``sampled`` of ``tokens`` are read
    (None: every token). The same rule picks the tokens and their mask, so they line up."""
    return 1 if not sampled else max(1, tokens // sampled)


def _token_stats(path: str, inputs: torch.Tensor, output: torch.Tensor,
                 sampled: int | None = None) -> torch.Tensor:
    """Per token: the output's L2 norm and 1 - cos(input, output), (N, T', 2) float32, over
    every ``token_stride``-th token (all of them by default)."""
    stride = token_stride(output.shape[1], sampled)
    h_in, h_out = inputs[:, ::stride].float(), output[:, ::stride].float()  # (N, T', C)
    norm = h_out.norm(dim=-1)  # (N, T)
    influence = 1 - F.cosine_similarity(h_in, h_out, dim=-1)  # (N, T)
    return torch.stack([norm, influence], dim=-1)  # (N, T, 2)


def _trace(vlm: VisionLanguageModel, batches: list[Any], layers: list[LayerRef],
           replayer: Replayer | None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Full-model margins (n_rois,) and activation / block influence (n_rois, n_layers)."""
    margins, per_batch = [], []
    for inputs in batches:
        with ExitStack() as stack:
            stats = stack.enter_context(
                trace_layers(vlm.model, [layer.path for layer in layers], _token_stats))
            outputs = stack.enter_context(
                record_outputs(vlm.model, replayer.paths if replayer else []))
            margins.append(vlm.margins(inputs).float().cpu())
        if replayer:
            replayer.recorded.append(outputs)
        per_batch.append(_per_crop(stats, inputs, layers, vlm))  # (B, n_layers, 2)
    both = torch.cat(per_batch).double().numpy()  # (n_rois, n_layers, 2)
    values = {"activation": both[..., 0], "block_influence": both[..., 1]}
    return torch.cat(margins).double().numpy(), values


def _per_crop(stats: dict[str, torch.Tensor], inputs: Any, layers: list[LayerRef],
             vlm: VisionLanguageModel, sampled: int | None = None) -> torch.Tensor:
    """Mean of each layer's token stats over each ROI's real tokens, (B, n_layers, 2); with
    ``sampled``, over the tokens :func:`_token_stats` read with the same ``sampled``."""
    batch = inputs["input_ids"].shape[0]
    text_mask = inputs["attention_mask"].float()  # (B, T)
    text_owner = torch.arange(batch, device=text_mask.device)
    vision_owner, vision_mask = vision_tokens(inputs, vlm.model.config.vision_config.patch_size)
    columns = []
    for layer in layers:
        tokens = stats[layer.path]  # (N, T, 2)
        owner, mask = (text_owner, text_mask) if layer.tower == "text" else \
            (vision_owner, vision_mask)
        mask = mask[:, ::token_stride(mask.shape[1], sampled)]  # (N, T')
        if tokens.shape[:2] != mask.shape:
            raise RuntimeError(f"{layer.path}: hidden states {tuple(tokens.shape[:2])} do not "
                               f"match the token mask {tuple(mask.shape)} derived from the inputs")
        columns.append(crop_means(tokens, mask.to(tokens.device), owner.to(tokens.device),
                                    batch))
    return torch.stack(columns, dim=1).cpu()  # (B, n_layers, 2)


def crop_means(tokens: torch.Tensor, mask: torch.Tensor, owner: torch.Tensor,
                 batch: int) -> torch.Tensor:
    """Mean over the masked tokens of all rows owned by each ROI, (B, 2)."""
    sums = (tokens * mask[..., None]).sum(dim=1)  # (N, 2)
    counts = mask.sum(dim=1)  # (N,)
    crop_sums = torch.zeros(batch, 2, device=tokens.device).index_add_(0, owner, sums)
    crop_counts = torch.zeros(batch, device=tokens.device).index_add_(0, owner, counts)
    return crop_sums / crop_counts.clamp(min=1)[:, None]


def vision_tokens(inputs: Any, patch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Which ROI each vision-encoder image belongs to, (N,), and its real patches, (N, P).

    Mirrors Idefics3Model.get_image_features: images that are all zeros are padding and never
    reach the encoder; a patch is real when any of its pixels is (pixel_attention_mask).
    With image splitting one ROI owns several tiles; its vision metrics average all of them.
    """
    pixels = inputs["pixel_values"]  # (B, n_images, C, H, W)
    batch, n_images = pixels.shape[:2]
    real = (pixels != 0).flatten(2).any(dim=2)  # (B, n_images)
    if not real.any():  # the model then keeps the first image
        real[:, 0] = True
    owner = torch.arange(batch, device=pixels.device)[:, None].expand(batch, n_images)[real]
    pixel_mask = inputs.get("pixel_attention_mask")
    if pixel_mask is None:
        pixel_mask = torch.ones(pixels.shape[:2] + pixels.shape[3:], dtype=torch.bool,
                                device=pixels.device)  # (B, n_images, H, W)
    pixel_mask = pixel_mask[real]  # (N, H, W)
    patches = pixel_mask.unfold(1, patch_size, patch_size).unfold(2, patch_size, patch_size)
    patch_mask = patches.flatten(3).any(dim=3)  # (N, H/ps, W/ps)
    return owner, patch_mask.flatten(1).float()  # (N,), (N, P)


# --------------------------------------------------------------------------------------------
# Task impact: one forward per layer per batch


def _unavailable(vlm: VisionLanguageModel, metric: str) -> str:
    """Why ``metric`` cannot be measured on this model, or ""."""
    if metric != "task_int8":
        return ""
    if vlm.device.type != "cpu":
        return (f"torch.ao quantize_dynamic has no {vlm.device.type} kernels: int8 impact is "
                f"measured on CPU only")
    if vlm.dtype != torch.float32:
        return f"quantize_dynamic needs float32 Linear layers, the model is {vlm.dtype}"
    engines = torch.backends.quantized.supported_engines
    if "fbgemm" not in engines and "x86" not in engines:
        return "this torch build has no x86/fbgemm quantized engine"
    return ""


def _task_impact(vlm: VisionLanguageModel, batches: list[Any], layers: list[LayerRef],
                 metric: str, baseline: np.ndarray, replayer: Replayer | None) -> np.ndarray:
    """Signed Δ margin of every ROI when each layer in turn is altered, (n_rois, n_layers).

    ``baseline``: the full model's margins from the traced pass (its hooks only read, so they
    are the margins of the same batches without hooks).
    """
    columns = []
    for layer in layers:
        margins = []
        with _altered(vlm.model, layer.path, metric):
            for b, inputs in enumerate(batches):
                with replayer.before(layer, b) if replayer else nullcontext():
                    margins.append(vlm.margins(inputs).float().cpu())
        columns.append(torch.cat(margins).double().numpy() - baseline)
    return np.stack(columns, axis=1)


@contextmanager
def _altered(model: nn.Module, path: str, metric: str) -> Iterator[None]:
    """The layer at ``path`` bypassed (task_skip) or int8-quantized (task_int8), then restored."""
    if metric == "task_skip":
        with bypass_layer(model, path):
            yield
        return
    with swap_module(model, path, quantize_layer(get_module(model, path), "ao_dynamic").eval()):
        yield

