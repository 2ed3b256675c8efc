"""Vision features kept for later questions: the shelf writes them in the model's process (after
the answers, idle or at the end), a real SQLite store indexes the shards, and a crop that
carries its features is answered as it was answered with its pixels."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest
import torch
from factories import make_crops

from vidqa.assets.types import ModelInfo
from vidqa.config import QuestionConfig, VlmConfig, load_config
from vidqa.serving.batching import BatchingService
from vidqa.store import EventStore
from vidqa.store.schema import connect
from vidqa.vlm.batch import BatchAnswerer
from vidqa.vlm.features import FeatureIndex, FeatureTarget, feature_key, model_of

QUESTIONS = ("Is this person wearing jeans?", "Is this person carrying a bag?")


@pytest.fixture()
def target(tmp_path: Path) -> FeatureTarget:
    cfg = load_config(None, ["store.features=true"])
    store = EventStore(cfg, tmp_path / "run").open()
    store.close()
    return FeatureTarget(str(store.path), store.run_id)


def answerer(vlm, features: FeatureTarget | None, questions=QUESTIONS[:1]) -> BatchAnswerer:
    cfg = VlmConfig(model=str(vlm.info.resolved), batch_size=4,
                    questions=tuple(QuestionConfig(question=q) for q in questions))
    return BatchAnswerer(vlm, dataclasses.replace(cfg, adaptive=dataclasses.replace(
        cfg.adaptive, enabled=False)), features=features)


def index_of(target: FeatureTarget, info: ModelInfo) -> FeatureIndex:
    conn = connect(Path(target.db), readonly=True)
    try:
        return FeatureIndex(conn, Path(target.db).parent, [target.run_id], *model_of(info))
    finally:
        conn.close()


def test_shelf_when_crops_answered_then_one_shard_indexed_and_features_answer_alike(
        tiny_vlm, target):
    crops = make_crops([1, 2, 3, 4, 5], frame=7)
    keeping = answerer(tiny_vlm, target, QUESTIONS)
    live = keeping.answer(crops)
    keeping.flush()

    index = index_of(target, tiny_vlm.info)
    keys = [feature_key(c.stream_id, c.track_id, c.frame_index) for c in crops]
    stored = index.load(keys)
    assert len(index) == 5 and list(stored) == keys
    assert {tuple(t.shape) for t in stored.values()} == {(4, tiny_vlm.model.config.text_config
                                                          .hidden_size)}
    assert {t.dtype for t in stored.values()} == {torch.float16}  # fp32 kept as fp16

    asked = [dataclasses.replace(c, features=stored[k]) for c, k in zip(crops, keys, strict=True)]
    again = answerer(tiny_vlm, None, QUESTIONS).answer(asked)
    for live_answers, asked_answers in zip(live, again, strict=True):
        for before, after in zip(live_answers, asked_answers, strict=True):
            assert before.question == after.question and before.answer == after.answer
            assert abs(before.margin - after.margin) < 1e-3


def test_index_when_features_of_another_model_then_counted_and_never_loaded(tiny_vlm, target):
    crops = make_crops([1, 2], frame=3)
    keeping = answerer(tiny_vlm, target)
    keeping.answer(crops)
    keeping.flush()
    other = ModelInfo(requested="x", resolved="another/model", revision="v2")
    index = index_of(target, other)
    assert len(index) == 0 and index.other_models == {f"{tiny_vlm.info.resolved}@main": 2}


def test_service_when_idle_then_it_flushes_the_features_on_its_thread(
        tiny_vlm, target, monkeypatch):
    monkeypatch.setattr("vidqa.serving.batching.IDLE_S", 0.2)
    keeping = answerer(tiny_vlm, target)
    service = BatchingService(keeping.answer, 4, 5.0, 16, flush=keeping.flush).start()
    try:
        service.submit(make_crops([9], frame=1)[0], [QUESTIONS[0]]).result(timeout=60)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not len(index_of(target, tiny_vlm.info)):
            time.sleep(0.1)
        assert len(index_of(target, tiny_vlm.info)) == 1  # written while the service runs
    finally:
        service.close()
    shards = list(Path(target.db).parent.glob("features/run-*/*"))
    assert len(shards) == 1 and shards[0].suffix == ".safetensors"  # no partial file left
