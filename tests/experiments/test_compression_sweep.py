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
