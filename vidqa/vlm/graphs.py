"""CUDA graphs of the full model's yes/no pass, one per batch-size bucket.

On a GPU, a small VLM's forward pass is thousands of kernel launches from one Python thread:
at the batch sizes a service sees, launching them takes longer than running them, and in the
model worker every launch also competes for the interpreter lock with the threads that relay
crops and answers. A CUDA graph records the launches once and replays them in one call.

A graph has fixed shapes, so a batch runs in the smallest bucket that holds it (powers of two
up to ``vlm.batch_size``) and the bucket's spare rows repeat the batch's first row. Rows never
meet in either tower (attention is within a crop's tokens), so the spare rows cannot change the
real ones. Two kinds of graph, as in :class:`~vidqa.vlm.answerers.SharedVision`:

- per bucket, the vision tower and connector: whole tiles → image features, (B, K, C);
- per bucket and prompt length, the text model: prompt ids and image features → margins, (B,).

The graphs stand in for ``model.model`` as the full model's ``body`` (``get_image_features`` and
``margins``). They hold the weights as they were captured, so nothing that swaps layers (the
adaptive answerer, profiling) may use them. Inputs must be the tile encoder's: one whole tile per
crop (no image splitting) and every row of a batch the same prompt.

A compression plan gets graphs of its own (:class:`PlanGraphs`): captured from the plan's module
(:func:`~vidqa.vlm.compression.compiled.plan_module`: the model's containers with the plan's
layers in their slots, sharing every weight) at the plan's tile, per bucket as they are needed.
Switching plans is then a lookup, the full model's graphs are never recaptured, and adaptive
compression on CUDA runs graphs, not eager launches (only profiling runs eager: its hooks read
every layer). Each plan's graphs hold their own memory pool, so at most
:data:`PLAN_GRAPH_SETS` plans keep graphs, the least recently used dropped first (counted).
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from loguru import logger

if TYPE_CHECKING:
    from vidqa.vlm.model import VisionLanguageModel

WARMUP_PASSES = 2  # eager passes on a side stream before capture (lazy inits, autotuning)
PLAN_GRAPH_SETS = 4  # plans whose graphs are kept (questions x re-plans rarely need more)


def buckets(batch_size: int) -> tuple[int, ...]:
    """The batch sizes graphs are captured for: powers of two below ``batch_size``, and it."""
    sizes = [1 << i for i in range(batch_size.bit_length()) if 1 << i < batch_size]
    return (*sizes, batch_size)


def tile_positions(vlm: VisionLanguageModel, tile: int) -> torch.Tensor:
    """The position ids the vision embeddings give the patches of a whole tile, (1, P): read
    from one eager pass, because the formula (and its rounding) differs between transformers
    releases, and its masked assignment reads the device, which a capture cannot."""
    vision = vlm.model.model.vision_model
    pixels = torch.zeros(1, 3, tile, tile, dtype=vlm.dtype, device=vlm.device)
    seen: list[torch.Tensor] = []
    hook = vision.embeddings.position_embedding.register_forward_pre_hook(
        lambda module, args: seen.append(args[0]))
    try:
        with torch.inference_mode():
            vision(pixel_values=pixels)
    finally:
        hook.remove()
    return seen[0].clone()


def vision_features(vlm: VisionLanguageModel, pixels: torch.Tensor,
                    positions: torch.Tensor, inner: Any = None) -> torch.Tensor:
    """Vision tower + connector on whole tiles, (B, 3, S, S) → (B, K, C), as the vision
    transformer runs them when no patch is padding (``positions``: :func:`tile_positions`);
    ``inner``: what stands in for ``model.model`` (a plan's module)."""
    inner = inner if inner is not None else vlm.model.model
    vision = inner.vision_model
    embeddings = vision.embeddings
    hidden = embeddings.patch_embedding(pixels).flatten(2).transpose(1, 2)  # (B, P, D)
    hidden = hidden + embeddings.position_embedding(positions)  # (1, P, D) broadcast
    hidden = vision.encoder(inputs_embeds=hidden, attention_mask=None).last_hidden_state
    hidden = vision.post_layernorm(hidden)  # (B, P, D); no mask: every patch is real
    return inner.connector(hidden)  # (B, K, C)


def text_margins(vlm: VisionLanguageModel, input_ids: torch.Tensor,
                 attention_mask: torch.Tensor, features: torch.Tensor, inner: Any = None
                 ) -> torch.Tensor:
    """Yes/no margins from right-padded prompt ids (B, T) and each row's image features
    (B, K, C), as :meth:`VisionLanguageModel.margins` computes them.

    The k-th image token of a row takes the row's k-th feature by a gather rather than
    Idefics3's ``masked_scatter``, whose size check reads the device: no size here depends on
    the data, so the pass can be captured. ``inner``: as in :func:`vision_features`.
    """
    inner = inner if inner is not None else vlm.model.model
    embeds = inner.text_model.get_input_embeddings()(input_ids)  # (B, T, C)
    image = input_ids == inner.config.image_token_id  # (B, T)
    order = (image.cumsum(dim=1) - 1).clamp(min=0)  # (B, T) the feature each image token takes
    picked = features.to(embeds.dtype).gather(
        1, order[..., None].expand(-1, -1, embeds.shape[-1]))  # (B, T, C)
    embeds = torch.where(image[..., None], picked, embeds)
    hidden = inner.text_model(inputs_embeds=embeds,
                              attention_mask=attention_mask).last_hidden_state  # (B, T, C)
    last = attention_mask.sum(dim=1) - 1  # (B,) each prompt's last token
    hidden = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # (B, C)
    return vlm.yes_no(vlm.model.lm_head(hidden).float())  # (B,)


class _Graph:
    """One captured pass: its inputs are static buffers that every call copies into."""

    def __init__(self, run: Callable[..., torch.Tensor], values: Sequence[torch.Tensor],
                 size: int, pool: Any) -> None:
        self.buffers = [torch.empty((size, *value.shape[1:]), dtype=value.dtype,
                                    device=value.device) for value in values]
        self._fill(values)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_PASSES):
                run(*self.buffers)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool):
            self.output = run(*self.buffers)

    def __call__(self, values: Sequence[torch.Tensor]) -> torch.Tensor:
        """The output's rows of ``values`` (copied: the next replay overwrites the graph's)."""
        self._fill(values)
        self.graph.replay()
        return self.output[:values[0].shape[0]].clone()

    def _fill(self, values: Sequence[torch.Tensor]) -> None:
        rows = values[0].shape[0]
        for buffer, value in zip(self.buffers, values, strict=True):
            buffer[:rows].copy_(value)
            buffer[rows:].copy_(value[:1].expand_as(buffer[rows:]))  # spare rows: a real row


class CudaGraphs:
    """The full model's yes/no pass as CUDA graphs (see the module doc), captured on first use
    of a bucket or ahead with :meth:`warm`; all graphs share one memory pool (they replay one
    at a time, and every output is copied out before the next replay). ``inner``: a plan's
    module in place of ``model.model`` (:class:`PlanGraphs`)."""

    def __init__(self, vlm: VisionLanguageModel, sizes: Sequence[int], inner: Any = None
                 ) -> None:
        self.vlm = vlm
        self.sizes = tuple(sorted(sizes))
        self.inner = inner
        self._pool = torch.cuda.graph_pool_handle()
        self._positions: dict[int, torch.Tensor] = {}  # tile -> (1, P), see tile_positions
        self._vision: dict[tuple[int, int], _Graph] = {}  # (bucket, tile) -> graph
        self._text: dict[tuple[int, int], _Graph] = {}
        self.capture_s = 0.0
        self.rows: Counter[str] = Counter()  # "real" rows answered, "spare" rows of padding

    @torch.inference_mode()
    def get_image_features(self, pixel_values: torch.Tensor,
                           pixel_attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """As ``Idefics3Model.get_image_features`` for whole tiles (the mask is all ones):
        (B, 1, 3, S, S) → one row of C per image token, (B·K, C)."""
        if pixel_values.shape[1] != 1:
            raise ValueError(f"CUDA graphs take one tile per crop, not {pixel_values.shape[1]}"
                             f": turn vlm.cuda_graphs off to split images")
        pixels = pixel_values.flatten(0, 1)  # (B, 3, S, S)
        size, tile = self._bucket(pixels.shape[0]), pixels.shape[-1]
        if (size, tile) not in self._vision:
            if tile not in self._positions:
                self._positions[tile] = tile_positions(self.vlm, tile)
            positions = self._positions[tile]
            self._vision[size, tile] = self._capture(
                lambda p: vision_features(self.vlm, p, positions, self.inner), (pixels,), size)
        self.rows.update(real=pixels.shape[0], spare=size - pixels.shape[0])
        return self._vision[size, tile]((pixels,)).flatten(0, 1)  # (B·K, C)

    @torch.inference_mode()
    def margins(self, inputs: Any, features: torch.Tensor | None = None) -> torch.Tensor:
        """Yes/no margins of prepared inputs, (B,); ``features`` from
        :meth:`get_image_features` (computed here when None)."""
        if features is None:
            features = self.get_image_features(inputs["pixel_values"])
        ids, mask = inputs["input_ids"], inputs["attention_mask"]  # (B, T)
        values = (ids, mask, features.view(ids.shape[0], -1, features.shape[-1]))  # (B, K, C)
        key = (self._bucket(ids.shape[0]), ids.shape[1])
        if key not in self._text:
            self._text[key] = self._capture(
                lambda *v: text_margins(self.vlm, *v, inner=self.inner), values, key[0])
        return self._text[key](values)

    def warm(self, prompts: Sequence[str], tile: int | None = None) -> CudaGraphs:
        """Capture every bucket's graphs for ``prompts`` (at ``tile``, a plan's; None: the
        model's) now, a few seconds, so no batch of the stream pays for a capture."""
        start = time.perf_counter()
        side = self.vlm.tiles.check_tile(tile)
        blank = torch.zeros(1, 1, 3, side, side, dtype=self.vlm.dtype, device=self.vlm.device)
        for size in self.sizes:
            pixels = blank.expand(size, -1, -1, -1, -1)
            features = self.get_image_features(pixels)
            for prompt in dict.fromkeys(prompts):
                ids = self.vlm.tiles.prompt_ids(prompt, tile).expand(size, -1)  # (B, T)
                self.margins({"input_ids": ids, "attention_mask": torch.ones_like(ids)},
                             features)
        self.rows.clear()
        logger.info("CUDA graphs: {} captured for batch sizes {} in {:.1f} s",
                    len(self._vision) + len(self._text), list(self.sizes),
                    time.perf_counter() - start)
        return self

    def summary(self) -> dict[str, Any]:
        real, spare = self.rows["real"], self.rows["spare"]
        return {"buckets": list(self.sizes), "graphs": len(self._vision) + len(self._text),
                "capture_s": round(self.capture_s, 2),
                "spare_rows": round(spare / max(real + spare, 1), 3)}

    def _bucket(self, rows: int) -> int:
        for size in self.sizes:
            if rows <= size:
                return size
        raise ValueError(f"a batch of {rows} crops exceeds the largest CUDA graph "
                         f"({self.sizes[-1]}): vlm.batch_size caps batches")

    def _capture(self, run: Callable[..., torch.Tensor], values: Sequence[torch.Tensor],
                 size: int) -> _Graph:
        start = time.perf_counter()
        graph = _Graph(run, values, size, self._pool)
        self.capture_s += time.perf_counter() - start
        return graph


class PlanGraphs:
    """The CUDA graphs of each compression plan (see the module doc): the full model's own
    graphs for the full plan, and for every other plan a :class:`CudaGraphs` of its module,
    made by ``capture`` on first use and kept for the :data:`PLAN_GRAPH_SETS` most recently
    used plans. A plan whose pass cannot be captured runs eager from then on (said once)."""

    def __init__(self, full: Any, capture: Callable[[Any], Any],
                 sets: int = PLAN_GRAPH_SETS) -> None:
        self.full = full
        self._capture = capture
        self.sets = sets
        self._graphs: OrderedDict[str, Any] = OrderedDict()  # plan id -> its graphs, LRU last
        self._eager: set[str] = set()  # plans that could not be captured
        self._ran: set[str] = set()  # plans that have run once (their first buckets captured)
        self.counts: Counter[str] = Counter()  # made, reused, dropped, failed

    def body(self, plan: Any) -> Any:
        """What runs ``plan``: its graphs, or None (eager) when they cannot be captured."""
        if not plan.compressed:
            return self.full
        if plan.id in self._eager:
            return None
        if plan.id in self._graphs:
            self._graphs.move_to_end(plan.id)
            self.counts["reused"] += 1
            return self._graphs[plan.id]
        while len(self._graphs) >= self.sets:
            dropped, _ = self._graphs.popitem(last=False)
            self._ran.discard(dropped)
            self.counts["dropped"] += 1
            logger.info("CUDA graphs of plan {} dropped ({} plans kept)", dropped, self.sets)
        self._graphs[plan.id] = self._capture(plan)
        self.counts["made"] += 1
        return self._graphs[plan.id]

    def failed(self, plan: Any, err: BaseException) -> None:
        """``plan``'s graphs could not be captured: it runs eager from now on."""
        self._graphs.pop(plan.id, None)
        self._eager.add(plan.id)
        self.counts["failed"] += 1
        logger.warning("CUDA graphs of plan {} could not be captured ({}: {}): it runs eager",
                       plan.id, type(err).__name__, str(err).splitlines()[0] if str(err) else "")

    def built(self, plan: Any) -> bool:
        """Whether ``plan`` has run on its graphs (or eager) once: its capture is paid."""
        return not plan.compressed or plan.id in self._ran or plan.id in self._eager

    def mark_built(self, plan: Any) -> None:
        self._ran.add(plan.id)

    def summary(self) -> dict[str, Any]:
        return {"plans_kept": len(self._graphs), "max_plans": self.sets,
                "eager_plans": len(self._eager), **{k: self.counts[k] for k in
                                                    ("made", "reused", "dropped", "failed")}}
