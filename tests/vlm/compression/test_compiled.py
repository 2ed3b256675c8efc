"""One module per plan: same answers as swapping layers, no swap of the model itself."""

from __future__ import annotations

import torch
from factories import person_crops

from vidqa.vlm.compression.compiled import CompiledPlans, plan_module
from vidqa.vlm.compression.compressor import Compressor
from vidqa.vlm.compression.plan import Plan


def test_plan_module_when_run_equals_the_swapped_model_and_leaves_it_intact(tiny_vlm):
    compressor = Compressor(tiny_vlm.model, int8="none")
    paths = compressor.paths
    plan = Plan({**{p: "keep" for p in paths}, paths[0]: "skip", paths[-1]: "skip"})
    inputs = tiny_vlm.encode(person_crops(2), "Is this person running?")
    with compressor.using(plan):
        swapped = tiny_vlm.margins(inputs)

    module = plan_module(tiny_vlm.model, "model", compressor, plan)

    assert torch.equal(tiny_vlm.margins(inputs, body=module), swapped)
    assert type(tiny_vlm.model.get_submodule(paths[0])).__name__ != "Identity"
    assert module.text_model.embed_tokens is tiny_vlm.model.model.text_model.embed_tokens


def test_compiled_plans_when_a_plan_returns_reuses_its_module(tiny_vlm, monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda module, **kwargs: module)  # no compiler here
    compressor = Compressor(tiny_vlm.model, int8="none")
    plans = CompiledPlans(tiny_vlm.model, compressor)
    skip = Plan({**{p: "keep" for p in compressor.paths}, compressor.paths[0]: "skip"})
    full = Plan.keep_all(compressor.paths)

    bodies = [plans.body(p) for p in (skip, full, skip, full)]

    assert bodies[0] is bodies[2] and bodies[1] is bodies[3] and len(plans) == 2


def test_compiled_plans_when_a_second_one_is_made_on_the_model_shares_its_modules(
        tiny_vlm, monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda module, **kwargs: module)  # no compiler here
    compressor = Compressor(tiny_vlm.model, int8="none")
    full = Plan.keep_all(compressor.paths)

    first = CompiledPlans(tiny_vlm.model, compressor).body(full)
    second = CompiledPlans(tiny_vlm.model, compressor).body(full)
    other = CompiledPlans(tiny_vlm.model, Compressor(tiny_vlm.model, int8="none")).body(full)

    assert first is second and other is not first


def test_stage_when_compile_is_on_answers_like_swapping_and_leaves_the_model_full(
        tiny_vlm, tmp_path, monkeypatch):
    from factories import make_crops

    from vidqa.config import AdaptiveConfig, QuestionConfig, VlmConfig
    from vidqa.vlm.batch import BatchAnswerer

    monkeypatch.setattr(torch, "compile", lambda module, **kwargs: module)  # no compiler here
    crops = make_crops([1, 2, 3])

    def answers(compile_: bool) -> list:
        adaptive = AdaptiveConfig(mode="static", compile=compile_, audit_every=0,
                                  cache_dir=str(tmp_path / "cache"))
        cfg = VlmConfig(questions=(QuestionConfig("Is this person running?"),),
                        adaptive=adaptive)
        return [(a.margin, a.plan_id) for per in BatchAnswerer(tiny_vlm, cfg).answer(crops)
                for a in per]

    assert answers(True) == answers(False)
    assert all(type(m).__name__ != "Identity" for m in tiny_vlm.model.modules())
