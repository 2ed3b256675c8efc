"""CUDA graphs of the full model's pass: the captured functions equal the model's own pass (on
the CPU, eager), and on a GPU the replayed graphs give the model's answers for every bucket."""

import numpy as np
import pytest
import torch
from factories import make_crops

from vidqa.assets.types import ModelInfo
from vidqa.config import AdaptiveConfig, QuestionConfig, VlmConfig
from vidqa.vlm.batch import BatchAnswerer
from vidqa.vlm.compression.compiled import plan_module
from vidqa.vlm.compression.compressor import Compressor
from vidqa.vlm.compression.plan import Plan
from vidqa.vlm.graphs import (
    CudaGraphs,
    PlanGraphs,
    buckets,
    text_margins,
    tile_positions,
    vision_features,
)
from vidqa.vlm.model import VisionLanguageModel

QUESTIONS = (QuestionConfig("Is this person carrying a backpack?"),
             QuestionConfig("Is this person wearing a hat?"))


def _crops(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (int(rng.integers(40, 90)), int(rng.integers(20, 50)), 3),
                         dtype=np.uint8) for _ in range(count)]


def test_buckets_are_powers_of_two_up_to_the_batch_size():
    assert buckets(64) == (1, 2, 4, 8, 16, 32, 64)
    assert buckets(12) == (1, 2, 4, 8, 12)
    assert buckets(1) == (1,)


def test_the_captured_passes_equal_the_models_margins_and_spare_rows_change_nothing(tiny_vlm):
    inputs = tiny_vlm.encode(_crops(3), QUESTIONS[0].question)
    reference = tiny_vlm.margins(inputs)

    with torch.inference_mode():
        pixels = inputs["pixel_values"].flatten(0, 1)  # (3, 3, S, S)
        features = vision_features(tiny_vlm, pixels, tile_positions(tiny_vlm, pixels.shape[-1]))
        margins = text_margins(tiny_vlm, inputs["input_ids"], inputs["attention_mask"],
                               features)
        padded = [torch.cat([t, t[:1].expand(2, *t.shape[1:])])  # a bucket of 5
                  for t in (inputs["input_ids"], inputs["attention_mask"], features)]
        in_bucket = text_margins(tiny_vlm, *padded)

    assert features.shape[0] == 3
    torch.testing.assert_close(margins, reference, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(in_bucket[:3], reference, rtol=1e-4, atol=1e-4)
    assert not torch.equal(reference[0], reference[1])  # distinct crops: a real comparison


def test_on_the_cpu_a_stage_runs_eager_and_reports_no_graphs(tiny_vlm):
    stage = BatchAnswerer(tiny_vlm, VlmConfig(questions=QUESTIONS, cuda_graphs=True,
                                         adaptive=AdaptiveConfig(enabled=False)))

    assert all(answerer.body is None for answerer in stage.answerers)
    assert stage.summary()["cuda_graphs"] is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_replayed_graphs_give_the_models_answers_in_every_bucket(tiny_vlm_dir):
    info = ModelInfo(requested=str(tiny_vlm_dir), resolved=str(tiny_vlm_dir))
    vlm = VisionLanguageModel.load(info, device="cuda", dtype="float32", local_files_only=True)
    prompts = [vlm.prompt(q.question) for q in QUESTIONS]
    graphs = CudaGraphs(vlm, buckets(4)).warm(prompts)
    captured = graphs.summary()["graphs"]
    lengths = {vlm.tiles.prompt_ids(prompt).shape[1] for prompt in prompts}

    for count in (1, 3, 4):
        inputs = vlm.encode(_crops(count, seed=count), QUESTIONS[1].question)
        torch.testing.assert_close(vlm.margins(inputs, body=graphs), vlm.margins(inputs),
                                   rtol=1e-3, atol=1e-3)
    # buckets 1, 2, 4: a vision graph each and a text graph per prompt length; none captured late
    assert graphs.summary()["graphs"] == captured == 3 * (1 + len(lengths))

    cfg = VlmConfig(questions=QUESTIONS, batch_size=4, adaptive=AdaptiveConfig(enabled=False))
    crops = make_crops([1, 2, 3, 4, 5])
    replayed = BatchAnswerer(vlm, cfg).answer(crops)
    eager = BatchAnswerer(vlm, VlmConfig(questions=QUESTIONS, batch_size=4, cuda_graphs=False,
                                    adaptive=AdaptiveConfig(enabled=False))).answer(crops)
    assert [[a.answer for a in per] for per in replayed] == \
        [[a.answer for a in per] for per in eager]
    np.testing.assert_allclose([[a.margin for a in per] for per in replayed],
                               [[a.margin for a in per] for per in eager], atol=1e-3)


def test_plan_graphs_when_more_plans_than_sets_then_least_recent_dropped_and_counted(tiny_vlm):
    # Given plan bodies made by the real plan module (eager on the CPU: a stand-in for a
    # plan's captured graphs, same inputs and outputs) and room for two plans
    compressor = Compressor(tiny_vlm.model, int8="none")
    paths = compressor.paths
    made = []

    def capture(plan):
        made.append(plan.id)
        return plan_module(tiny_vlm.model, "model", compressor, plan)
    graphs = PlanGraphs("full-graphs", capture, sets=2)
    plans = [Plan({paths[i]: "skip"}) for i in (0, 2, 3)]

    # When three plans run, then the first again
    bodies = [graphs.body(plan) for plan in plans]
    graphs.body(plans[2])
    graphs.body(plans[0])

    # Then the full plan is the full model's graphs, each plan was made once until it was
    # dropped, and a plan's body answers as the plan's swapped layers do
    assert graphs.body(Plan.keep_all(paths)) == "full-graphs"
    assert made == [p.id for p in plans] + [plans[0].id]
    assert graphs.summary() == {"plans_kept": 2, "max_plans": 2, "eager_plans": 0, "made": 4,
                                "reused": 1, "dropped": 2, "failed": 0}
    inputs = tiny_vlm.encode(_crops(3), QUESTIONS[0].question)
    with compressor.using(plans[2]):
        swapped = tiny_vlm.margins(inputs)
    torch.testing.assert_close(tiny_vlm.margins(inputs, body=bodies[2]), swapped)


def test_plan_graphs_when_a_plan_cannot_be_captured_then_it_runs_eager(tiny_vlm):
    graphs = PlanGraphs(None, lambda plan: object())
    plan = Plan({Compressor(tiny_vlm.model, int8="none").paths[0]: "skip"})
    graphs.body(plan)

    graphs.failed(plan, RuntimeError("operation not permitted when stream is capturing"))

    assert graphs.body(plan) is None and graphs.built(plan)
    assert graphs.summary()["failed"] == 1 and graphs.summary()["plans_kept"] == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_a_plans_graphs_at_a_smaller_tile_give_its_eager_answers(tiny_vlm_dir):
    info = ModelInfo(requested=str(tiny_vlm_dir), resolved=str(tiny_vlm_dir))
    vlm = VisionLanguageModel.load(info, device="cuda", dtype="float32", local_files_only=True)
    compressor = Compressor(vlm.model, int8="none")
    plan = Plan({compressor.paths[0]: "skip", compressor.paths[-1]: "skip"}, tile=32)
    question = QUESTIONS[0].question
    graphs = CudaGraphs(vlm, buckets(4), plan_module(vlm.model, "model", compressor, plan))
    graphs.warm([vlm.prompt(question)], plan.tile)

    for count in (1, 3):
        inputs = vlm.encode(_crops(count, seed=count), question, tile=32)
        with compressor.using(plan):
            eager = vlm.margins(inputs)
        torch.testing.assert_close(vlm.margins(inputs, body=graphs), eager, rtol=1e-3,
                                   atol=1e-3)
    assert compressor.current.id == "full"  # the graphs ran the plan, the model stayed whole
