from pathlib import Path

import pytest

from vidqa.config import PipelineConfig, load_config
from vidqa.errors import ConfigError

REPO = Path(__file__).parent.parent


def test_load_config_when_shipped_yaml_then_every_key_is_valid():
    cfg = load_config(REPO / "pipeline.yaml")

    assert cfg.vlm.questions[0].answer == "yesno"
    assert cfg.source.path == "auto"


def test_load_config_when_no_file_then_defaults():
    assert load_config(None) == PipelineConfig()


@pytest.mark.parametrize("override, key, expected", [
    ("vlm.batch_size=4", ("vlm", "batch_size"), 4),
    ("tracker.conf=0.5", ("tracker", "conf"), 0.5),
    ("source.kind=mot", ("source", "kind"), "mot"),
    ("tracker.classes=[0, 1]", ("tracker", "classes"), (0, 1)),
    ("run.name=my run", ("run", "name"), "my run"),
])
def test_load_config_when_override_then_value_is_typed(override, key, expected):
    cfg = load_config(None, [override])

    assert getattr(getattr(cfg, key[0]), key[1]) == expected


def test_load_config_when_query_is_a_plain_string_then_it_becomes_a_yesno_query():
    cfg = load_config(None, ["vlm.questions=Is this person running?"])

    assert cfg.vlm.questions[0].question == "Is this person running?"
    assert cfg.vlm.questions[0].answer == "yesno"


@pytest.mark.parametrize("override, message", [
    ("vlm.bath_size=3",
     "unknown key vlm.bath_size; valid keys in vlm: model, questions, batch_size"),
    ("nope.x=1", "unknown key nope; valid keys in the top level: run, source"),
    ("vlm.batch_size=four", "vlm.batch_size must be an integer, got 'four'"),
    ("vlm.batch_size=0", "vlm.batch_size = 0 is out of range: expected >= 1"),
    ("tracker.conf=1.5", "tracker.conf = 1.5 is out of range"),
    ("sinks.video=maybe", "sinks.video must be true or false"),
    ("source.kind=camera", "source.kind = 'camera' is not allowed: choose one of 'file'"),
    ("source.kind=stream", "source.url is empty"),
    ("vlm.questions=[]", "vlm.questions is empty"),
    ("vlm.queries=[backpack]", "vlm.queries was renamed to vlm.questions"),
    ("vlm.questions=[{question: ''}]", "question is empty"),
    ("vlm.questions=[{question: q, answer: essay}]", "vlm.questions[0].answer = 'essay'"),
    ("vlm.adaptive.metrc=x", "valid keys in vlm.adaptive: enabled, profile_tracks"),
    ("tracker.imgsz=100", "a multiple of 32"),
    ("tracker.in_flight=0", "tracker.in_flight = 0 is out of range: expected at least 1"),
    ("roi=3", "roi must be a mapping"),
    ("novalue", "must look like section.key=value"),
])
def test_load_config_when_bad_value_then_error_names_key_and_fix(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])

    assert message in str(err.value)


def test_load_config_when_file_missing_then_error_names_it(tmp_path):
    with pytest.raises(ConfigError, match="nowhere.yaml not found"):
        load_config(tmp_path / "nowhere.yaml")


@pytest.mark.parametrize("text, message", [
    ("vlm: [unclosed", "is not valid YAML"),
    ("- a\n- b\n", "must hold a mapping of sections"),
    ("vlm:\n  batch_size: 2\n  colour: red\n", "unknown key vlm.colour"),
])
def test_load_config_when_file_malformed_then_one_line_error(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)

    with pytest.raises(ConfigError) as err:
        load_config(path)

    assert message in str(err.value)
    assert "\n" not in str(err.value)
