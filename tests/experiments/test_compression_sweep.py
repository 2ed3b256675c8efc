"""Experiment 2's tool on the tiny model: valid JSON and PNG, labels, config checks."""

from __future__ import annotations

import json

import pytest
from factories import FakeProfile, person_crops

from vidqa.errors import ConfigError
from vidqa.experiments.compression_sweep import (
    IMPACT_PNG,
    RESULTS_JSON,
    ReportConfig,
    compression_report,
    load_labels,
    tile_assignments,
)
from vidqa.messages import Crop
from vidqa.vlm.compression.compressor import layer_paths


def crops(count: int) -> list[Crop]:
    return [Crop(track_id=10 + i, frame_index=i, time_s=i / 10, bbox=(0, 0, 5, 10),
                crop_box=(0, 0, 5, 10), image=crop, reason="new")
            for i, crop in enumerate(person_crops(count))]


def test_compression_report_when_run_writes_json_and_png(tiny_vlm, tmp_path):
    paths = layer_paths(tiny_vlm.model)
    profile = FakeProfile.of(paths, reverse_for=("activation",))
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"10": "yes", "11": "no", "99": "yes"}))
    cfg = ReportConfig(fractions=(0.0, 0.5), metrics=("block_influence", "activation"),
                       repeats=1, batch_size=2)

    compression_report(tiny_vlm, crops(3), tmp_path / "out", cfg, labels=labels, profile=profile)

    results = json.loads((tmp_path / "out" / RESULTS_JSON).read_text())
    assert len(results["rows"]) == 4 * 3  # (2 metrics + random + reverse) x 3 operators
    row = results["rows"][0]
    assert {"speedup", "agreement", "mean_dp_yes", "weight_bytes", "peak_memory_bytes",
            "accuracy"} <= set(row)
    assert row["accuracy"]["labelled"] == 2
    assert results["baseline"]["end_agrees_with_start"]
    int8 = [r for r in results["rows"] if r["operator"] == "int8"]
    assert all(r["weight_ratio"] > 1 for r in int8)
    png = (tmp_path / "out" / IMPACT_PNG).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_compression_report_when_tiles_given_then_token_budget_rows_with_controls(tiny_vlm,
                                                                                  tmp_path):
    # Given the tiny model (64 px tiles), a 32 px tile, and two crops small enough for it
    profile = FakeProfile.of(layer_paths(tiny_vlm.model))
    items = crops(4)
    items[0] = Crop(**{**items[0].__dict__, "image": items[0].image[:30, :20]})
    items[1] = Crop(**{**items[1].__dict__, "image": items[1].image[:24, :16]})
    cfg = ReportConfig(fractions=(0.0, 0.5), operators=("skip",), metrics=("block_influence",),
                       controls=(), repeats=1, batch_size=2, tiles=(32, 384))

    results = compression_report(tiny_vlm, items, tmp_path / "out", cfg, profile=profile)

    # Then (384 px is not a size this model takes) by crop size, random and fixed 32 px rows
    tiles = {r["order"]: r for r in results["rows"] if r["operator"] == "tile"}
    assert set(tiles) == {"tile:by crop size", "tile:random", "tile:fixed 32"}
    assert tiles["tile:by crop size"]["tiles"] == {"32": 2, "64": 2}
    assert tiles["tile:random"]["tiles"] == {"32": 2, "64": 2}  # same budget, dealt at random
    assert tiles["tile:fixed 32"]["fraction"] == 0.75  # of the patches dropped
    assert all(0 <= r["agreement"] <= 1 for r in tiles.values())


def test_tile_assignments_when_crops_are_small_then_each_gets_the_smallest_tile_that_holds_it(
        tiny_vlm):
    images = [c.image for c in crops(3)]
    images[2] = images[2][:20, :10]
    cfg = ReportConfig(tiles=(32,), seed=1)

    rows = tile_assignments(tiny_vlm, images, cfg)

    assert rows["tile:by crop size"] == [64, 64, 32]
    assert sorted(rows["tile:random"]) == [32, 64, 64]


@pytest.mark.parametrize(("name", "text", "expected"), [
    ("l.json", '{"3": "Yes", "4": "no"}', {"3": "yes", "4": "no"}),
    ("l.csv", "track_id,answer\n3,yes\n4, NO\n", {"3": "yes", "4": "no"}),
])
def test_load_labels_when_file_is_valid_reads_yes_no(tmp_path, name, text, expected):
    path = tmp_path / name
    path.write_text(text)
    assert load_labels(path) == expected


@pytest.mark.parametrize(("name", "text"), [("l.json", '{"3": "maybe"}'), ("l.json", "[]"),
                                            ("l.csv", "id,label\n3,yes\n")])
def test_load_labels_when_file_is_invalid_raises(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError, match="track_id"):
        load_labels(path)


@pytest.mark.parametrize("kwargs", [{"fractions": (1.0,)}, {"operators": ("fp4",)},
                                    {"controls": ("shuffle",)}, {"repeats": 0}])
def test_report_config_when_invalid_raises(kwargs):
    with pytest.raises(ConfigError):
        ReportConfig(**kwargs)
