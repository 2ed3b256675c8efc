import json

import numpy as np
import pytest
from factories import person_crops

from vidqa.assets.types import ModelInfo
from vidqa.config import PipelineConfig, RoiConfig
from vidqa.errors import ConfigError
from vidqa.experiments import layer_stability as validate
from vidqa.experiments.stats import DECISION_TABLE
from vidqa.messages import Crop
from vidqa.pipeline import collect_crops
from vidqa.roi import distinct_tracks
from vidqa.vlm.model import VisionLanguageModel
from vidqa.vlm.profiling.importance import Profile

QUESTIONS = ["Is this person carrying a backpack?", "Is this worker wearing a hard hat?"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_crops(track_ids: list[int]) -> list[Crop]:
    crops = person_crops(len(track_ids), seed=1)
    return [Crop(track_id=t, frame_index=i, time_s=i / 10, bbox=(0, 0, c.shape[1], c.shape[0]),
                crop_box=(0, 0, c.shape[1], c.shape[0]), image=c, reason="new")
            for i, (t, c) in enumerate(zip(track_ids, crops, strict=True))]


@pytest.fixture(scope="module")
def validated(tiny_vlm_dir, tmp_path_factory):
    """A validation of 4 distinct tracks (from 6 ROIs, one track repeated), 2 questions."""
    info = ModelInfo(requested="tiny", resolved=str(tiny_vlm_dir), standin=True)
    vlm = VisionLanguageModel.load(info, device="cpu", local_files_only=True)
    out = tmp_path_factory.mktemp("validation")
    results = validate.run_validation("synthetic", QUESTIONS, out, n_crops=4,
                                      crops=make_crops([3, 3, 5, 8, 9, 11]), vlm=vlm)
    return results, out


def test_run_validation_when_done_then_json_has_every_documented_field(validated):
    _, out = validated

    data = json.loads((out / validate.RESULTS_NAME).read_text())

    assert validate.check_results(data) == []
    assert data["schema"] == validate.SCHEMA
    assert data["model"]["standin"] is True and data["warning"]
    assert [r["track_id"] for r in data["rois"]] == [3, 5, 8, 9]
    assert len(data["layers"]) == 6
    assert [q["question"] for q in data["questions"]] == QUESTIONS
    assert set(data["cross_question"]) == set(data["questions"][0]["profile"]["scores"])
    assert data["decision"]["table"] == DECISION_TABLE


def test_run_validation_when_done_then_raw_numbers_match_the_returned_results(validated):
    results, out = validated

    data = json.loads((out / validate.RESULTS_NAME).read_text())

    for saved, returned in zip(data["questions"], results["questions"], strict=True):
        for metric, matrix in returned["profile"]["scores"].items():
            np.testing.assert_array_equal(saved["profile"]["scores"][metric], matrix)
        assert [a["answer"] for a in saved["answers"]] == \
            ["yes" if m > 0 else "no" for m in saved["profile"]["margins"]]


def test_run_validation_when_done_then_png_is_written(validated):
    _, out = validated

    png = (out / validate.PLOT_NAME).read_bytes()

    assert png.startswith(PNG_MAGIC)
    assert len(png) > 20_000  # 4 metrics x (heatmap + mean plot), not an empty canvas


def test_format_summary_when_validated_then_prints_table_verdict_and_baselines(validated):
    results, _ = validated

    text = validate.format_summary(results)

    assert DECISION_TABLE in text
    assert results["decision"]["verdict"] in text
    assert "[" in text  # null baselines next to the values
    assert "WARNING" in text
    for metric in ("activation", "block_influence", "task_skip", "task_int8"):
        assert metric in text


def test_module_docstring_when_read_then_documents_every_result_field():
    for field in validate.RESULT_FIELDS:
        assert f"``{field}``" in validate.__doc__


@pytest.mark.parametrize(("mutate", "problem"), [
    (lambda d: d.pop("decision"), "decision: missing"),
    (lambda d: d.update(rois="8"), "rois: expected"),
    (lambda d: d["model"].pop("standin"), "model.standin: missing"),
    (lambda d: d["questions"][0]["profile"]["scores"]["activation"].pop(), "shape"),
    (lambda d: d["questions"][1]["profile"]["stats"]["task_skip"].pop("spearman"),
     "task_skip.spearman: missing"),
])
def test_check_results_when_a_field_is_broken_then_reports_it(validated, mutate, problem):
    data = json.loads((validated[1] / validate.RESULTS_NAME).read_text())

    mutate(data)

    assert any(problem in p for p in validate.check_results(data))


def test_distinct_tracks_when_a_track_repeats_then_first_crop_of_each_and_stops_early():
    consumed = []

    def stream():
        for crop in make_crops([4, 4, 6, 4, 7, 9]):
            consumed.append(crop.track_id)
            yield crop

    chosen = distinct_tracks(stream(), 3)

    assert [(r.track_id, r.frame_index) for r in chosen] == [(4, 0), (6, 2), (7, 4)]
    assert consumed == [4, 4, 6, 4, 7]  # nothing read past the third track


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"questions": []}, "question"),
    ({"questions": ["  "]}, "question"),
    ({"n_crops": 0}, "n_rois"),
    ({"primary_metric": "task_skip", "task_impact": False}, "primary metric"),
    ({"metrics": ("activation", "magnitude")}, "magnitude"),
    ({"task_impact": ("task_fp4",), "primary_metric": "activation"}, "task_fp4"),
])
def test_run_validation_when_arguments_bad_then_config_error(tmp_path, kwargs, match):
    arguments = {"source": "synthetic", "questions": QUESTIONS, "out_dir": tmp_path, **kwargs}

    with pytest.raises(ConfigError, match=match):
        validate.run_validation(**arguments)


@pytest.mark.slow
def test_collect_crops_when_sample_video_then_distinct_tracks_of_people():
    crops, stats = collect_crops(PipelineConfig(), 3, max_frames=60)

    assert len({r.track_id for r in crops}) == len(crops) >= 2
    assert all(r.image.shape[0] >= RoiConfig().min_height for r in crops)
    assert stats["frames_read"] <= 61


def test_decide_when_primary_metric_was_skipped_then_verdict_says_why():
    stats = {"pearson": {"value": 0.9}, "verdict": "> 0.7 high → proceed"}
    profile = Profile(question="q?", layers=[], scores={"activation": np.ones((2, 3))},
                      margins=np.zeros(2), p_yes=np.full(2, 0.5), crop_ids=[1, 2], seconds={},
                      skipped={"task_int8": "no cuda kernels"})

    decision = validate.decide([profile], [{"activation": stats}], "task_int8")

    assert decision["verdict"] == "undefined: task_int8 was not measured (no cuda kernels)"
    assert decision["verdicts"] == {"activation": {"q?": "> 0.7 high → proceed"}}
