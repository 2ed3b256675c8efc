"""SmolVLM (Idefics3) behind one small interface: encode crops, score yes/no, generate text.

A yes/no question is answered from ONE forward pass: the next-token logits after
"Assistant:" are read at the answer words ("Yes"/"No" and their spellings), and
``margin = logsumexp(logit[yes]) - logsumexp(logit[no])`` gives ``p_yes = sigmoid(margin)``.
Profiling and compression work on :meth:`VisionLanguageModel.margins`, the one function that
maps prepared inputs to that number.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from loguru import logger
from transformers import AutoProcessor, BatchFeature, Idefics3ForConditionalGeneration

from vidqa.assets.types import ModelInfo
from vidqa.clock import synchronize
from vidqa.errors import ModelError
from vidqa.vlm.preprocess import TileEncoder

YES_WORDS = ("Yes", " Yes", "yes", " yes")
NO_WORDS = ("No", " No", "no", " no")


@dataclass(frozen=True)
class YesNo:
    p_yes: float
    margin: float  # logit(yes) - logit(no)

    @property
    def answer(self) -> str:
        return "yes" if self.margin > 0 else "no"


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} requested but CUDA is not available: "
                         f"set vlm.device: cpu (or auto)")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, dtype)


def _answer_token_ids(tokenizer, words: Sequence[str]) -> list[int]:
    """Token ids of the spellings that are one token; else the first token of each spelling."""
    encoded = [tokenizer.encode(word, add_special_tokens=False) for word in words]
    whole = [tokens[0] for tokens in encoded if len(tokens) == 1]
    ids = whole or [tokens[0] for tokens in encoded if tokens]
    return list(dict.fromkeys(ids))


class VisionLanguageModel:
    """A loaded Idefics3/SmolVLM model and its processor, ready to answer questions on crops."""

    def __init__(self, model: Idefics3ForConditionalGeneration, processor, info: ModelInfo,
                 image_splitting: bool = False) -> None:
        self.model = model.eval()
        self.processor = processor
        self.info = info
        self.image_splitting = image_splitting
        self.tiles = TileEncoder(processor, self.device, self.dtype)
        self.encode_seconds = 0.0  # preparing inputs (host side), for the service's accounting
        self.graphs: Any = None  # the full model's CUDA graphs, once a stage captures them
        tokenizer = processor.tokenizer
        self.yes_ids = _answer_token_ids(tokenizer, YES_WORDS)
        self.no_ids = _answer_token_ids(tokenizer, NO_WORDS)
        self._answer_ids: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        overlap = set(self.yes_ids) & set(self.no_ids)
        if not self.yes_ids or not self.no_ids or overlap:
            raise ModelError(f"{info.resolved}: cannot find distinct Yes/No tokens in the "
                             f"tokenizer (yes={self.yes_ids}, no={self.no_ids})")

    @classmethod
    def load(cls, info: ModelInfo, device: str = "auto", dtype: str = "auto",
             image_splitting: bool = False, local_files_only: bool = False
             ) -> VisionLanguageModel:
        """Load through ``from_pretrained``; a failure is a :class:`ModelError` with the fix."""
        dev = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, dev)
        kwargs = {"revision": info.revision, "local_files_only": local_files_only}
        try:
            processor = AutoProcessor.from_pretrained(info.resolved, **kwargs)
            model = Idefics3ForConditionalGeneration.from_pretrained(
                info.resolved, dtype=torch_dtype, use_safetensors=True, **kwargs)
        except (OSError, ValueError) as err:
            where = "directory" if Path(info.resolved).exists() else "hub id"
            raise ModelError(
                f"cannot load VLM {info.resolved!r} ({where}): {str(err).splitlines()[0]} — "
                f"check vlm.model, or run `vidqa assets` to build the offline stand-in"
            ) from None
        logger.info("VLM {} on {} {}{}", info.name, dev, str(torch_dtype).replace("torch.", ""),
                    f" — {info.note}" if info.note else "")
        return cls(model.to(dev), processor, info, image_splitting)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def prompt(self, question: str) -> str:
        messages = [{"role": "user", "content": [{"type": "image"},
                                                 {"type": "text", "text": question}]}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True)

    def encode(self, images: Sequence[np.ndarray], question: str,
               padding_side: str = "right", reference: bool = False,
               tile: int | None = None) -> BatchFeature:
        """Model inputs for BGR crops, one prompt per crop, on the model's device.

        One tile per crop is built on the device (:class:`~vidqa.vlm.preprocess.TileEncoder`);
        with image splitting, or ``reference=True``, the Hugging Face processor builds them.
        ``tile``: a smaller tile (fewer image tokens in the prompt), single-tile only.
        """
        start = time.perf_counter()
        try:
            if tile is not None or not (self.image_splitting or reference):
                return self.tiles.encode(images, self.prompt(question), tile)
            return self._processor_inputs(images, question, padding_side)
        finally:
            self.encode_seconds += time.perf_counter() - start

    def _processor_inputs(self, images: Sequence[np.ndarray], question: str,
                          padding_side: str) -> BatchFeature:
        rgb = [np.ascontiguousarray(image[:, :, ::-1]) for image in images]
        self.processor.tokenizer.padding_side = padding_side
        inputs = self.processor(text=[self.prompt(question)] * len(rgb),
                                images=[[im] for im in rgb],
                                return_tensors="pt", padding=True,
                                do_image_splitting=self.image_splitting)
        inputs = inputs.to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        return inputs

    @torch.inference_mode()
    def image_features(self, inputs: BatchFeature, body: Any = None) -> torch.Tensor:
        """Vision encoder + connector output of prepared inputs: one row of C per image token
        of the batch, in order (the shape differs between transformers releases; only the
        order and the count matter to the merge).

        What ``last_logits(inputs, features=...)`` takes instead of running the vision tower:
        several questions about the same crops share one vision pass.
        """
        body = body if body is not None else self.model.model
        out = body.get_image_features(inputs["pixel_values"], inputs.get("pixel_attention_mask"))
        pooled = getattr(out, "pooler_output", out)  # newer transformers: a model output
        if isinstance(pooled, (list, tuple)):
            pooled = torch.cat(list(pooled), dim=0)  # (image tokens, C)
        return pooled

    @torch.inference_mode()
    def last_logits(self, inputs: BatchFeature, features: torch.Tensor | None = None,
                    body: Callable[..., Any] | None = None) -> torch.Tensor:
        """Next-token logits after each prompt, (B, V) float32. Inputs must be right-padded.

        ``features``: this batch's :meth:`image_features`, so the vision tower does not run.
        ``body``: what runs in place of ``model.model`` (a plan's compiled module).
        """
        body = body if body is not None else self.model.model
        if features is None:
            hidden = body(**inputs).last_hidden_state  # (B, T, C)
        else:
            hidden = body(inputs_embeds=self._merged(inputs, features),
                          attention_mask=inputs["attention_mask"]).last_hidden_state  # (B, T, C)
        last = inputs["attention_mask"].sum(dim=1) - 1  # (B,) index of each prompt's last token
        hidden = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # (B, C)
        return self.model.lm_head(hidden).float()  # (B, V)

    def _merged(self, inputs: BatchFeature, features: torch.Tensor) -> torch.Tensor:
        """Token embeddings with the image tokens replaced by ``features``, (B, T, C): what
        Idefics3Model.forward builds before its text model, done here so it works with every
        transformers release (the name of the features argument changed)."""
        inner = self.model.model
        embeds = inner.text_model.get_input_embeddings()(inputs["input_ids"])  # (B, T, C)
        features = features.to(dtype=embeds.dtype, device=embeds.device)
        return inner.inputs_merger(input_ids=inputs["input_ids"], inputs_embeds=embeds,
                                   image_hidden_states=features)

    def margins(self, inputs: BatchFeature, features: torch.Tensor | None = None,
                body: Callable[..., Any] | None = None) -> torch.Tensor:
        """logsumexp(logit[yes words]) - logsumexp(logit[no words]) per crop, (B,)."""
        if hasattr(body, "margins"):  # the whole pass is the body's (vidqa.vlm.graphs)
            return body.margins(inputs, features)
        return self.yes_no(self.last_logits(inputs, features, body))

    def yes_no(self, logits: torch.Tensor) -> torch.Tensor:
        """Next-token logits (B, V) → margins (B,)."""
        yes, no = self._answer_index(logits.device)
        return torch.logsumexp(logits[:, yes], dim=1) - torch.logsumexp(logits[:, no], dim=1)

    def _answer_index(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The yes and no token ids as tensors on ``device``, made once: indexing with a list
        copies it from the host at every call, which a CUDA graph cannot capture."""
        if device not in self._answer_ids:
            self._answer_ids[device] = (torch.tensor(self.yes_ids, device=device),
                                        torch.tensor(self.no_ids, device=device))
        return self._answer_ids[device]

    def answer_yes_no(self, images: Sequence[np.ndarray], question: str) -> list[YesNo]:
        return to_yes_no(self.margins(self.encode(images, question)))

    def prompt_inputs(self, question: str, like: BatchFeature) -> BatchFeature:
        """Inputs for ``question`` on the crops already prepared in ``like`` (another
        question's inputs): its pixels are reused and only the prompt is tokenized.

        Without image splitting every crop is one tile, so every row has the same prompt;
        with it, rows differ and the crops are prepared again.
        """
        if self.image_splitting:
            raise ValueError("prompt_inputs needs image_splitting off: rows differ otherwise")
        tile = like["pixel_values"].shape[-1]  # the tile of ``like``'s pixels
        inputs = self.text_inputs(question, like["input_ids"].shape[0], tile)
        for key in ("pixel_values", "pixel_attention_mask"):
            if key in like:
                inputs[key] = like[key]
        return inputs

    def text_inputs(self, question: str, rows: int, tile: int | None = None) -> BatchFeature:
        """The prompt of ``question`` for ``rows`` crops of one ``tile`` each (None: the
        model's whole tile), without pixels: what the text model reads beside the crops' image
        features (stored ones, for a question asked later)."""
        ids = self._prompt_ids(question, tile).to(self.device)  # (1, T)
        return BatchFeature({"input_ids": ids.expand(rows, -1).clone(),
                             "attention_mask": torch.ones_like(ids).expand(rows, -1).clone()})

    def _prompt_ids(self, question: str, tile: int | None = None) -> torch.Tensor:
        """The question's prompt ids for ``tile``, (1, T), tokenised once (by the tile
        encoder)."""
        return self.tiles.prompt_ids(self.prompt(question), tile)

    @torch.inference_mode()
    def answer_text(self, images: Sequence[np.ndarray], question: str,
                    max_new_tokens: int = 16) -> list[str]:
        """Free-form answers with ``generate`` (greedy, left-padded batch)."""
        inputs = self.encode(images, question, padding_side="left")
        tokenizer = self.processor.tokenizer
        output = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id)
        new_tokens = output[:, inputs["input_ids"].shape[1]:]  # (B, new)
        texts = self.processor.batch_decode(new_tokens, skip_special_tokens=True)
        return [text.strip() for text in texts]

    def weight_bytes(self) -> int:
        """Bytes held by parameters and buffers (quantized modules count their packed weights)."""
        return module_bytes(self.model)


def to_yes_no(margins: torch.Tensor) -> list[YesNo]:
    """One :class:`YesNo` per margin."""
    return [YesNo(p_yes=float(torch.sigmoid(m)), margin=float(m)) for m in margins.float().cpu()]


def timed_margins(vlm: VisionLanguageModel, batches: Sequence[BatchFeature], body: Any = None
                  ) -> tuple[np.ndarray, float]:
    """Margins of every prepared batch, (N,), and the wall seconds of the whole pass (through
    ``body`` when given, see :meth:`VisionLanguageModel.margins`).

    The one timed forward pass that the planner, the experiments and the benchmarks share: the
    device is synchronised on both sides, so GPU time is counted, not the launch queue.
    """
    synchronize(vlm.device)
    start = time.perf_counter()
    margins = [vlm.margins(inputs, body=body) for inputs in batches]
    synchronize(vlm.device)
    seconds = time.perf_counter() - start
    return torch.cat(margins).float().cpu().numpy(), seconds


def module_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's parameters, buffers and packed (torch.ao) int8 weights."""
    total = sum(t.numel() * t.element_size() for t in module.parameters())
    total += sum(t.numel() * t.element_size() for t in module.buffers())
    for sub in module.modules():
        # Count packed weights once, at the quantized Linear (its LinearPackedParams child
        # holds the same ScriptObject).
        if hasattr(sub, "_packed_params") and hasattr(sub, "weight") and callable(sub.weight):
            weight, bias = sub._weight_bias()
            total += weight.numel() * weight.element_size()
            total += 0 if bias is None else bias.numel() * bias.element_size()
    return total
