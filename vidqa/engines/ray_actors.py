"""What runs inside Ray for ``run.engine: ray``: the VLM as a Ray Serve deployment, one actor per
stream, the client between them, the event store.

* :class:`VlmDeployment` — one model per replica. ``@serve.batch`` gathers crops from every
  stream until ``vlm.batch_size`` or ``vlm.max_wait_ms``; the batch is answered by the local
  engine's batch function (:func:`~vidqa.serving.batch.answer_grouped` over a
  :class:`~vidqa.vlm.batch.BatchAnswerer`), on a thread (one batch at a time), so the replica
  keeps accepting crops meanwhile.
* :class:`StreamActor` — the local engine's front half, unchanged: a
  :class:`~vidqa.pipeline.Pipeline` (source, tracker, ROI policy, sinks) whose answer stage is
  the same :class:`~vidqa.serving.stage.AnswerStage`, talking to
  :class:`~vidqa.serving.ray_client.RayClient`.
* :class:`RayTransport` — when the run serves a live view or metrics, what the stream actors
  relay to it (:mod:`vidqa.web.relay`) waits in an inbox actor on the driver's machine until
  the driver takes it.

This module imports Ray at the top: only :mod:`vidqa.engines.ray` imports it, once Ray is known
to be installed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path
from typing import Any

import ray
from loguru import logger
from ray import serve

from vidqa import assets
from vidqa.config import PipelineConfig, StreamConfig, VlmConfig
from vidqa.engines.common import json_of, serve_stream
from vidqa.engines.fleet_plans import Fleet, SharedPlans
from vidqa.errors import VidqaError
from vidqa.messages import Answer
from vidqa.pipeline import stream_pipeline
from vidqa.run import LOG_NAME, run_log
from vidqa.serving.batch import answer_grouped
from vidqa.serving.batching import Request, ServiceStats
from vidqa.serving.ray_client import CropRequest, RayClient
from vidqa.sources import open_source
from vidqa.tracking import PersonTracker
from vidqa.vlm.batch import BatchAnswerer
from vidqa.vlm.factory import make_answerers
from vidqa.vlm.loading import load_vlm
from vidqa.web.relay import SHIP_TIMEOUT_S, Inbox

DEPLOYMENT = "VlmDeployment"
# The shared plans' namespace. Replicas run in the namespace of the driver that started Serve,
# which on a cluster we joined may be an earlier run's: an actor left in this run's own
# (anonymous) namespace would not be found.
PLANS_NAMESPACE = "vidqa"


class ActorProxy:
    """An actor called like the local object it wraps (each call waits for its reply)."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._handle, name)
        return lambda *args: ray.get(method.remote(*args))


class VlmDeployment:
    """The run's VLM: each replica loads the model and answers batches of crops. Made a
    deployment by :func:`start_vlm` (at import time it could not be pickled by reference)."""

    def __init__(self, cfg: VlmConfig, plans_name: str, run_dir: str,
                 files_s: float | None) -> None:
        logger.add(Path(run_dir) / LOG_NAME, level="INFO")  # the model's lines in the run's log
        self.cfg = cfg
        info = assets.resolve_vlm(cfg.model, cfg.revision)
        vlm = load_vlm(cfg, info)
        self.replica = serve.get_replica_context().replica_id.unique_id
        self.plans = ActorProxy(ray.get_actor(plans_name, namespace=PLANS_NAMESPACE))
        self.answerer = BatchAnswerer(vlm, cfg,
                                      make_answerers(vlm, cfg, Fleet(self.plans, self.replica)))
        if files_s is not None:  # the driver measured the files before deploying
            self.answerer.expect(seconds=files_s)
        self.stats = ServiceStats()
        self._answer_batch.set_max_batch_size(cfg.batch_size)
        self._answer_batch.set_batch_wait_timeout_s(cfg.max_wait_ms / 1000)
        self._post_summary()
        logger.info("VLM replica {} ready: {} on {}", self.replica, vlm.info.name, vlm.device)

    def info(self) -> Any:
        """The model that actually runs (stand-in or not), for the summaries."""
        return self.answerer.vlm.info

    async def answer(self, request: CropRequest) -> list[Answer]:
        """One crop's answers, one per question; a failed batch fails only its own crops."""
        result = await self._answer_batch(request)
        if isinstance(result, Exception):
            raise result
        return result

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02)  # set from the config in __init__
    async def _answer_batch(self, requests: list[CropRequest]
                            ) -> list[list[Answer] | Exception]:
        # The model runs off the event loop (which keeps gathering the next batch); serve.batch
        # runs one batch at a time, so the answerer is never entered twice.
        return await asyncio.to_thread(self._run, requests)

    def _run(self, requests: list[CropRequest]) -> list[list[Answer] | Exception]:
        started = time.time()
        results = answer_grouped(self.answerer.answer, [r[0] for r in requests],
                                 [r[1] for r in requests])
        for index, (result, (_, _, submitted)) in enumerate(zip(results, requests, strict=True)):
            if not isinstance(result, Exception):
                queue_ms = 1000 * (started - submitted)
                results[index] = [dataclasses.replace(a, queue_ms=queue_ms) for a in result]
        self.stats.add([Request(*request) for request in requests], started, time.time())
        self._post_summary()
        return results

    def _post_summary(self) -> None:
        """This replica's answerer and batching figures, to the shared plans (the run's summary
        reads them there: a handle cannot address one replica)."""
        service = {**self.stats.summary(self.cfg.batch_size, self.cfg.max_wait_ms / 1000),
                   "worker": "ray",
                   "restarts": None}  # Ray Serve restarts its replicas itself, uncounted here
        self.plans.post(self.replica, {**self.answerer.summary(), "service": service})


class StoreActor:
    """The run's event store, an actor on the driver's machine that every stream sends its
    records to (see :func:`start_store`)."""

    def __init__(self, cfg: PipelineConfig, run_dir: str) -> None:
        from vidqa.engines.local import open_store

        self.store = open_store(cfg, Path(run_dir))

    def put_many(self, records: list[Any]) -> None:
        self.store.put_many(records)

    def sync(self) -> None:
        """Returns once every record this caller sent before is queued (actor calls from one
        caller run in order)."""

    def figures(self) -> tuple[float, int]:
        """What /metrics reads of the store: its write lag and drops."""
        return self.store.write_lag_s, self.store.dropped

    def close(self, end_reason: str | None) -> dict[str, Any]:
        self.store.close(end_reason)
        return self.store.summary()

    def record_summary(self, summary: dict[str, Any]) -> None:
        self.store.record_summary(summary)


class StreamActor:
    """One stream of the run: the local engine's front half, its VLM behind the deployment.
    An actor through :func:`start_stream`; it loads its tracker as soon as it starts and opens
    its source in :meth:`run`."""

    def __init__(self, cfg: PipelineConfig, spec: StreamConfig, run_dir: str, path: str | None,
                 app: str, writer: Any | None, relay: Any = None) -> None:
        self.cfg, self.spec, self.app, self.writer = cfg, spec, app, writer
        self.relay = relay  # a RelayEnd when the run serves a live view or metrics
        self.run_dir = Path(run_dir)
        self.out_dir = self.run_dir / spec.id if cfg.streams else self.run_dir
        self.path = Path(path) if path else None
        self.pipeline = None
        self.stop_reason: str | None = None
        self.tracker: PersonTracker | None = None
        self.error: Exception | None = None  # raised by run(): a constructor error is opaque
        # The actor's CPUs, not every core of the machine (which other streams share).
        threads = max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
        with run_log(self.run_dir):  # every process appends to the run's one vidqa.log
            try:
                self.tracker = PersonTracker(spec.tracker,
                                             reset_after_s=spec.source.reset_tracks_after_s,
                                             threads=threads)
            except Exception as err:
                self.error = err

    def run(self, models: dict[str, Any]) -> dict[str, Any]:
        """The stream to its end; its summary. In a multi-stream run a failure is summarised,
        not raised (the other streams go on)."""
        with run_log(self.run_dir):
            try:
                return self._run(models)
            except VidqaError as err:
                if not self.cfg.streams:
                    raise
                logger.error("stream {} cannot start and is skipped: {}", self.spec.id, err)
                return {"stream_id": self.spec.id, "end_reason": "error", "error": str(err),
                        "frames": 0, "answers": 0}
            except Exception:  # logged and summarised by the pipeline
                summary = json_of(self.out_dir / "summary.json")
                if not self.cfg.streams or summary is None:
                    raise
                return summary

    def _run(self, models: dict[str, Any]) -> dict[str, Any]:
        if self.error is not None:
            raise self.error
        source = open_source(self.spec.source, self.path)
        client = RayClient(serve.get_deployment_handle(DEPLOYMENT, app_name=self.app),
                              self.cfg.vlm.queue_size)
        writer = self.writer
        models = {**models, "detector": self.tracker.detector.info}
        pipeline = stream_pipeline(self.cfg, self.spec, self.out_dir, source, self.tracker,
                                   client, models, writer.put_many.remote, [])
        pipeline.on_end.append(client.close)
        pipeline.on_end.append(lambda: ray.get(writer.sync.remote()))
        relay = self.relay.connect() if self.relay is not None else None
        if relay is not None:
            serve_stream(pipeline, self.spec, relay.view, relay.monitor, client)
        self.pipeline = pipeline
        pipeline.stop_reason = self.stop_reason
        try:
            return pipeline.run()
        finally:
            if relay is not None:
                relay.close()

    def detector(self) -> list[dict[str, Any]]:
        """How this stream's detector batched (alone in its actor: batches of one)."""
        return [self.tracker.detector.summary()] if self.tracker is not None else []

    def node(self) -> str:
        """The Ray node this actor runs on."""
        return ray.get_runtime_context().get_node_id()

    def stop(self, reason: str) -> None:
        """Stop at the next frame, as the local engine does on Ctrl-C or SIGTERM."""
        self.stop_reason = reason
        if self.pipeline is not None:
            self.pipeline.stop_reason = reason
            self.pipeline.answer_stage.stop.set()


# Ray-ified at use, not with decorators at import: a class Ray wraps while its module is still
# importing is pickled by value (with its module's globals, the logger's open files included).

def start_stream(cfg: PipelineConfig, spec: StreamConfig, run_dir: Path, path: Path | None,
                 app: str, writer: Any | None, num_cpus: float, relay: Any = None) -> Any:
    """The stream's actor; ``run()`` and ``stop()`` may run at the same time. Stream actors
    spread over the cluster's nodes (each tracks on its node's cores). ``relay``: a
    :class:`~vidqa.web.relay.RelayEnd` when the run serves a live view or metrics."""
    actor = ray.remote(StreamActor).options(num_cpus=num_cpus, max_concurrency=2,
                                            name=f"{app}-{spec.id}", scheduling_strategy="SPREAD")
    return actor.remote(cfg, spec, str(run_dir), None if path is None else str(path), app,
                        writer, relay)


def start_store(cfg: PipelineConfig, run_dir: Path, node_id: str) -> Any:
    """The run's event store, on ``node_id`` (the driver's machine)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    strategy = NodeAffinitySchedulingStrategy(node_id, soft=False)
    return ray.remote(StoreActor).options(num_cpus=0, scheduling_strategy=strategy).remote(
        cfg, str(run_dir))


class RayTransport:
    """:mod:`vidqa.web.relay` over Ray: stream actors post to the run's
    :class:`~vidqa.web.relay.Inbox`, an actor on the driver's machine (one call in flight per
    stream actor), the driver takes from it."""

    def __init__(self, inbox: Any) -> None:
        self.inbox = inbox
        self.dropped = 0  # by the inbox, as it last said (the run's side only)

    def ship(self, batch: list) -> frozenset[str]:
        return ray.get(self.inbox.post.remote(batch), timeout=SHIP_TIMEOUT_S)

    def receive(self, watched: frozenset[str], wait_s: float) -> list[list]:
        batches, self.dropped = ray.get(self.inbox.take.remote(watched), timeout=SHIP_TIMEOUT_S)
        if not batches and wait_s:
            time.sleep(wait_s)
        return batches


def start_view_inbox(node_id: str) -> Any:
    """The run's :class:`~vidqa.web.relay.Inbox`, on ``node_id`` (the driver's machine). Its
    module imports no model code: the actor's process starts in a moment."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    strategy = NodeAffinitySchedulingStrategy(node_id, soft=False)
    return ray.remote(Inbox).options(num_cpus=0, scheduling_strategy=strategy).remote()


def start_shared_plans(name: str) -> Any:
    """The run's shared plans, a named actor the replicas look up."""
    return ray.remote(SharedPlans).options(name=name, namespace=PLANS_NAMESPACE,
                                           num_cpus=0).remote()


def start_vlm(cfg: VlmConfig, app: str, plans_name: str, run_dir: Path, files_s: float | None,
              num_replicas: int, gpus: bool) -> Any:
    """Deploy the VLM as application ``app`` and wait until its replicas are up; ``files_s``:
    the files' seconds still to come (None: a live stream), told to every replica."""
    deployment = serve.deployment(
        VlmDeployment, name=DEPLOYMENT, num_replicas=num_replicas,
        ray_actor_options={"num_cpus": 1, "num_gpus": 1} if gpus else {"num_cpus": 1},
        # Every stream may have vlm.queue_size crops out; a replica must take a whole batch.
        max_ongoing_requests=max(cfg.queue_size, cfg.batch_size),
        logging_config={"enable_access_log": False})  # no log line per crop
    return serve.run(deployment.bind(cfg, plans_name, str(run_dir), files_s), name=app,
                     route_prefix=None)
