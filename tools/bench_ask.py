"""Asking the past, measured: a new question about everyone already seen, answered from the
stored features and from the stored crops, against getting the same answers by running the
video again; and what keeping the features costs on disk. One invocation, paired.

1. **Re-run the video** (timed): ``vidqa run`` on the source with ``store.features: true`` and
   the question configured, model load included, with the full model (as an ask answers: the
   live answers are then the reference an ask must reproduce). Getting a new question's
   answers without vidqa ask costs this run again: its seconds per answered track are the
   "re-run" figure.
2. **Inflate** (``--tracks N``, optional): copies of the answered tracks (their rows, their crop
   and their features under new keys) until the store holds N tracks. The model's cost per crop
   does not depend on which crop it is, so N copies cost what N people would.
3. **Ask** the run's question again about every track, from the stored features (only the
   text model runs), then from the crops' JPEGs (``--from-crops``: vision too); each timed end
   to end and without the model load, and compared with the live answers about the same crops
   (agreement, largest |Δ p_yes|). A new question costs the same: the prompt is as long.
4. **Storage** per track: crop JPEG bytes, feature bytes.

CPU here (the offline stand-in, SmolVLM-256M shape)::

    python tools/bench_ask.py --frames 400

GPU (a random-weight 256M shape; the detector and video from the cache)::

    python tools/bench_ask.py --model random-256m --tracks 10000 --batch-size 64
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from safetensors import safe_open
from safetensors.torch import save_file

from vidqa.ask import past
from vidqa.config import load_config
from vidqa.engines import run_pipeline
from vidqa.run import prepare_run_dir
from vidqa.store import queries

QUESTION = "Is this person wearing jeans?"


def random_256m() -> str:
    """A random-weight model of SmolVLM-256M's shape (nothing to download)."""
    from vidqa.assets.smolvlm import SCALE_FACTOR, TEXT_256M, VISION_256M, build_random_smolvlm

    path = Path(tempfile.mkdtemp(prefix="vidqa-bench-")) / "random-256m"
    build_random_smolvlm(path, vision=VISION_256M, scale_factor=SCALE_FACTOR,
                         text={**TEXT_256M, "vocab_size": 49152, "head_dim": 64,
                               "tie_word_embeddings": True})
    return str(path)


def rerun(out: Path, overrides: list[str]) -> tuple[Path, dict[str, Any], float]:
    """Step 1: the run, timed; its store, summary and wall seconds."""
    cfg = load_config(None, [f"vlm.questions=[{json.dumps(QUESTION)}]", "store.features=true",
                             "vlm.adaptive.enabled=false", "sinks.video=false", *overrides])
    run_dir = prepare_run_dir(cfg, out / "run")
    start = time.perf_counter()
    summary = run_pipeline(cfg, run_dir)
    return run_dir / "store" / "vidqa.db", summary, time.perf_counter() - start


def inflate(db: Path, target: int) -> int:
    """Step 2: copies of the answered tracks until the store has ``target``; the tracks now."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.row_factory = sqlite3.Row
    answers = conn.execute("SELECT a.* FROM answers a WHERE a.id = (SELECT MAX(b.id) FROM "
                           "answers b WHERE b.run_id = a.run_id AND b.stream_id = a.stream_id "
                           "AND b.track_id = a.track_id)").fetchall()
    tracks = {(t["run_id"], t["stream_id"], t["track_id"]): t
              for t in conn.execute("SELECT * FROM tracks").fetchall()}
    have = len(answers)  # answered tracks: only those can be asked
    features = _all_features(conn, db.parent)
    shard = next(iter(conn.execute("SELECT * FROM features").fetchall()), None)
    rows, kept, next_id = [], {}, 1_000_000
    while have < target:
        answer = answers[(next_id - 1_000_000) % len(answers)]
        track = tracks[(answer["run_id"], answer["stream_id"], answer["track_id"])]
        key = f"{answer['stream_id']}/{answer['track_id']}/{answer['frame']}"
        rows.append((answer, track, next_id))
        if key in features:
            kept[f"{answer['stream_id']}/{next_id}/{answer['frame']}"] = features[key].clone()
        have += 1
        next_id += 1
    conn.execute("BEGIN")
    for answer, track, track_id in rows:
        _copy(conn, "answers", answer, track_id)
        _copy(conn, "tracks", track, track_id)
    conn.execute("COMMIT")
    names = list(kept)
    for start in range(0, len(names), 1024):  # shards as the run writes them, indexed
        part = {name: kept[name] for name in names[start:start + 1024]}
        relative = f"features/run-{shard['run_id']}/inflated-{start}.safetensors"
        save_file(part, str(db.parent / relative), metadata={"model": shard["model"],
                                                             "revision": shard["revision"]})
        conn.execute("INSERT INTO features (path, run_id, model, revision, dtype, tokens, crops, "
                     "created_at, bytes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     (relative, shard["run_id"], shard["model"], shard["revision"],
                      shard["dtype"], shard["tokens"], len(part), time.time(),
                      (db.parent / relative).stat().st_size))
    conn.close()
    return have


def _all_features(conn: sqlite3.Connection, folder: Path) -> dict[str, Any]:
    out = {}
    for (path,) in conn.execute("SELECT path FROM features"):
        with safe_open(str(folder / path), framework="pt") as opened:
            for key in opened.keys():
                out[key] = opened.get_tensor(key)
    return out


def _copy(conn: sqlite3.Connection, table: str, row: sqlite3.Row, track_id: int) -> None:
    values = {**dict(row), "id": None, "track_id": track_id}
    conn.execute(f"INSERT INTO {table} ({', '.join(values)}) VALUES "
                 f"({', '.join('?' * len(values))})", tuple(values.values()))


def asked(db: Path, overrides: list[str], features: bool) -> dict[str, Any]:
    """Step 3: question B over every track, timed (model load apart)."""
    cfg = past.store_config(db, None, overrides)
    start = time.perf_counter()
    result = past.ask(db, QUESTION, queries.Filters(), cfg, progress=False, features=features,
                     again=True)
    wall = time.perf_counter() - start
    return {**result.to_dict(), "agreement": past.agreement(db, result.ask_id),
            "wall_s": round(wall, 2),
            "answering_s": result.answering_s, "load_s": round(wall - result.answering_s, 2)}


def storage(db: Path) -> dict[str, float]:
    """Step 4: bytes per track of crops (JPEG) and features."""
    conn = sqlite3.connect(db)
    tracks = conn.execute("SELECT COUNT(*) FROM (SELECT DISTINCT run_id, stream_id, track_id "
                          "FROM answers)").fetchone()[0]
    snapshots = conn.execute("SELECT COALESCE(SUM(bytes), 0) FROM snapshots WHERE kind = "
                             "'crop'").fetchone()[0]
    features, crops = conn.execute("SELECT COALESCE(SUM(bytes), 0), COALESCE(SUM(crops), 0) "
                                   "FROM features").fetchone()
    conn.close()
    per = max(tracks, 1)
    return {"answered_tracks": tracks, "crop_jpeg_bytes_per_track": round(snapshots / per),
            "feature_bytes_per_track": round(features / per),
            "feature_bytes_per_crop": round(features / max(crops, 1))}


def main(args: argparse.Namespace) -> dict[str, Any]:
    overrides = list(args.set or [])
    if args.model:
        model = random_256m() if args.model == "random-256m" else args.model
        overrides.append(f"vlm.model={model}")
    if args.batch_size:
        overrides.append(f"vlm.batch_size={args.batch_size}")
    if args.source:
        overrides.append(f"source.path={args.source}")
    if args.frames:
        overrides.append(f"run.max_frames={args.frames}")
    out = args.keep or Path(tempfile.mkdtemp(prefix="vidqa-bench-ask-"))
    try:
        db, summary, run_s = rerun(out, overrides)
        size = storage(db)  # before inflating: what the run itself kept
        if args.tracks:
            inflate(db, args.tracks)
        ask_overrides = [o for o in overrides if o.startswith(("vlm.", "store."))]
        from_features = asked(db, ask_overrides, features=True)
        from_crops = asked(db, ask_overrides, features=False)
    finally:
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
    rerun_per_track = run_s / max(size["answered_tracks"], 1)
    tracks = from_features["answered"]
    result = {
        "model": from_features["model"], "frames": summary.get("frames"),
        "run_tracks": size["answered_tracks"], "rerun_s": round(run_s, 2),
        "rerun_s_per_track": round(rerun_per_track, 4), "tracks_asked": tracks,
        "from_features": from_features, "from_crops": from_crops,
        "storage": size,
        "speedup_features_vs_crops": _ratio(from_crops, from_features, "answering_s"),
        "speedup_features_vs_crops_end_to_end": _ratio(from_crops, from_features, "wall_s"),
        "speedup_features_vs_rerun": round(rerun_per_track * tracks
                                           / max(from_features["wall_s"], 1e-9), 2),
    }
    _print(result)
    return result


def _ratio(slow: dict[str, Any], fast: dict[str, Any], key: str) -> float:
    return round(slow[key] / max(fast[key], 1e-9), 2)


def _print(r: dict[str, Any]) -> None:
    f, c, s = r["from_features"], r["from_crops"], r["storage"]
    print(f"model {r['model']}; the run: {r['frames']} frames, {r['run_tracks']} answered "
          f"tracks in "
          f"{r['rerun_s']} s ({r['rerun_s_per_track']} s per track)")
    print(f"asked about {r['tracks_asked']} tracks:")
    for name, x in (("from features", f), ("from crops", c)):
        print(f"  {name:14s} {x['wall_s']:8.2f} s end to end ({x['load_s']:.2f} s loading), "
              f"answering {x['answering_s']:.2f} s = "
              f"{x['answered'] / max(x['answering_s'], 1e-9):.1f} answers/s; "
              f"{x['from_features']} from features, {x['from_crops']} from crops; agreement "
              f"with live {x['agreement']['agree']}, largest |dp_yes| "
              f"{x['agreement']['max_dp_yes']}")
    print(f"  features vs crops: {r['speedup_features_vs_crops']}x answering, "
          f"{r['speedup_features_vs_crops_end_to_end']}x end to end; features vs re-running the "
          f"video: {r['speedup_features_vs_rerun']}x")
    print(f"storage per track: crop JPEGs {s['crop_jpeg_bytes_per_track']} B; features "
          f"{s['feature_bytes_per_track']} B ({s['feature_bytes_per_crop']} B per crop)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="random-256m, a folder or a hub id (default: vlm.model)")
    parser.add_argument("--source", help="video (default: the sample video)")
    parser.add_argument("--frames", type=int, default=0, help="frames of the run (0: all)")
    parser.add_argument("--tracks", type=int, default=0, help="inflate the store to N tracks")
    parser.add_argument("--batch-size", type=int, default=0, help="vlm.batch_size")
    parser.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE")
    parser.add_argument("--out", type=Path, help="write the result as JSON here")
    parser.add_argument("--keep", type=Path, help="keep the run and its store in this folder")
    arguments = parser.parse_args()
    measured = main(arguments)
    if arguments.out:
        arguments.out.write_text(json.dumps(measured, indent=2))
    sys.exit(0)
