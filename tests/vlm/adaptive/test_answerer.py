"""The per-question controller: profile inside the answers, plan only what pays, compress,
audit in paired batches, re-plan, cache, static plans, plan files and borrowed plans."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from factories import make_crops, make_identity_layer

import vidqa.vlm.adaptive.runner as runner
from vidqa.config import AdaptiveConfig, QuestionConfig
from vidqa.vlm.adaptive import AdaptiveAnswerer, plan_offline
from vidqa.vlm.compression.compiled import CompiledPlans
from vidqa.vlm.compression.compressor import Compressor, layer_paths
from vidqa.vlm.compression.plan import Plan
from vidqa.vlm.compression.plan_cache import PlanCache
from vidqa.vlm.compression.plan_library import load_library, save_library
from vidqa.vlm.model import YesNo
from vidqa.vlm.profiling.stream import StreamProfile

QUERY = QuestionConfig(question="Is this person carrying a backpack?")
BAG = QuestionConfig(question="Is this person carrying a bag?")
crops = crops_of = make_crops


@pytest.fixture()
def identity_model(tiny_vlm):
    """Every layer x -> x: any skip plan keeps the answers exactly."""
    for path in layer_paths(tiny_vlm.model):
        make_identity_layer(tiny_vlm.model, path)
    return tiny_vlm


@pytest.fixture()
def fixed_seconds(monkeypatch):
    """Deterministic costs: 1 s per ROI for the full model, 0.25 s under a plan, each of the
    tiny model's 6 layers 0.16 s of it (the model swapped, or a plan's own module)."""
    monkeypatch.setattr(StreamProfile, "layer_seconds_per_crop",
                        lambda self: np.full(len(self.layers), 0.16))
    real_ask = runner.ask

    def ask(vlm, question, batch, max_new_tokens, shared=None, vision_key="full", body=None,
            trace=None, tile=None):
        asked = real_ask(vlm, question, batch, max_new_tokens, shared, vision_key, body, trace,
                         tile)
        compressed = tile is not None or any(
            type(m).__name__ in ("Identity", "SkipDecoderLayer", "Int8Linear")
            or type(m).__module__.startswith("torch.ao.nn.quantized")
            for m in (vlm.model if body is None else body).modules())
        seconds = len(batch) * (0.25 if compressed else 1.0)
        return dataclasses.replace(asked, seconds=seconds, standalone_s=seconds)
    monkeypatch.setattr(runner, "ask", ask)


def config(tmp_path, **overrides) -> AdaptiveConfig:
    base = {"profile_tracks": 2, "audit_every": 0, "cache_dir": str(tmp_path / "cache"),
            "borrow": False, "tile_scales": ()}  # layer plans; tiles have tests of their own
    return AdaptiveConfig(**{**base, **overrides})


def flip_when_compressed(query: AdaptiveAnswerer, monkeypatch) -> None:
    """From now on, answers given while ``query``'s model is compressed are flipped."""
    fixed = runner.ask

    def flipped(vlm, q, batch, *args, **kwargs):
        asked = fixed(vlm, q, batch, *args, **kwargs)
        if query.compressor.current.compressed:
            asked.results[:] = [YesNo(1 - r.p_yes, -r.margin) for r in asked.results]
        return asked
    monkeypatch.setattr(runner, "ask", flipped)


def make(vlm, cfg, question=QUERY, **kwargs) -> AdaptiveAnswerer:
    compressor = kwargs.pop("compressor", None) or Compressor(vlm.model, int8="none")
    return AdaptiveAnswerer(vlm, question, cfg, compressor=compressor, **kwargs)


def test_answer_when_k_tracks_profiled_and_plan_pays_compresses_later_tracks(
        identity_model, tmp_path, fixed_seconds):
    query = make(identity_model, config(tmp_path))
    query.expect(crops=1000)

    first = query.answer(crops([1, 2]))
    later = query.answer(crops([3, 4], frame=1))

    assert {a.extra["phase"] for a in first} == {"profile"}
    assert query.phase == "compressed" and query.plan.paths("skip")
    assert all(a.compressed and a.plan_id == query.plan.id for a in later)
    assert len(query.search["trials"]) == 1  # the first candidate confirmed, not six
    assert query.compressor.current.id == "full"  # compressed only inside answer()


def test_answer_when_a_smaller_tile_keeps_the_answers_then_later_tracks_run_at_that_tile(
        identity_model, tmp_path, fixed_seconds, monkeypatch):
    # Given every layer x -> x and a guard loose enough that the 32 px tile passes it
    query = make(identity_model, config(tmp_path, tile_scales=(0.5,), target_agreement=0.01,
                                        max_dp_yes=1.0))
    query.expect(crops=1000)
    seen = []
    encode = identity_model.encode
    monkeypatch.setattr(identity_model, "encode", lambda images, question, **kw: seen.append(
        kw.get("tile")) or encode(images, question, **kw))

    query.answer(crops([1, 2]))
    trials = query.search["trials"]
    seen.clear()
    later = query.answer(crops([3, 4], frame=1))

    # Then some tile candidate was ranked, and once one is the plan its crops are 32 px
    assert any(c["label"].startswith("tile 32") for c in query.search["ranked"])
    assert query.phase == "compressed" and trials[-1]["accepted"]
    assert all(a.plan_id == query.plan.id for a in later)
    assert seen == [query.plan.tile]
    assert Plan.from_dict(query.cache.get(query._key)["plan"]) == query.plan


def test_plan_when_a_live_stream_is_profiled_in_its_first_burst_waits_for_the_rate(
        identity_model, tmp_path, fixed_seconds):
    # Given a live stream (nothing announced) whose first tracks are all profiled at once
    query = make(identity_model, config(tmp_path))
    query.answer(crops([1, 2]))
    waited = query.phase

    # When new tracks keep arriving after the stream's first seconds
    for frame in range(30, 90, 5):
        query.answer(crops([frame], frame=frame))

    # Then it answered full meanwhile instead of giving up, and planned once the rate was known
    assert waited == "profile" and query.search is not None
    assert query.search["forecast"].endswith("horizon 300 s")
    assert query.phase == "compressed"


def test_plan_when_a_candidate_moved_the_answers_then_the_next_run_does_not_confirm_it_again(
        identity_model, tmp_path, fixed_seconds, monkeypatch):
    # Given a run whose one confirmation, a smaller tile, moved the answers (layer plans left)
    cfg = config(tmp_path, confirm=1, tile_scales=(0.5,))
    first = make(identity_model, cfg)
    first.expect(crops=1000)
    fixed = runner.ask

    def flipped(vlm, q, batch, *args, **kwargs):
        asked = fixed(vlm, q, batch, *args, **kwargs)
        if kwargs.get("tile") is not None:
            asked.results[:] = [YesNo(1 - r.p_yes, -r.margin) for r in asked.results]
        return asked
    monkeypatch.setattr(runner, "ask", flipped)
    first.answer(crops([1, 2]))
    rejected = first.search["trials"][0]
    assert rejected["label"].startswith("tile")

    # When the next run of the same question plans
    again = make(identity_model, cfg)
    again.expect(crops=1000)
    again.answer(crops([1, 2]))

    # Then it neither repeats that confirmation nor takes the pending entry for a verdict
    assert first.phase == "full" and not rejected["accepted"]
    assert [p.id for p in again.planner.rejected_before] == [rejected["plan_id"]]
    assert again.search["trials"] and \
        again.search["trials"][0]["plan_id"] != rejected["plan_id"]


def test_plan_when_too_few_crops_remain_does_not_search(identity_model, tmp_path,
                                                       fixed_seconds):
    query = make(identity_model, config(tmp_path))
    query.expect(crops=3)

    query.answer(crops([1, 2]))

    assert query.phase == "full" and "can pay back" in query.reason
    assert query.search["trials"] == []
    assert query.ledger.seconds["confirm"] == 0.0
    assert query.verdict().startswith(f"question {query.question.label!r}: kept the full "
                                      f"model ({query.reason})")
    assert query.cache.directory is not None and not list(query.cache.directory.glob("*.json"))


def test_plan_when_a_candidate_pays_only_if_it_surely_passes_does_not_confirm(
        identity_model, tmp_path, fixed_seconds):
    # 28 ROIs to come could return ~4.5 s on the best candidate, more than its ~1.7 s
    # confirmation, but it keeps the answers only ~3 times in 10: expected value negative.
    query = make(identity_model, config(tmp_path))
    query.expect(crops=30)

    query.answer(crops([1, 2]))

    assert query.phase == "full" and "p_pass" in query.reason
    assert query.search["trials"] == [] and query.ledger.seconds["confirm"] == 0.0


def test_confirm_when_a_batch_already_misses_the_target_stops_there(
        identity_model, tmp_path, fixed_seconds, monkeypatch):
    query = make(identity_model, config(tmp_path, profile_tracks=4))
    query.expect(crops=1000)
    flip_when_compressed(query, monkeypatch)

    query.answer(crops([1, 2]))
    query.answer(crops([3, 4], frame=1))  # two profiled batches

    trials = query.search["trials"]
    assert trials and all(t["batches_checked"] == 1 and not t["accepted"] for t in trials)
    assert query.ledger.seconds["confirm"] == pytest.approx(0.5 * len(trials))  # 2 x 0.25 s


@pytest.fixture()
def compiled(identity_model, monkeypatch):
    """One module per plan, as with ``compile: true`` (torch.compile itself left out)."""
    monkeypatch.setattr(torch, "compile", lambda module, **kwargs: module)
    compressor = Compressor(identity_model.model, int8="none")
    return compressor, CompiledPlans(identity_model.model, compressor)


@pytest.mark.parametrize(("crops", "confirms"), [(1000, False), (100_000, True)])
def test_plan_when_compiling_prices_each_graph_not_built_yet(
        identity_model, tmp_path, fixed_seconds, compiled, crops, confirms):
    # Two graphs (candidate and full) at ~30 s each: 1000 ROIs saving 0.16 s x p_pass ~0.29
    # cannot pay for them; 100k can.
    compressor, plans = compiled
    query = make(identity_model, config(tmp_path, compile=True), compressor=compressor,
                 compiled=plans)
    query.expect(crops=crops)

    query.answer(crops_of([1, 2]))

    assert bool(query.search["trials"]) is confirms
    assert ("can pay back" in query.reason) is not confirms


def test_confirm_when_compiling_builds_both_graphs_outside_the_paired_passes(
        identity_model, tmp_path, fixed_seconds, compiled):
    compressor, plans = compiled
    query = make(identity_model, config(tmp_path, compile=True), compressor=compressor,
                 compiled=plans)
    query.expect(crops=100_000)

    query.answer(crops_of([1, 2]))

    # the first call of each graph (it compiles): candidate 2 x 0.25 s, full 2 x 1 s
    assert query.ledger.seconds["build"] == pytest.approx(0.5 + 2.0, abs=0.05)
    assert query.ledger.paired_ratio() == (pytest.approx(4.0), "profile")
    assert plans.built(query.plan) and plans.built(Plan.keep_all(compressor.paths))


def test_audit_when_due_runs_the_whole_batch_both_ways_and_pairs_it(
        identity_model, tmp_path, fixed_seconds):
    query = make(identity_model, config(tmp_path, audit_every=4))
    query.expect(crops=1000)
    query.answer(crops([1, 2]))

    audited = query.answer(crops([3, 4], frame=1))
    plain = query.answer(crops([5, 6], frame=2))

    assert [a.extra["phase"] for a in audited] == ["audit", "audit"]
    assert all(a.extra["audit_agree"] for a in audited)
    assert [a.extra["phase"] for a in plain] == ["compressed", "compressed"]
    accounting = query.summary()["accounting"]
    assert accounting["paired_by"] == "audit" and accounting["paired_ratio"] == 4.0
    # full answers 2 s + audit 2 s + compressed 0.5 s priced at 4x = 6 s of full-model time
    assert accounting["full_equivalent_s"] == pytest.approx(2 + 2 + 0.5 * 4.0, abs=0.05)


def test_audit_when_compressed_answers_are_wrong_reprofiles_then_falls_back(
        identity_model, tmp_path, fixed_seconds, monkeypatch):
    query = make(identity_model, config(tmp_path, audit_every=4), max_replans=1)
    query.expect(crops=1000)
    query.answer(crops([1, 2]))
    flip_when_compressed(query, monkeypatch)

    audited = query.answer(crops([3], frame=1))
    assert query.phase == "profile" and query.replans == 1
    assert audited[0].extra["audit_agree"] is False and not audited[0].compressed
    query.answer(crops([5, 6], frame=2))  # re-profile; the candidate now disagrees
    assert query.phase == "full"
    assert query.summary()["agreement"]["audit"] == 0.0


def test_cache_when_second_answerer_starts_skips_profiling_and_reports_saving(
        identity_model, tmp_path, fixed_seconds):
    cfg = config(tmp_path)
    first = make(identity_model, cfg)
    first.expect(crops=1000)
    first.answer(crops([1, 2]))

    second = make(identity_model, cfg, cache=PlanCache(tmp_path / "cache"))
    answers = second.answer(crops([8, 9]))

    assert all(a.compressed for a in answers) and second.plan == first.plan
    summary = second.summary()
    assert summary["plan_source"] == "cache" and summary["cache"]["hits"] == 1
    assert summary["cache"]["saved_s"] == pytest.approx(first.ledger.planning_s, abs=1e-3)


def test_answer_when_mode_is_static_compresses_from_the_first_crop(tiny_vlm, tmp_path):
    query = make(tiny_vlm, config(tmp_path, mode="static"))

    answers = query.answer(crops([1]))

    assert query.plan_source == "static" and answers[0].compressed
    assert query.ledger.planning_s == pytest.approx(query.ledger.seconds["build"])


def test_answer_when_plan_file_names_the_question_uses_it(tiny_vlm, tmp_path):
    paths = layer_paths(tiny_vlm.model)
    plan = Plan({**{p: "keep" for p in paths}, paths[0]: "skip"}, "made ahead")
    file = save_library(tmp_path / "plans.json", "tiny", paths,
                        [{"question": QUERY.question, "plan": plan.to_dict(),
                          "planning_s": 12.5}])
    query = make(tiny_vlm, config(tmp_path, plan=str(file)),
                 library=load_library(file, paths))

    answers = query.answer(crops([1]))

    assert query.plan == plan and query.plan_source == "plan file"
    assert answers[0].compressed
    assert query.summary()["accounting"]["cache_saved_s"] == 12.5


@pytest.mark.parametrize(("flip", "source"), [(False, "borrowed"), (True, "profiled")])
def test_borrow_when_nearest_question_has_a_plan_checks_it_on_held_out_tracks(
        identity_model, tmp_path, fixed_seconds, monkeypatch, flip, source):
    cfg = config(tmp_path, borrow=True)
    first = make(identity_model, cfg)
    first.expect(crops=1000)
    first.answer(crops([1, 2]))
    fixed = runner.ask
    new = make(identity_model, cfg, question=BAG)
    new.expect(crops=1000)

    def flipped(vlm, q, batch, *args, **kwargs):
        asked = fixed(vlm, q, batch, *args, **kwargs)
        if flip and new.phase == "borrow" and new.compressor.current.compressed:
            asked.results[:] = [YesNo(1 - r.p_yes, -r.margin) for r in asked.results]
        return asked
    monkeypatch.setattr(runner, "ask", flipped)

    assert new.phase == "borrow"
    checked = new.answer(crops([5, 6]))

    assert {a.extra["phase"] for a in checked} == {"borrow"} and not checked[0].compressed
    assert new.search["mode" if source == "borrowed" else "trials"] is not None
    assert new.plan_source == source and new.phase == "compressed"


def test_answer_when_question_is_text_uses_full_model(tiny_vlm, tmp_path):
    query = make(tiny_vlm, config(tmp_path), QuestionConfig(question="Describe the person.",
                                                             answer="text"),
                 max_new_tokens=3)
    answers = query.answer(crops([1, 2, 3]))
    assert [a.compressed for a in answers] == [False] * 3 and query.phase == "text"


def test_summary_when_compressing_reports_accounting_without_unpaired_speedup(
        identity_model, tmp_path, fixed_seconds):
    query = make(identity_model, config(tmp_path, audit_every=3))
    query.expect(crops=1000)
    for frame, tracks in enumerate([[1, 2], [3, 4], [5, 6], [7, 8]]):
        query.answer(crops(tracks, frame))

    summary = query.summary()

    assert "speedup" not in summary["latency_ms"]
    accounting = summary["accounting"]
    assert set(accounting) >= {"vlm_s", "planning_s", "full_equivalent_s", "net_saving_s",
                               "break_even_rois", "paired_ratio"}
    assert accounting["crops"]["full"] == 2
    assert "saved" in query.verdict() or "LOST" in query.verdict()


def test_answer_when_two_queries_share_a_model_keeps_each_plan(tiny_vlm, tmp_path):
    compressor = Compressor(tiny_vlm.model)
    skip = make(tiny_vlm, config(tmp_path, mode="static"), compressor=compressor)
    paths = layer_paths(tiny_vlm.model)
    other = Plan({**{p: "keep" for p in paths}, paths[-1]: "skip"})
    file = save_library(tmp_path / "p.json", "tiny", paths,
                        [{"question": BAG.question, "plan": other.to_dict()}])
    bag = make(tiny_vlm, config(tmp_path, plan=str(file)), BAG, compressor=compressor,
               library=load_library(file, paths))

    first = bag.answer(crops([3]))
    second = skip.answer(crops([3]))

    assert first[0].plan_id == bag.plan.id != second[0].plan_id == skip.plan.id
    assert compressor.current.id == "full"


def test_plan_offline_when_sample_crops_given_returns_a_checked_plan_entry(
        identity_model, tmp_path, fixed_seconds):
    cfg = config(tmp_path)
    entry = plan_offline(identity_model, QUERY, crops([1, 2, 3, 4]), cfg,
                                  batch_size=2)

    plan = Plan.from_dict(entry["plan"])
    assert plan.compressed and entry["phase"] == "compressed"
    assert entry["held_out_crops"] == 2 and entry["agreement_held_out"] == 1.0
    assert entry["planning_s"] > 0
