"""Bad input through the real CLI: one line that names the thing and the fix, exit code 2."""

import os
import subprocess
import sys

import pytest
from factories import write_video

from vidqa.cli import main


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("VIDQA_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def run_cli(capsys, *args: str) -> tuple[int, str]:
    code = main(list(args))
    return code, capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--set", "vlm.bath_size=2"], "unknown key vlm.bath_size; valid keys in vlm:"),
    (["--set", "vlm.batch_size=two"], "vlm.batch_size must be an integer"),
    (["--set", "source.path=/nowhere/clip.mp4"], "/nowhere/clip.mp4"),
    (["--set", "source.kind=mot", "--set", "source.path=/tmp"], "/tmp"),
    (["missing.yaml"], "config file missing.yaml not found"),
])
def test_run_when_bad_input_then_one_line_error_and_exit_2(capsys, tmp_path, args, message):
    code, err = run_cli(capsys, "run", *args, "--out", str(tmp_path / "run"))

    assert code == 2
    assert message in err
    assert "Traceback" not in err


def test_run_when_model_id_unknown_offline_then_error_names_it(capsys, tmp_path):
    video = write_video(tmp_path / "clip.avi", frames=3)

    code, err = run_cli(capsys, "run", "--set", f"source.path={video}", "--set",
                        "vlm.model=nobody/no-such-vlm", "--out", str(tmp_path / "run"))

    assert code == 2
    assert "nobody/no-such-vlm" in err


def test_run_when_output_not_writable_then_error_names_directory(capsys, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")

    code, err = run_cli(capsys, "run", "--out", str(blocker / "run"))

    assert code == 2
    assert "cannot write to run directory" in err and "--out" in err


def test_run_when_run_directory_exists_then_refuses_without_overwrite(capsys, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "events.jsonl").write_text("{}\n")

    code, err = run_cli(capsys, "run", "--out", str(tmp_path / "run"))

    assert code == 2
    assert "already exists: pass --overwrite" in err
    assert (tmp_path / "run" / "events.jsonl").read_text() == "{}\n"


def test_cli_when_help_then_lists_commands():
    env = {**os.environ, "VIDQA_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-m", "vidqa.cli", "--help"], capture_output=True,
                         text=True, env=env, check=True).stdout

    for command in ("run", "assets", "validate", "compress-report"):
        assert command in out


@pytest.mark.parametrize("argv, key, value, message", [
    (["plan", "--rois", "5"], "crops", 5, "--rois is now --crops"),
    (["validate", "--query", "q1", "--question", "q2"], "question", ["q1", "q2"],
     "--query is now --question"),
])
def test_cli_when_an_old_option_name_is_used_then_it_works_and_names_the_new_one(
        capsys, argv, key, value, message):
    from vidqa.cli import _parser

    args = _parser().parse_args(argv)

    assert getattr(args, key) == value
    assert message in capsys.readouterr().err
