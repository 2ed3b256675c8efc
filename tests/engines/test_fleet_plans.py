"""Plans shared between VLM replicas: one profiles, the others adopt its plan (no Ray needed:
the shared plans are a plain object here, a named actor in the Ray engine)."""

from __future__ import annotations

import sys

import pytest
from factories import make_crops

from vidqa.config import AdaptiveConfig, QuestionConfig, VlmConfig, load_config
from vidqa.engines.fleet_plans import Fleet, FleetGate, SharedPlans
from vidqa.errors import ConfigError
from vidqa.vlm.adaptive import AdaptiveAnswerer
from vidqa.vlm.answerers import FullAnswerer
from vidqa.vlm.compression.compressor import Compressor
from vidqa.vlm.factory import make_answerers

QUESTION = QuestionConfig(question="Is this person carrying a backpack?")


@pytest.fixture()
def profiled(monkeypatch) -> list[list[int]]:
    """The track ids of every profiling run, by any replica (the profiler is faked)."""
    calls: list[list[int]] = []
    plan = AdaptiveAnswerer._plan_from_stream

    def recorded(self):
        calls.append(sorted(track for _, track in self._tracks))
        return plan(self)
    monkeypatch.setattr(AdaptiveAnswerer, "_plan_from_stream", recorded)
    return calls


def settings(tmp_path, **overrides) -> AdaptiveConfig:
    base = {"profile_tracks": 2, "mode": "bottom_fraction", "operator": "skip", "fraction": 0.5,
            "audit_every": 0, "cache_dir": str(tmp_path / "plans")}
    return AdaptiveConfig(**{**base, **overrides})


def replica(tiny_vlm, cfg: AdaptiveConfig, plans: SharedPlans, name: str) -> AdaptiveAnswerer:
    cache, gate = Fleet(plans, name).cache_and_gate(cfg.cache_dir)
    return AdaptiveAnswerer(tiny_vlm, QUESTION, cfg, cache=cache, gate=gate,
                            compressor=Compressor(tiny_vlm.model))


@pytest.mark.parametrize("calls, expected", [
    ([("k", "a")], [True]),
    ([("k", "a"), ("k", "b")], [True, False]),
    ([("k", "a"), ("k", "b"), ("k", "a")], [True, False, True]),
    ([("k", "a"), ("j", "b")], [True, True]),
])
def test_shared_plans_claim_when_replicas_ask_then_first_owns_each_key(calls, expected):
    plans = SharedPlans()

    assert [plans.claim(key, owner) for key, owner in calls] == expected


def test_shared_plans_retract_when_plan_disproved_then_gone_and_retractor_owns_key():
    plans = SharedPlans()
    plans.claim("k", "a")
    plans.publish("k", {"plan": 1})

    plans.retract("k", "b")

    assert plans.plan("k") is None
    assert (plans.claim("k", "a"), plans.claim("k", "b")) == (False, True)


def test_fleet_when_two_replicas_start_together_then_one_profiles_and_both_compress(
        tiny_vlm, tmp_path, profiled):
    plans, cfg = SharedPlans(), settings(tmp_path)
    first, second = replica(tiny_vlm, cfg, plans, "r1"), replica(tiny_vlm, cfg, plans, "r2")

    first.answer(make_crops([1]))
    waiting = second.answer(make_crops([5, 6]))  # two tracks: it would profile on its own
    first.answer(make_crops([2], frame=1))  # the first replica's K-th track: it plans
    adopted = second.answer(make_crops([7], frame=2))
    later = second.answer(make_crops([8], frame=3))

    assert profiled == [[1, 2]]
    assert [a.compressed for a in waiting + adopted] == [False, False, False]
    assert all(a.compressed and a.plan_id == first.plan.id for a in later)
    assert (first.phase, second.phase) == ("compressed", "compressed")
    assert second.summary()["plan_source"] == "cache"


def test_fleet_when_plan_disproved_then_the_disproving_replica_profiles_again(
        tiny_vlm, tmp_path, profiled):
    plans, cfg = SharedPlans(), settings(tmp_path)
    first, second = replica(tiny_vlm, cfg, plans, "r1"), replica(tiny_vlm, cfg, plans, "r2")
    first.answer(make_crops([1, 2]))
    second.answer(make_crops([3]))  # adopts the published plan

    second.auditor.window.append(False)  # its audits disagree with the plan
    second._replan(second.auditor.shortfall())
    second.answer(make_crops([4, 5], frame=1))
    first.answer(make_crops([6, 7], frame=1))

    assert profiled == [[1, 2], [4, 5]]
    assert plans.plan(second.cache.key(second._key))["plan"] == second.plan.to_dict()


@pytest.mark.parametrize("overrides, kind", [
    ({}, AdaptiveAnswerer),
    ({"enabled": False}, FullAnswerer),
    ({"mode": "off"}, FullAnswerer),
])
def test_make_answerers_when_a_fleet_replica_then_kind_and_gate(tiny_vlm, tmp_path, overrides,
                                                                kind):
    cfg = VlmConfig(questions=(QUESTION,), adaptive=settings(tmp_path, **overrides))

    answerers = make_answerers(tiny_vlm, cfg, Fleet(SharedPlans(), "r1"))

    assert [type(a) for a in answerers] == [kind]
    if kind is AdaptiveAnswerer:
        assert isinstance(answerers[0].gate, FleetGate)


def test_make_answerers_when_a_fleet_replica_with_a_plan_file_then_it_answers_with_it(
        tiny_vlm, tmp_path):
    from vidqa.vlm.compression.plan import Plan
    from vidqa.vlm.compression.plan_library import save_library

    paths = Compressor(tiny_vlm.model).paths
    plan = Plan({**{p: "keep" for p in paths}, paths[0]: "skip"})
    library = save_library(tmp_path / "plans.json", tiny_vlm.info.name, paths,
                           [{"question": QUESTION.question, "plan": plan.to_dict()}])
    cfg = VlmConfig(questions=(QUESTION,),
                    adaptive=settings(tmp_path, mode="auto", plan=str(library)))

    answerer, = make_answerers(tiny_vlm, cfg, Fleet(SharedPlans(), "r1"))

    assert answerer.phase == "compressed" and answerer.plan_source == "plan file"
    assert answerer.plan.id == plan.id


def test_make_answerers_when_a_fleet_replica_compiles_then_its_answerers_share_compiled_plans(
        tiny_vlm, tmp_path):
    from vidqa.vlm.compression.compiled import CompiledPlans

    question2 = QuestionConfig(question="Is this person running?")
    cfg = VlmConfig(questions=(QUESTION, question2),
                    adaptive=settings(tmp_path, mode="auto", compile=True))

    answerers = make_answerers(tiny_vlm, cfg, Fleet(SharedPlans(), "r1"))

    assert all(isinstance(a.compiled, CompiledPlans) for a in answerers)
    assert answerers[0].compiled is answerers[1].compiled


def test_run_on_ray_when_ray_missing_then_config_error_says_how_to_install(monkeypatch,
                                                                          tmp_path):
    from vidqa.engines.ray import run_on_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    cfg = load_config(None, ["run.engine=ray"])

    with pytest.raises(ConfigError, match=r"pip install 'vidqa\[ray\]'"):
        run_on_ray(cfg, tmp_path)
