"""How a run's streams are executed: ``local`` (:class:`~vidqa.engines.local.LocalRun`: streams
on threads, one model service; with ``run.processes`` > 1 the streams split over several
processes that share one model worker, :mod:`vidqa.engines.processes`) or ``ray``
(:mod:`vidqa.engines.ray`: each stream a Ray actor, the model a Ray Serve deployment). All write
the same outputs; what they do alike is in :mod:`vidqa.engines.common`.

This is the layer above the pipeline: every engine builds its streams with
:func:`vidqa.pipeline.stream_pipeline`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from loguru import logger

from vidqa.config import PipelineConfig
from vidqa.engines.local import LocalRun
from vidqa.engines.processes import processes_for, run_in_processes
from vidqa.run import run_log


def run_pipeline(cfg: PipelineConfig, run_dir: Path, config_name: str = "",
                 serve: tuple[str, int] | None = None, token: str | None = None,
                 metrics: tuple[str, int] | None = None) -> dict[str, Any]:
    """Build the run and drive it on ``run.engine``, logging into ``run_dir/vidqa.log`` from
    the first line. ``serve``: (host, port) of a live web view that lives as long as the run
    (with ``/metrics`` and ``/healthz``); ``metrics``: (host, port) of a server of only those.
    Both serve every layout: streams in stream processes or Ray actors relay what the servers
    show (:mod:`vidqa.web.relay`)."""
    with run_log(run_dir), _servers(serve, metrics, token) as (view, monitor):
        logger.info("config: {}; run folder {}", config_name or "built-in defaults", run_dir)
        if cfg.run.engine == "ray":
            from vidqa.engines.ray import run_on_ray  # Ray is an optional extra

            return run_on_ray(cfg, run_dir, view, monitor)
        processes = processes_for(cfg)
        if processes > 1:
            return run_in_processes(cfg, run_dir, processes, view, monitor)
        return LocalRun.from_config(cfg, run_dir, view, monitor=monitor).run()


@contextmanager
def _servers(serve: tuple[str, int] | None, metrics: tuple[str, int] | None,
             token: str | None) -> Iterator[tuple[Any, Any]]:
    """The live view and the metrics-only server the run was asked for, and their monitor."""
    if serve is None and metrics is None:
        yield None, None
        return
    from vidqa.web import LiveView  # the servers start only when asked for
    from vidqa.web.metrics import Monitor

    monitor = Monitor()
    with ExitStack() as stack:
        view = None
        if serve is not None:
            view = stack.enter_context(LiveView(serve[0], serve[1], token=token,
                                                monitor=monitor))
            logger.info("live view: {} (history: {}; and /metrics, /healthz)", view.url,
                        view.address("history"))
        if metrics is not None:
            server = stack.enter_context(LiveView(metrics[0], metrics[1], token=token,
                                                  monitor=monitor, page=False))
            logger.info("metrics: {}metrics, health: {}healthz", server.url.split("?")[0],
                        server.url.split("?")[0])
        yield view, monitor
