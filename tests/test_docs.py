"""The README's configuration reference and pipeline.yaml must stay true to the config classes."""

import dataclasses
from pathlib import Path

import pytest
import yaml

from vidqa.config import PipelineConfig

REPO = Path(__file__).parent.parent


def config_keys(cls=PipelineConfig, prefix=""):
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(default):
            yield from config_keys(type(default), f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}"


@pytest.mark.parametrize("key", list(config_keys()))
def test_readme_when_config_key_exists_then_documented(key):
    assert f"| {key} |" in (REPO / "README.md").read_text()


@pytest.mark.parametrize("key", list(config_keys()))
def test_pipeline_yaml_when_config_key_exists_then_present_with_comment(key):
    text = (REPO / "pipeline.yaml").read_text()
    node = yaml.safe_load(text)
    for part in key.split("."):
        assert part in node, f"{key} missing from pipeline.yaml"
        node = node[part]
    leaf = key.split(".")[-1]
    lines = [line for line in text.splitlines() if line.strip().startswith(f"{leaf}:")]
    assert lines and all("#" in line for line in lines)


def test_readme_when_opened_then_first_screen_shows_the_two_commands():
    first_screen = "\n".join((REPO / "README.md").read_text().splitlines()[:20])

    assert "make run" in first_screen and "make test" in first_screen
