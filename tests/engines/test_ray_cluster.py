"""Beyond one machine: a real two-node Ray cluster on loopback — a head (``ray start --head``)
and a second raylet (``ray start --address``), each with its own CPUs and a resource of its own —
runs a three-stream config through ``run.ray_address``. The stream actors spread over both
nodes, and the answers equal the local engine's for the same config. A one-file run with
adaptive planning on shows that the driver tells the replica the file's length.

The runs on the cluster are ``vidqa run --set run.ray_address=...`` processes, as a user would
start them. Ray 2.60's head turns token authentication on when ``~/.ray/auth_token`` exists
(any local ``ray.init()`` writes one), while a joining node or driver goes without it unless
``RAY_AUTH_MODE=token``, and is refused; a process reads that mode once, when it imports Ray.
So the nodes and the drivers get ``RAY_AUTH_MODE=token`` (or the mode the user chose) and the
token in ``~/.ray/auth_token``.

Ray turns a node address of 127.0.0.1 into the machine's outward address; 127.0.0.2 and
127.0.0.3 are loopback too and are kept as given, so no packet leaves the host.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from factories import write_sample_clip

from vidqa.config import load_config
from vidqa.engines import run_pipeline
from vidqa.run import prepare_run_dir

pytest.importorskip("ray", reason="the Ray extra is not installed: pip install 'vidqa[ray]'")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

HEAD, SECOND = "127.0.0.2", "127.0.0.3"
FRAMES = 40
SIZE = (320, 240)
REPO = Path(__file__).parents[2]
NODES = ("import json, sys, ray; ray.init(address=sys.argv[1], logging_level='warning'); "
         "print(json.dumps({n['NodeID']: n['NodeManagerAddress'] for n in ray.nodes() "
         "if n['Alive']}))")


def ray_cli() -> str:
    found = Path(sys.executable).with_name("ray")
    return str(found) if found.exists() else (shutil.which("ray") or "ray")


def free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def ray_start(*args: str) -> None:
    done = subprocess.run([ray_cli(), "start", *args, "--disable-usage-stats",
                           "--object-store-memory=200000000"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, f"ray start {args} failed:\n{done.stdout}\n{done.stderr}"


def vidqa_run(config: Path, out: Path, *settings: str) -> Path:
    """``vidqa run config --out out --set ...`` in a process of its own: its run folder."""
    done = subprocess.run([sys.executable, "-m", "vidqa.cli", "run", str(config), "--out",
                           str(out), *(arg for one in settings for arg in ("--set", one))],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"vidqa run failed:\n{done.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module", autouse=True)
def _env() -> Iterator[None]:
    """What the nodes and the drivers read from the environment (a driver here is a process
    of its own: this one may have imported Ray with another authentication mode)."""
    mode = os.environ.get("RAY_AUTH_MODE", "token")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_AUTH_MODE", mode)
        patch.setenv("RAY_USAGE_STATS_ENABLED", "0")
        patch.setenv("VIDQA_OFFLINE", "1")  # the same detector in every process
        if mode == "token":  # the token every node and driver reads (~/.ray/auth_token)
            subprocess.run([ray_cli(), "get-auth-token", "--generate"], check=True,
                           capture_output=True, timeout=120)
        yield


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """The cluster's address; both nodes are stopped afterwards, even on failure."""
    port = free_port(HEAD)
    try:
        ray_start("--head", f"--node-ip-address={HEAD}", f"--port={port}", "--num-cpus=2",
                  '--resources={"head_node": 1}', "--include-dashboard=false")
        ray_start(f"--address={HEAD}:{port}", f"--node-ip-address={SECOND}", "--num-cpus=2",
                  '--resources={"second_node": 1}')
        yield f"{HEAD}:{port}"
    finally:
        subprocess.run([ray_cli(), "stop", "--force"], capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first FRAMES frames of vtest.avi at 320x240 (MJPG, 10 fps)."""
    return write_sample_clip(tmp_path_factory.mktemp("clips") / "walking.avi", FRAMES, SIZE)


@pytest.fixture(scope="module")
def runs(cluster: str, clip: Path, tiny_vlm_dir: Path,
         tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same three-stream config on the local engine and on the two-node cluster."""
    root = tmp_path_factory.mktemp("runs")
    config = root / "three.yaml"
    config.write_text(yaml.safe_dump({
        "run": {"max_frames": FRAMES},
        "roi": {"min_width": 8, "min_height": 16},  # people are 30-50 px tall here
        "vlm": {"model": str(tiny_vlm_dir), "adaptive": {"enabled": False}},
        "streams": [{"id": name, "source": {"kind": "file", "path": str(clip)}}
                    for name in ("gate", "hall", "yard")]}))
    cfg = load_config(config, [])
    local = prepare_run_dir(cfg, root / "local")
    run_pipeline(cfg, local, config_name=str(config))
    return {"local": local, "cluster": vidqa_run(config, root / "cluster", "run.engine=ray",
                                                 f"run.ray_address={cluster}")}


@pytest.fixture(scope="module")
def planned(runs: dict[str, Path], cluster: str, clip: Path, tiny_vlm_dir: Path,
            tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One file on the cluster with adaptive planning on, the cluster's second run (its
    shared plans must be found by a Serve that the first run's driver started): its run folder.
    The seventh new track comes at 3.6 s: planning then has seen more than the first 2 s of
    crops, which are left out of the rate."""
    root = tmp_path_factory.mktemp("planned")
    config = root / "file.yaml"
    config.write_text(yaml.safe_dump({
        "run": {"max_frames": FRAMES},
        "source": {"kind": "file", "path": str(clip)},
        "roi": {"min_width": 8, "min_height": 16},
        "vlm": {"model": str(tiny_vlm_dir),
                "adaptive": {"profile_tracks": 7, "cache_dir": str(root / "plans")}}}))
    return vidqa_run(config, root / "run", "run.engine=ray", f"run.ray_address={cluster}")


def summary_of(run: Path) -> dict[str, Any]:
    return json.loads((run / "summary.json").read_text())


def answers(events: Path) -> dict[tuple[str, int, str], str]:
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    return {(e["stream_id"], e["track_id"], e["question"]): e["answer"] for e in lines}


def test_cluster_when_two_nodes_then_stream_actors_run_on_both(runs, cluster):
    summary = summary_of(runs["cluster"])
    listed = subprocess.run([sys.executable, "-c", NODES, cluster], capture_output=True,
                            text=True, timeout=300)
    nodes = json.loads(listed.stdout.splitlines()[-1])

    assert summary["engine"] == "ray" and summary["end_reason"] == "completed"
    assert set(nodes.values()) == {HEAD, SECOND}
    assert {nodes[node] for node in summary["nodes"].values()} == {HEAD, SECOND}


def test_cluster_when_run_ends_then_answers_equal_the_local_engines(runs):
    local = answers(runs["local"] / "events.jsonl")

    assert len(local) >= 3 * 3  # each stream's people were tracked and asked
    assert answers(runs["cluster"] / "events.jsonl") == local


def test_cluster_when_file_and_adaptive_then_replica_plans_with_the_files_length(planned):
    searched = [q["search"] for q in summary_of(planned)["vlm"]["questions"] if "search" in q]

    assert "adaptive planning knows the files' length: 4 s of stream" in \
        (planned / "vidqa.log").read_text()  # 40 frames at 10 fps, told to the replica
    assert searched, "no question was planned: the run ended before its profile was complete"
    # A live stream's forecast reads "... x horizon 300 s"; a file's, "... x N s of 4 s left".
    assert all(s["forecast"].endswith("of 4 s left") for s in searched), searched
