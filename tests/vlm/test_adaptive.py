"""The per-query controller: profile the first tracks, compress, audit, re-plan, cache."""

from __future__ import annotations

import json

import pytest
from factories import FakeProfile, make_identity_layer, make_rois

import vidqa.vlm.adaptive as adaptive
from vidqa.config import AdaptiveConfig, QuestionConfig
from vidqa.vlm.adaptive import AdaptiveAnswerer
from vidqa.vlm.compression.compressor import Compressor, layer_paths
from vidqa.vlm.compression.plan import Plan
from vidqa.vlm.compression.plan_cache import PlanCache
from vidqa.vlm.model import YesNo
from vidqa.vlm.profiling.importance import Profile

QUERY = QuestionConfig(question="Is this person carrying a backpack?")


@pytest.fixture()
def fake_profiler(monkeypatch):
    calls = []

    def profile(self, images, track_ids):
        calls.append(list(track_ids))
        return FakeProfile.of(layer_paths(self.vlm.model))
    monkeypatch.setattr(AdaptiveAnswerer, "_profile", profile)
    return calls


rois = make_rois


def config(tmp_path, **overrides) -> AdaptiveConfig:
    base = {"profile_tracks": 2, "mode": "bottom_fraction", "operator": "skip", "fraction": 0.5,
            "audit_every": 0, "cache_dir": str(tmp_path / "cache")}
    return AdaptiveConfig(**{**base, **overrides})


def make(tiny_vlm, cfg, **kwargs) -> AdaptiveAnswerer:
    return AdaptiveAnswerer(tiny_vlm, QUERY, cfg, compressor=Compressor(tiny_vlm.model), **kwargs)


def test_answer_when_k_tracks_profiled_compresses_later_tracks(tiny_vlm, tmp_path,
                                                               fake_profiler):
    query = make(tiny_vlm, config(tmp_path))

    first = query.answer(rois([1, 2]))
    later = query.answer(rois([3, 4], frame=1))

    assert [a.compressed for a in first] == [False, False]
    assert {a.extra["phase"] for a in first} == {"profile"}
    assert fake_profiler == [[1, 2]]
    assert all(a.compressed and a.plan_id == query.plan.id for a in later)
    assert query.plan.counts()["skip"] == len(query.compressor.paths) // 2
    assert query.compressor.current.id == "full"  # compressed only inside answer()


def test_audit_when_compressed_answers_are_wrong_reprofiles_then_falls_back(
        tiny_vlm, tmp_path, fake_profiler, monkeypatch):
    query = make(tiny_vlm, config(tmp_path, audit_every=1), max_replans=1)
    real_ask = adaptive.ask

    def flipped_when_compressed(vlm, q, batch, max_new_tokens):
        results, seconds = real_ask(vlm, q, batch, max_new_tokens)
        if query.compressor.current.compressed:
            results = [YesNo(1 - r.p_yes, -r.margin) for r in results]
        return results, seconds
    monkeypatch.setattr(adaptive, "ask", flipped_when_compressed)

    query.answer(rois([1, 2]))
    audited = query.answer(rois([3], frame=1))
    assert query.phase == "profile" and query.replans == 1
    assert audited[0].extra["audit_agree"] is False
    assert not audited[0].compressed  # the full model's answer is the one emitted
    query.answer(rois([5, 6], frame=2))  # re-profile: the missed track 3 plus track 5
    assert fake_profiler[-1] == [3, 5]
    query.answer(rois([7], frame=3))

    assert query.phase == "full"
    assert "gave up" in query.summary()["reason"]
    assert query.summary()["agreement"]["audit"] == 0.0


def test_audit_when_compressed_answers_agree_keeps_the_plan(tiny_vlm, tmp_path, fake_profiler):
    # The plan skips the bottom half of the layer order; make those layers identity maps so
    # the compressed answers equal the full ones exactly.
    paths = layer_paths(tiny_vlm.model)
    for path in paths[:len(paths) // 2]:
        make_identity_layer(tiny_vlm.model, path)
    query = make(tiny_vlm, config(tmp_path, audit_every=2))
    query.answer(rois([1, 2]))

    answers = query.answer(rois([3, 4, 5, 6], frame=1))

    assert [a.extra["phase"] for a in answers] == ["compressed", "audit"] * 2
    assert all(a.extra["audit_agree"] for a in answers[1::2])
    assert query.phase == "compressed" and query.replans == 0
    assert query.summary()["agreement"]["audit"] == 1.0


def test_cache_when_second_run_starts_skips_profiling(tiny_vlm, tmp_path, fake_profiler):
    cfg = config(tmp_path)
    first = make(tiny_vlm, cfg)
    first.answer(rois([1, 2]))

    second = make(tiny_vlm, cfg, cache=PlanCache(tmp_path / "cache"))
    answers = second.answer(rois([8, 9]))

    assert len(fake_profiler) == 1  # only the first run profiled
    assert all(a.compressed for a in answers)
    assert second.plan == first.plan
    assert second.summary()["cache"]["hits"] == 1
    assert first.summary()["cache"]["misses"] == 1


def test_cache_when_settings_differ_misses(tiny_vlm, tmp_path, fake_profiler):
    make(tiny_vlm, config(tmp_path)).answer(rois([1, 2]))
    other = make(tiny_vlm, config(tmp_path, fraction=0.25))
    assert other.phase == "profile"
    assert other.cache.stats()["misses"] == 1


def test_answer_when_question_is_text_uses_full_model(tiny_vlm, tmp_path, fake_profiler):
    query = AdaptiveAnswerer(tiny_vlm,
                             QuestionConfig(question="Describe the person.", answer="text"),
                          config(tmp_path), max_new_tokens=3,
                          compressor=Compressor(tiny_vlm.model))
    answers = query.answer(rois([1, 2, 3]))
    assert [a.compressed for a in answers] == [False] * 3
    assert query.phase == "text" and not fake_profiler


def test_summary_when_compressing_reports_ratio_speedup_and_overhead(tiny_vlm, tmp_path,
                                                                     fake_profiler):
    query = make(tiny_vlm, config(tmp_path, audit_every=3))
    for frame, tracks in enumerate([[1, 2], [3, 4], [5, 6], [7, 8]]):
        query.answer(rois(tracks, frame))

    summary = query.summary()

    assert summary["weight_bytes"]["ratio"] > 1
    assert summary["latency_ms"]["speedup"] > 0
    assert summary["profiling"]["runs"] == 1 and 0 <= summary["profiling"]["share"] < 1
    assert summary["answers"]["full"] == 2 and summary["answers"]["compressed"] == 6
    assert summary["plan"]["id"] == query.plan.id


def test_answer_when_auto_mode_chooses_plan_on_profiled_rois(tiny_vlm, tmp_path, fake_profiler):
    query = make(tiny_vlm, config(tmp_path, mode="auto", profile_tracks=3))
    query.answer(rois([1, 2, 3]))

    search = query.summary()["search"]
    assert search["mode"] == "auto" and search["trials"]
    assert query.phase == ("compressed" if query.plan.compressed else "full")


def test_answer_when_profiled_for_real_stores_profile_and_plan_in_cache(tiny_vlm, tmp_path):
    cfg = config(tmp_path, mode="auto", profile_tracks=3)
    query = make(tiny_vlm, cfg)

    query.answer(rois([1, 2, 3]))

    entries = list((tmp_path / "cache").glob("*.json"))
    assert len(entries) == 1
    entry = json.loads(entries[0].read_text())
    profile = Profile.from_dict(entry["profile"])
    assert profile.roi_ids == [1, 2, 3] and "block_influence" in profile.scores
    assert Plan.from_dict(entry["plan"]) == query.plan
    assert entry["key"]["question"] == QUERY.question


def test_answer_when_two_queries_share_a_model_keeps_each_plan(tiny_vlm, tmp_path,
                                                                fake_profiler):
    compressor = Compressor(tiny_vlm.model)
    skip = AdaptiveAnswerer(tiny_vlm, QUERY, config(tmp_path), compressor=compressor)
    int8 = AdaptiveAnswerer(tiny_vlm, QuestionConfig(question="Is this person running?"),
                         config(tmp_path, operator="int8"), compressor=compressor)
    for query in (skip, int8):
        query.answer(rois([1, 2]))

    first = int8.answer(rois([3], frame=1))
    second = skip.answer(rois([3], frame=1))

    assert first[0].plan_id == int8.plan.id != second[0].plan_id == skip.plan.id
    assert int8.plan.paths("int8") and skip.plan.paths("skip")
    assert compressor.cached_bytes() > 0  # int8's copies survived the other query's prune
    assert compressor.current.id == "full"
