"""Plans shared between VLM replicas: one profiles, the others adopt its plan (no Ray needed:
the board is a plain object here, a named actor in the Ray engine)."""

from __future__ import annotations

import sys

import pytest
from factories import make_rois

from vidqa.config import AdaptiveConfig, QuestionConfig, VlmConfig, load_config
from vidqa.engines.fleet_plans import FleetAnswerer, PlanBoard, fleet_answerers
from vidqa.errors import ConfigError
from vidqa.vlm.adaptive import AdaptiveAnswerer
from vidqa.vlm.answerers import FullAnswerer
from vidqa.vlm.compression.compressor import Compressor

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


def replica(tiny_vlm, cfg: AdaptiveConfig, board: PlanBoard, name: str) -> FleetAnswerer:
    return FleetAnswerer(tiny_vlm, QUESTION, cfg, board, name,
                         compressor=Compressor(tiny_vlm.model))


@pytest.mark.parametrize("calls, expected", [
    ([("k", "a")], [True]),
    ([("k", "a"), ("k", "b")], [True, False]),
    ([("k", "a"), ("k", "b"), ("k", "a")], [True, False, True]),
    ([("k", "a"), ("j", "b")], [True, True]),
])
def test_board_claim_when_replicas_ask_then_first_owns_each_key(calls, expected):
    board = PlanBoard()

    assert [board.claim(key, owner) for key, owner in calls] == expected


def test_board_retract_when_plan_disproved_then_gone_and_retractor_owns_key():
    board = PlanBoard()
    board.claim("k", "a")
    board.publish("k", {"plan": 1})

    board.retract("k", "b")

    assert board.plan("k") is None
    assert (board.claim("k", "a"), board.claim("k", "b")) == (False, True)


def test_fleet_when_two_replicas_start_together_then_one_profiles_and_both_compress(
        tiny_vlm, tmp_path, profiled):
    board, cfg = PlanBoard(), settings(tmp_path)
    first, second = replica(tiny_vlm, cfg, board, "r1"), replica(tiny_vlm, cfg, board, "r2")

    first.answer(make_rois([1]))
    waiting = second.answer(make_rois([5, 6]))  # two tracks: it would profile on its own
    first.answer(make_rois([2], frame=1))  # the first replica's K-th track: it plans
    adopted = second.answer(make_rois([7], frame=2))
    later = second.answer(make_rois([8], frame=3))

    assert profiled == [[1, 2]]
    assert [a.compressed for a in waiting + adopted] == [False, False, False]
    assert all(a.compressed and a.plan_id == first.plan.id for a in later)
    assert (first.phase, second.phase) == ("compressed", "compressed")
    assert second.summary()["plan_source"] == "cache"


def test_fleet_when_plan_disproved_then_the_disproving_replica_profiles_again(
        tiny_vlm, tmp_path, profiled):
    board, cfg = PlanBoard(), settings(tmp_path)
    first, second = replica(tiny_vlm, cfg, board, "r1"), replica(tiny_vlm, cfg, board, "r2")
    first.answer(make_rois([1, 2]))
    second.answer(make_rois([3]))  # adopts the published plan

    second._audits.append(False)  # its audits disagree with the plan
    second._check_agreement()
    second.answer(make_rois([4, 5], frame=1))
    first.answer(make_rois([6, 7], frame=1))

    assert profiled == [[1, 2], [4, 5]]
    assert board.plan(second.cache.key(second._key))["plan"] == second.plan.to_dict()


@pytest.mark.parametrize("overrides, kind", [
    ({}, FleetAnswerer),
    ({"enabled": False}, FullAnswerer),
    ({"mode": "off"}, FullAnswerer),
])
def test_fleet_answerers_when_adaptive_setting_then_kind(tiny_vlm, tmp_path, overrides, kind):
    cfg = VlmConfig(questions=(QUESTION,), adaptive=settings(tmp_path, **overrides))

    answerers = fleet_answerers(tiny_vlm, cfg, PlanBoard(), "r1")

    assert [type(a) for a in answerers] == [kind]


def test_run_on_ray_when_ray_missing_then_config_error_says_how_to_install(monkeypatch,
                                                                          tmp_path):
    from vidqa.engines.ray import run_on_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    cfg = load_config(None, ["run.engine=ray"])

    with pytest.raises(ConfigError, match=r"pip install 'vidqa\[ray\]'"):
        run_on_ray(cfg, tmp_path)
