"""tools/bench_adaptive.py's token-budget rows, on the tiny model and synthetic crops: the fixed
tile answers every crop at its tile, and the planner without tiles is measured beside it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parents[1] / "tools"


@pytest.mark.slow
def test_bench_adaptive_when_tiles_given_then_token_budget_rows_beside_the_modes(
        tiny_vlm_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(TOOLS))
    monkeypatch.setenv("VIDQA_OFFLINE", "1")
    import bench_adaptive

    summary = bench_adaptive.main(str(tiny_vlm_dir), "cpu", "synthetic", count=12,
                                  batch_size=4, stream_s=0, reuse_crops=2, tiles=(32,),
                                  out=tmp_path / "bench.json")

    rows = {row["mode"]: row for row in summary["tables"]["clip"]}
    assert set(rows) == {"full", "static", "adaptive cold", "adaptive warm",
                         "adaptive, layers only", "tile 32 fixed"}
    fixed = rows["tile 32 fixed"]
    assert fixed["crops"] == 12 and fixed["plan"] == "tile 32"
    assert fixed["phase"] == "compressed" and fixed["audit_agreement"] is None  # no audits
    assert "tile 32 fixed" in capsys.readouterr().out
    assert (tmp_path / "bench.json").is_file()
    sys.modules.pop("bench_adaptive", None)
