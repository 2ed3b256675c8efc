"""A real run on the sample clip with its live view, driven on a background thread, as
``vidqa run --serve`` would drive it: what the in-browser and stalled-client tests watch."""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from web_factories import wait_until

from vidqa.config import PipelineConfig, load_config
from vidqa.engines import run_pipeline
from vidqa.engines.local import LocalRun
from vidqa.run import prepare_run_dir

# Ask about a person from the first frame it is tracked in: on two busy cores the tracker may
# take seconds per frame, and the table should not wait for three of them.
FAST = ("roi.min_hits=1",)


def free_port() -> int:
    """A loopback port nobody listens on now (the OS picks it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def port_is_free(port: int) -> bool:
    """Whether a new server could bind 127.0.0.1:``port`` now."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def sample_config(folder: Path, vlm_dir: Path, overrides: tuple[str, ...] = (),
                  streams: tuple[str, ...] = ()) -> PipelineConfig:
    """The sample clip and the tiny VLM; ``streams`` ids make it a multi-stream run, each
    stream the same clip with the run's ``source`` settings."""
    path = None
    if streams:
        path = folder / "streams.yaml"
        specs = [{"id": sid, "source": {"kind": "file", "path": "auto"}} for sid in streams]
        path.write_text(yaml.safe_dump({"streams": specs}))
    return load_config(path, [f"vlm.model={vlm_dir}", *FAST, *overrides])


class ServedRun:
    """``run_pipeline(..., serve=("127.0.0.1", port))`` on a thread; ``finish`` joins it.

    The :class:`LocalRun` that run_pipeline builds is kept, so that :meth:`stop` can end the run the
    way its own threads do (``Pipeline.stop_reason``) once a test has seen what it needed,
    instead of betting on how many frames a busy machine tracks while a browser starts.
    """

    def __init__(self, cfg: PipelineConfig, run_dir: Path, monkeypatch: pytest.MonkeyPatch,
                 token: str | None = None) -> None:
        self.port = free_port()
        self.run_dir = prepare_run_dir(cfg, run_dir)
        self.url = f"http://127.0.0.1:{self.port}/" + (f"?token={token}" if token else "")
        self.summary: dict[str, Any] | None = None
        self.error: BaseException | None = None
        self.runs: list[LocalRun] = []
        build = LocalRun.from_config.__func__  # type: ignore[attr-defined]

        def kept(cls: type[LocalRun], *args: Any, **kwargs: Any) -> LocalRun:
            self.runs.append(build(cls, *args, **kwargs))
            return self.runs[-1]

        monkeypatch.setattr(LocalRun, "from_config", classmethod(kept))
        self._thread = threading.Thread(target=self._run, args=(cfg, token), daemon=True,
                                        name="served-run")

    def _run(self, cfg: PipelineConfig, token: str | None) -> None:
        try:
            self.summary = run_pipeline(cfg, self.run_dir, serve=("127.0.0.1", self.port),
                                        token=token)
        except BaseException as err:  # re-raised on the test's thread by finish()
            self.error = err

    def start(self) -> ServedRun:
        """Start the run and return once its live view answers."""
        self._thread.start()
        wait_until(self._serving, "the run's live view to answer", timeout_s=60)
        return self

    def _serving(self) -> bool:
        assert self.error is None, f"the run failed before serving: {self.error!r}"
        try:
            return httpx.get(self.api("api/state"), timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def api(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    def stop(self) -> None:
        """Ask every stream to stop after its current frame (end_reason "stopped")."""
        wait_until(lambda: bool(self.runs), "the run to be built")
        for pipeline in self.runs[0].pipelines:
            pipeline.stop_reason = "stopped"

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def finish(self, timeout_s: float = 150) -> dict[str, Any]:
        """Wait for the run to end; its summary, or the run's own exception."""
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), f"the run did not end within {timeout_s} s"
        if self.error is not None:
            raise self.error
        assert self.summary is not None
        return self.summary
