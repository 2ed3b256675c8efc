"""Single-tile model inputs built on the model's device, without the Hugging Face processor.

With image splitting off, ``Idefics3ImageProcessor`` resizes a crop so its longest edge is
``size.longest_edge`` (keeping the aspect ratio, even sides), then squashes it to the square
tile ``max_image_size.longest_edge``, rescales to [0, 1] and normalises; the prompt's token ids
are the same for every crop of a question. :class:`TileEncoder` does the same in torch on the
model's device (bicubic with antialiasing, which the processor itself falls back to on CUDA)
and tokenises each question once, so a batch costs a copy to the device and a few kernels
instead of the processor's per-crop Python. The processor stays the reference (a test checks
the two agree within a tolerance) and the path for image splitting.

A smaller tile is the vision token budget as a compression axis (:mod:`vidqa.vlm.compression`):
Idefics3's vision embeddings bucket position ids over the full tile's patch grid, so a 384 or
256 px tile runs the vision tower over 576 or 256 patches instead of 1024, and the connector's
pixel shuffle turns them into 36 or 16 image tokens instead of 64. The prompt then holds that
many ``<image>`` tokens (:meth:`TileEncoder.image_tokens`), built once per question and tile.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch.nn import functional as F
from transformers import BatchFeature

MAX_IMAGE_SIZE = 4096  # the processor's absolute cap on a resized side


def resized_size(height: int, width: int, longest: int) -> tuple[int, int]:
    """The processor's first resize: longest edge to ``longest``, the other side even."""
    if width >= height:
        new_w, new_h = longest, int(longest / (width / height))
        new_h += new_h % 2
    else:
        new_h, new_w = longest, int(longest * (width / height))
        new_w += new_w % 2
    scale = min(1.0, MAX_IMAGE_SIZE / max(new_h, new_w))
    return max(int(new_h * scale), 1), max(int(new_w * scale), 1)


class TileEncoder:
    """Batched single-tile inputs for one processor, on ``device``, in ``dtype``."""

    def __init__(self, processor, device: torch.device, dtype: torch.dtype) -> None:
        images = processor.image_processor
        self.processor = processor
        self.device = device
        self.dtype = dtype
        self.longest = int(images.size["longest_edge"])
        self.tile = int(images.max_image_size["longest_edge"])
        self.scale = float(images.rescale_factor)
        # Image tokens of a full tile, and the tile side that makes one image token (patch x
        # pixel-shuffle scale: 64 px for SmolVLM); a tile must be a multiple of it.
        self.tokens = int(processor.image_seq_len)
        self.unit = self.tile // max(1, math.isqrt(self.tokens))
        self.mean = torch.tensor(images.image_mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(images.image_std, device=device).view(1, 3, 1, 1)
        self._prompts: dict[tuple[str, int], BatchFeature] = {}

    def encode(self, images: Sequence[np.ndarray], prompt: str, tile: int | None = None
               ) -> BatchFeature:
        """Inputs for BGR crops, one prompt each: ``input_ids``/``attention_mask`` (B, T),
        ``pixel_values`` (B, 1, 3, tile, tile), ``pixel_attention_mask`` (B, 1, tile, tile).
        ``tile``: a smaller square tile than the model's (a multiple of :attr:`unit`)."""
        tile = self.check_tile(tile)
        text = self._prompt(prompt, tile)
        batch = len(images)
        pixels = self.pixels(images, tile)  # (B, 3, tile, tile)
        return BatchFeature({
            "input_ids": text["input_ids"].expand(batch, -1),
            "attention_mask": text["attention_mask"].expand(batch, -1),
            "pixel_values": pixels[:, None].to(self.dtype),  # (B, 1, 3, tile, tile)
            "pixel_attention_mask": torch.ones(batch, 1, tile, tile, dtype=torch.bool,
                                               device=self.device),
        })

    def check_tile(self, tile: int | None) -> int:
        """``tile``, or the model's own when None; a ValueError says which sizes work."""
        if tile is None:
            return self.tile
        if tile <= 0 or tile > self.tile or tile % self.unit:
            raise ValueError(f"tile {tile} px: expected a multiple of {self.unit} px (patch x "
                             f"pixel-shuffle scale) up to the model's {self.tile} px, e.g. "
                             f"{', '.join(str(t) for t in self.sizes()[:4])}")
        return tile

    def sizes(self) -> list[int]:
        """Every tile size this model takes, largest first."""
        return list(range(self.tile, 0, -self.unit))

    def image_tokens(self, tile: int) -> int:
        """Image tokens of one ``tile`` after the connector: ``(tile / unit)^2``."""
        return (tile // self.unit) ** 2

    def pixels(self, images: Sequence[np.ndarray], tile: int | None = None) -> torch.Tensor:
        """Resized, rescaled and normalised tiles, (B, 3, tile, tile) float32."""
        tile = tile or self.tile
        tiles = [self._tile(chw, tile) for chw in self._upload(images)]
        return (torch.stack(tiles) * self.scale - self.mean) / self.std

    def _upload(self, images: Sequence[np.ndarray]) -> list[torch.Tensor]:
        """The BGR crops as RGB (1, 3, h, w) float tensors on the device, sent in one copy
        (from pinned memory on CUDA) rather than one per crop."""
        host = torch.empty(sum(image.size for image in images), dtype=torch.uint8,
                           pin_memory=self.device.type == "cuda")
        flat, offset = host.numpy(), 0
        for image in images:
            flat[offset:offset + image.size].reshape(image.shape)[:] = image[:, :, ::-1]
            offset += image.size
        sent, offset, crops = host.to(self.device, non_blocking=True), 0, []
        for image in images:
            crop = sent[offset:offset + image.size].view(image.shape)  # (h, w, 3) RGB
            crops.append(crop.permute(2, 0, 1)[None].float())
            offset += image.size
        return crops

    def _tile(self, chw: torch.Tensor, tile: int) -> torch.Tensor:
        size = resized_size(chw.shape[2], chw.shape[3], self.longest * tile // self.tile)
        for target in (size, (tile, tile)):
            chw = F.interpolate(chw, size=target, mode="bicubic", antialias=True,
                                align_corners=False).clamp_(0, 255).round_()  # as uint8 would
        return chw[0]

    def prompt_ids(self, prompt: str, tile: int | None = None) -> torch.Tensor:
        """The prompt's token ids with the image placeholders expanded, (1, T)."""
        return self._prompt(prompt, self.check_tile(tile))["input_ids"]

    def _prompt(self, prompt: str, tile: int) -> BatchFeature:
        """The prompt's token ids with one ``<image>`` per image token of ``tile``,
        tokenised once per prompt and tile."""
        if (prompt, tile) not in self._prompts:
            blank = np.zeros((self.tile, self.tile, 3), np.uint8)
            # The processor's own attribute, set for this call: transformers 5.24 takes an
            # ``image_seq_len`` argument and ignores it when expanding the placeholder.
            self.processor.image_seq_len = self.image_tokens(tile)
            try:
                inputs = self.processor(text=[prompt], images=[[blank]], return_tensors="pt",
                                        do_image_splitting=False)
            finally:
                self.processor.image_seq_len = self.tokens
            self._prompts[prompt, tile] = BatchFeature({
                "input_ids": inputs["input_ids"].to(self.device),
                "attention_mask": inputs["attention_mask"].to(self.device)})
        return self._prompts[prompt, tile]
