"""Benchmark: the seed's loop against vidqa's pipeline on the same slice of the sample clip.

seed:  every person box of every frame -> VLM generate() with the processor's default image
       splitting (a person crop becomes a grid of 512 px tiles plus a global tile), batch 1.
vidqa: ask once per confirmed track -> one forward pass read at the Yes/No logits, one tile per
       crop, the crops of a frame batched.

Both see the same decoded frames and the same tracker output. The seed loop is too slow to
run on every box (tens of seconds per crop on a 2-core CPU), so it runs on ``--seed-sample``
boxes spread over the slice and its total is extrapolated to every box; the output says so.

    python tools/bench_pipeline.py --frames 60 --seed-sample 4
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers.image_processing_utils import SizeDict

from vidqa import assets
from vidqa.clock import StageClock
from vidqa.config import PipelineConfig, QuestionConfig, VlmConfig
from vidqa.pipeline import tracked
from vidqa.roi import clip_box, pad_box
from vidqa.sources import open_source, source_path
from vidqa.vlm.answerers import FullAnswerer
from vidqa.vlm.loading import load_vlm
from vidqa.vlm.model import VisionLanguageModel

QUESTION = "Is this person carrying a backpack?"


def track_slice(frames: int) -> tuple[list, float, float]:
    """Decode, track and crop ``frames`` frames of the sample clip as a run would; returns the
    results and the decode / track seconds."""
    cfg, clock = PipelineConfig(), StageClock()
    with open_source(cfg.source, source_path(cfg.source)) as source:
        results = list(tracked(cfg, source, frames, clock))
    own = clock.own_seconds()
    return results, own["source"], own["tracker"]


def every_box(results: list, padding: float = 0.1) -> list:
    """The seed's ROIs: every tracked box of every frame, padded and cropped."""
    crops = []
    for result in results:
        width, height = result.frame.size
        for row in range(len(result.detections)):
            box = clip_box(result.detections.xyxy[row], width, height)
            x1, y1, x2, y2 = pad_box(box, padding, width, height)
            if x2 - x1 >= 8 and y2 - y1 >= 8:
                crops.append(result.frame.image[y1:y2, x1:x2].copy())
    return crops


def seed_seconds_per_crop(vlm: VisionLanguageModel, crops: list, sample: int) -> tuple[float, int]:
    """Median seconds of generate() with default image splitting, on ``sample`` spread crops."""
    tile = vlm.processor.image_processor.max_image_size["longest_edge"]
    vlm.processor.image_processor.size = SizeDict(longest_edge=4 * tile)  # SmolVLM's default
    vlm.image_splitting = True
    picks = crops[:: max(1, len(crops) // sample)][:sample]
    times, tiles = [], 0
    for crop in picks:
        start = time.perf_counter()
        inputs = vlm.encode([crop], QUESTION, padding_side="left")
        tiles = max(tiles, int(inputs["pixel_values"].shape[1]))
        with torch.inference_mode():
            vlm.model.generate(**inputs, max_new_tokens=5, do_sample=False)
        times.append(time.perf_counter() - start)
    vlm.image_splitting = False
    vlm.processor.image_processor.size = SizeDict(longest_edge=tile)
    return statistics.median(times), tiles


def vidqa_seconds(vlm: VisionLanguageModel, results: list, batch_size: int) -> tuple[float, int]:
    """Once per track, one forward, one tile, batched: total VLM seconds and ROIs answered."""
    answerer = FullAnswerer(vlm, QuestionConfig(question=QUESTION))
    for result in results:
        crops = list(result.crops)
        for start in range(0, len(crops), batch_size):
            answerer.answer(crops[start:start + batch_size])
    return answerer.seconds, answerer.crops


def main(frames: int = 60, seed_sample: int = 4, batch_size: int = 8, model: str = "auto") -> None:
    results, decode_s, track_s = track_slice(frames)
    vlm = load_vlm(VlmConfig(model=model))
    info = vlm.info
    crops = every_box(results)
    vidqa_s, vidqa_calls = vidqa_seconds(vlm, results, batch_size)
    per_crop, tiles = seed_seconds_per_crop(vlm, crops, seed_sample)
    seed_s = per_crop * len(crops)
    print(f"model: {info.name}   device: {vlm.device}   threads: {torch.get_num_threads()}")
    print(f"slice: {len(results)} frames of {assets.sample_video().name}")
    print(f"shared stages: decode {decode_s:.2f} s, track {track_s:.2f} s")
    print(f"seed : {len(crops)} VLM calls (every box), generate(5 tokens), up to {tiles} tiles; "
          f"median {per_crop:.2f} s/ROI over {min(seed_sample, len(crops))} measured -> "
          f"{seed_s:.1f} s extrapolated")
    print(f"vidqa: {vidqa_calls} VLM calls (once per track), 1 forward, 1 tile, batch "
          f"{batch_size}: {vidqa_s:.1f} s measured ({vidqa_s / max(vidqa_calls, 1):.2f} s/ROI)")
    print(f"VLM calls ratio: {len(crops) / max(vidqa_calls, 1):.1f}x fewer;  per-ROI cost ratio: "
          f"{per_crop / max(vidqa_s / max(vidqa_calls, 1), 1e-9):.1f}x;  VLM time ratio: "
          f"{seed_s / max(vidqa_s, 1e-9):.1f}x;  end-to-end ratio: "
          f"{(decode_s + track_s + seed_s) / (decode_s + track_s + vidqa_s):.1f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=60, help="frames of the clip to use")
    parser.add_argument("--seed-sample", type=int, default=4, help="boxes timed for the seed loop")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--model", default="auto")
    args = parser.parse_args()
    main(args.frames, args.seed_sample, args.batch_size, args.model)
