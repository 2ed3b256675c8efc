"""``run.engine: ray``: each stream a Ray actor, the VLM a Ray Serve deployment.

The driver (this process) checks the streams' files, joins ``run.ray_address`` or starts a local
Ray for the run, deploys the VLM (one replica per GPU of the cluster, asking for it; one CPU
replica when there is none), starts one :class:`~vidqa.engines.ray_actors.StreamActor` per
stream and waits for them; Ctrl-C or SIGTERM stops every stream at its next frame, as in the
local engine. The outputs are the local engine's: per stream ``annotated.mp4``, ``events.jsonl``
and ``summary.json`` (in ``run_dir/<id>/`` when there are several streams, else in
``run_dir``), the merged ``events.jsonl`` and the run's ``summary.json``, which also says
``"engine": "ray"``. Stream actors write where they run: on a cluster of several machines,
``run_dir`` must be a folder every machine sees (the merged events are written on this one).

Replicas share plans through a named actor (:mod:`vidqa.engines.fleet_plans`): a question
is profiled once for the whole run, not once per replica.

Ray is an optional extra, imported only here and only when the engine is used.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from loguru import logger

import vidqa
from vidqa.config import PipelineConfig, StreamConfig, VlmConfig
from vidqa.engines.common import (
    files_seconds,
    open_or_skip,
    run_summary,
    run_vlm_config,
    wait_or_stop,
    write_single,
)
from vidqa.errors import ConfigError
from vidqa.sources import source_path
from vidqa.storage import write_json
from vidqa.store import store_path

INSTALL_HINT = "pip install 'vidqa[ray]'"
STOP_WAIT_S = 60.0  # after Ctrl-C / SIGTERM: how long the streams get to close their outputs


def run_on_ray(cfg: PipelineConfig, run_dir: Path, view: Any = None, monitor: Any = None
               ) -> dict[str, Any]:
    """Run every stream of ``cfg`` on Ray; writes and returns the run's summary. ``view`` and
    ``monitor``: the run's live view and metrics, when it serves them (the stream actors relay
    what they show, :mod:`vidqa.web.relay`)."""
    ray, serve = _import_ray()
    specs, multi = cfg.stream_configs(), bool(cfg.streams)
    paths, failed, files_s = _check_files(specs, multi, cfg.run.max_frames)
    with _ray_session(ray, cfg.run.ray_address) as started_here:
        from vidqa.engines import ray_actors  # imports Ray at its top

        app = f"vidqa-{uuid.uuid4().hex[:8]}"
        serve.start(proxy_location="Disabled")  # crops go through handles: no HTTP at all
        try:
            return _run(ray, ray_actors, cfg, run_dir, app, specs, paths, failed, files_s,
                        _relay(ray, ray_actors, specs, view, monitor))
        finally:
            if not started_here:  # a cluster we joined keeps running; our app does not
                serve.delete(app)


def _run(ray: Any, ray_actors: Any, cfg: PipelineConfig, run_dir: Path, app: str,
         specs: list[StreamConfig], paths: dict[str, Path | None], failed: dict[str, str],
         files_s: float | None, relay: Any) -> dict[str, Any]:
    plans = ray_actors.start_shared_plans(f"{app}-plans")
    replicas, gpus = _replicas(ray, cfg.vlm)
    writer = ray_actors.start_store(cfg, run_dir, ray.get_runtime_context().get_node_id())
    if cfg.store.features:
        logger.warning("store.features: not kept with run.engine: ray (the VLM replicas may "
                       "run on other machines than the store); `vidqa ask` answers this run's "
                       "tracks from their snapshots")
    if relay is not None and relay.monitor is not None:
        relay.monitor.store = RemoteStore(ray, writer, store_path(cfg, run_dir))
    logger.info("ray: deploying the VLM as {} ({} replica(s) on {})", app, replicas,
                "GPU" if gpus else "CPU")
    vlm_cfg = run_vlm_config(cfg)
    # First the replicas, then the streams: created the other way round, the replica waited
    # for its CPU (a Serve scheduling stall seen on a 2-CPU local Ray) until the run hung.
    handle = ray_actors.start_vlm(vlm_cfg, app, f"{app}-plans", run_dir, files_s, replicas, gpus)
    models = {"vlm": handle.info.remote().result()}
    cpus = _stream_cpus(ray, len(specs), replicas)  # a replica takes one CPU
    relay_end = relay.end() if relay is not None else None
    actors = {spec.id: ray_actors.start_stream(cfg, spec, run_dir, paths[spec.id], app, writer,
                                            cpus, relay_end)
              for spec in specs if spec.id not in failed}
    started = time.perf_counter()
    try:
        with relay if relay is not None else nullcontext():
            summaries = _wait(ray, actors, models)
    except ray.exceptions.RayTaskError as err:  # one stream, and it failed: as the local engine
        ray.get(writer.close.remote("error"))
        write_single(run_dir, _vlm_summary(ray.get(plans.summaries.remote())), engine="ray")
        raise (err.cause if isinstance(err.cause, BaseException) else err) from None
    store = ray.get(writer.close.remote(_run_end_of(summaries)))
    vlm = _vlm_summary(ray.get(plans.summaries.remote()))
    summary = {**run_summary(cfg, run_dir, summaries, failed, vlm,
                             time.perf_counter() - started), "engine": "ray"}
    if cfg.streams:  # as the local engine: how the detectors batched
        summary["detectors"] = [{"stream": sid, **d} for sid, actor in actors.items()
                                for d in _detector_summary(ray, actor)]
    summary["nodes"] = {sid: _node(ray, actor) for sid, actor in actors.items()}
    summary["store"] = store
    ray.get(writer.record_summary.remote(summary))
    write_json(run_dir / "summary.json", summary)
    return summary


def _relay(ray: Any, ray_actors: Any, specs: list[StreamConfig], view: Any, monitor: Any
           ) -> Any:
    """What the stream actors relay to the live view and the metrics (a
    :class:`~vidqa.web.relay.RelayHost`, through an inbox on this machine), when served."""
    if view is None and monitor is None:
        return None
    from vidqa.web.relay import RelayHost

    inbox = ray_actors.start_view_inbox(ray.get_runtime_context().get_node_id())
    return RelayHost(ray_actors.RayTransport(inbox), specs, view, monitor)


class RemoteStore:
    """The store actor as /metrics and /api/runs read a store: its figures at scrape time,
    while the run's Ray is up."""

    def __init__(self, ray: Any, actor: Any, path: Path) -> None:
        self.ray, self.actor = ray, actor
        self.path = path  # on this machine: the actor runs here

    def _figures(self) -> tuple[float, int]:
        if not self.ray.is_initialized():  # a scrape as the run ends must not start a Ray
            raise RuntimeError("the run's Ray has shut down")
        return self.ray.get(self.actor.figures.remote(), timeout=10)

    @property
    def write_lag_s(self) -> float:
        return self._figures()[0]

    @property
    def dropped(self) -> int:
        return self._figures()[1]


def _run_end_of(summaries: dict[str, dict[str, Any]]) -> str:
    ends = {s.get("end_reason") for s in summaries.values()}
    return next(iter(ends)) if len(ends) == 1 else "partial"


def _detector_summary(ray: Any, actor: Any) -> list[dict[str, Any]]:
    try:
        return ray.get(actor.detector.remote(), timeout=30)
    except Exception as err:  # an actor that died has nothing to say
        logger.warning("no detector summary from a stream actor: {}", err)
        return []


def _node(ray: Any, actor: Any) -> str | None:
    """The Ray node a stream actor ran on."""
    try:
        return ray.get(actor.node.remote(), timeout=30)
    except Exception:  # an actor that died has nothing to say
        return None


def _wait(ray: Any, actors: dict[str, Any], models: dict[str, Any]
          ) -> dict[str, dict[str, Any]]:
    """Every stream's summary; Ctrl-C or SIGTERM here stops them all cleanly first."""
    refs = {stream_id: actor.run.remote(models) for stream_id, actor in actors.items()}
    pending = list(refs.values())

    def wait() -> None:
        nonlocal pending
        while pending:  # short waits keep the driver responsive to signals
            _, pending = ray.wait(pending, num_returns=len(pending), timeout=0.5)

    def stop(reason: str) -> None:
        for actor in actors.values():
            actor.stop.remote(reason)

    wait_or_stop(wait, stop, lambda: ray.wait(list(refs.values()), num_returns=len(refs),
                                              timeout=STOP_WAIT_S))
    return {stream_id: ray.get(ref) for stream_id, ref in refs.items()}


def _import_ray() -> tuple[Any, Any]:
    try:
        import ray
        from ray import serve
    except ImportError as err:
        raise ConfigError(f"run.engine is 'ray' but Ray is not installed ({err.name} is "
                          f"missing): {INSTALL_HINT}, or set run.engine: local") from None
    return ray, serve


@contextmanager
def _ray_session(ray: Any, address: str) -> Iterator[bool]:
    """Ray for the run: the one already connected (left as is), the cluster at ``address``
    (disconnected at the end) or a local one started here and bound to 127.0.0.1 (shut down at
    the end). Yields whether this run started Ray."""
    if ray.is_initialized():
        yield False
        return
    if address:
        logger.info("ray: joining the cluster at {}", address)
        ray.init(address=address, logging_level="warning")
    else:
        logger.info("ray: starting a local Ray on 127.0.0.1")
        ray.init(include_dashboard=False, _node_ip_address="127.0.0.1",
                 logging_level="warning", runtime_env={"env_vars": _worker_env()})
    try:
        yield not address
    finally:
        ray.shutdown()


def _worker_env() -> dict[str, str]:
    """The local Ray's workers import this very vidqa (a checkout on PYTHONPATH too)."""
    here = str(Path(vidqa.__file__).resolve().parent.parent)
    inherited = [str(Path(p).resolve()) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                 if p]
    return {"PYTHONPATH": os.pathsep.join(dict.fromkeys([here, *inherited]))}


def _check_files(specs: list[StreamConfig], multi: bool, max_frames: int
                 ) -> tuple[dict[str, Path | None], dict[str, str], float | None]:
    """Open every file and MOT folder once before Ray starts, as the local engine does before it
    loads the model: a missing or unreadable one fails the run fast (one stream) or is
    reported and skipped (several). Live sources are opened by their actors. Also the files'
    seconds still to come, for the replicas' planning (None with a live stream)."""
    paths: dict[str, Path | None] = {}
    failed: dict[str, str] = {}
    stats = []
    for spec in specs:
        paths[spec.id] = path = source_path(spec.source)
        if path is not None and (source := open_or_skip(spec, path, failed, multi)):
            stats.append(source.stats())
            source.close()
    return paths, failed, files_seconds(specs, stats, max_frames)


def _replicas(ray: Any, cfg: VlmConfig) -> tuple[int, bool]:
    """One replica per GPU of the cluster (each asks for one), else one CPU replica."""
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if gpus == 0 or cfg.device == "cpu":
        return 1, False
    return gpus, True


def _stream_cpus(ray: Any, streams: int, replica_cpus: int) -> float:
    """A CPU per stream actor when the cluster has them (so they spread), else a fair share."""
    free = ray.cluster_resources().get("CPU", 1.0) - replica_cpus
    return round(max(0.01, min(1.0, free / max(streams, 1))), 2)


def _vlm_summary(replicas: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The local engine's ``vlm`` section (stage figures and ``service`` batching); with
    several replicas the first one's, plus every replica's under ``replicas``."""
    ordered = [replicas[key] for key in sorted(replicas)]
    if len(ordered) <= 1:
        return ordered[0] if ordered else {}
    return {**ordered[0], "replicas": ordered}
