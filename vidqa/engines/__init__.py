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
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from loguru import logger

from vidqa.config import PipelineConfig
from vidqa.engines.local import LocalRun
from vidqa.engines.processes import processes_for, run_in_processes
from vidqa.errors import ConfigError
from vidqa.run import run_log


def run_pipeline(cfg: PipelineConfig, run_dir: Path, config_name: str = "",
                 serve: tuple[str, int] | None = None, token: str | None = None
                 ) -> dict[str, Any]:
    """Build the run and drive it on ``run.engine``, logging into ``run_dir/vidqa.log`` from
    the first line. ``serve``: (host, port) of a live web view that lives as long as the run."""
    if serve is not None and cfg.run.engine == "ray":
        raise ConfigError("--serve (the live web view) works with run.engine: local only: drop "
                          "--serve, or set run.engine: local")
    if serve is not None and cfg.run.processes > 1:
        raise ConfigError("--serve (the live web view) shows the streams of one process: drop "
                          "--serve, or set run.processes: 1")
    with run_log(run_dir), _live_view(serve, token) as view:
        logger.info("config: {}; run folder {}", config_name or "built-in defaults", run_dir)
        if cfg.run.engine == "ray":
            from vidqa.engines.ray import run_on_ray  # Ray is an optional extra

            return run_on_ray(cfg, run_dir)
        processes = processes_for(cfg) if serve is None else 1
        if processes > 1:
            return run_in_processes(cfg, run_dir, processes)
        return LocalRun.from_config(cfg, run_dir, view).run()


@contextmanager
def _live_view(serve: tuple[str, int] | None, token: str | None) -> Iterator[Any]:
    if serve is None:
        yield None
        return
    from vidqa.web import LiveView  # the server starts only when asked for

    with LiveView(serve[0], serve[1], token=token) as view:
        logger.info("live view: {}", view.url)
        yield view
