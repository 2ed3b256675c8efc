"""A real run on the sample clip with its live view, driven on a background thread, as
``vidqa run --serve`` would drive it: what the in-browser and stalled-client tests watch, and
what they wait for in the page."""

from __future__ import annotations

import json
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
from vidqa.engines.processes import ProcessRun
from vidqa.run import prepare_run_dir

# Ask about a person from the first frame it is tracked in: on two busy cores the tracker may
# take seconds per frame, and the table should not wait for three of them.
FAST = ("roi.min_hits=1",)
WAIT_MS = 90_000  # what the page tests wait for, a guard for two busy cores


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

    The :class:`LocalRun` or :class:`ProcessRun` that run_pipeline builds is kept, so that
    :meth:`stop` can end the run the way its own threads do (``Pipeline.stop_reason``, or the
    stream processes' control queues; on Ray the stream actors' ``stop``) once a test has seen
    what it needed, instead of betting on how many frames a busy machine tracks while a
    browser starts.
    """

    def __init__(self, cfg: PipelineConfig, run_dir: Path, monkeypatch: pytest.MonkeyPatch,
                 token: str | None = None) -> None:
        self.port = free_port()
        self.run_dir = prepare_run_dir(cfg, run_dir)
        self.url = f"http://127.0.0.1:{self.port}/" + (f"?token={token}" if token else "")
        self.summary: dict[str, Any] | None = None
        self.error: BaseException | None = None
        self.engine = cfg.run.engine
        self.runs: list[LocalRun | ProcessRun] = []
        build = LocalRun.from_config.__func__  # type: ignore[attr-defined]
        run_processes = ProcessRun.run

        def kept(cls: type[LocalRun], *args: Any, **kwargs: Any) -> LocalRun:
            self.runs.append(build(cls, *args, **kwargs))
            return self.runs[-1]

        def kept_processes(run: ProcessRun) -> dict[str, Any]:
            self.runs.append(run)
            return run_processes(run)

        monkeypatch.setattr(LocalRun, "from_config", classmethod(kept))
        monkeypatch.setattr(ProcessRun, "run", kept_processes)
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
        if self.engine == "ray":
            _stop_ray_streams()
            return
        wait_until(lambda: bool(self.runs), "the run to be built")
        run = self.runs[0]
        if isinstance(run, ProcessRun):
            run.stop("stopped")
            return
        for pipeline in run.pipelines:
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


def _stop_ray_streams() -> None:
    """Stop the stream actors of the run on the Ray this process started (named
    ``vidqa-<run>-<stream id>``, the shared plans are in a namespace of their own)."""
    import ray

    names = [n for n in ray.util.list_named_actors() if n.startswith("vidqa-")]
    for name in names:
        ray.get_actor(name).stop.remote("stopped")


# -- what a page in Chromium shows (playwright pages) --------------------------------------------

def frames_of(page, stream_id: str) -> int:
    text = page.locator(f"article.stream[data-stream='{stream_id}'] "
                        f"dd[data-counter='frames']").inner_text()
    return int(text) if text.isdigit() else 0


def wait_videos(page, stream_ids: tuple[str, ...]) -> list[str]:
    """Every stream's card shows a decoded frame; returns the stream ids the page shows."""
    page.wait_for_function(
        "n => { const imgs = [...document.querySelectorAll('article.stream img.frame')];"
        " return imgs.length === n && imgs.every(i => i.naturalWidth > 0); }",
        arg=len(stream_ids), timeout=WAIT_MS)
    return page.eval_on_selector_all("article.stream", "cards => cards.map(c => c.dataset.stream)")


def wait_video_advances(page, stream_id: str) -> tuple[int, int, bool]:
    """The frames counter goes up and the picture changes: (frames before, after, changed)."""
    video = page.locator(f"article.stream[data-stream='{stream_id}'] img.frame")
    first, before = video.screenshot(), frames_of(page, stream_id)
    page.wait_for_function(
        f"Number(document.querySelector(\"article.stream[data-stream='{stream_id}'] "
        f"dd[data-counter='frames']\").textContent) > {before}", timeout=WAIT_MS)
    shots: list[bytes] = []
    wait_until(lambda: shots.append(video.screenshot()) or shots[-1] != first,
               f"stream {stream_id}'s video to show a newer frame", timeout_s=WAIT_MS / 1000)
    return before, frames_of(page, stream_id), shots[-1] != first


def wait_answers(page, stream_ids: tuple[str, ...]) -> dict[str, int]:
    """Rows with a yes/no answer for every stream; returns answered rows per stream."""
    count_rows = (
        "ids => Object.fromEntries(ids.map(id => [id, [...document.querySelectorAll("
        "'#tracks tbody tr[data-track^=\"' + id + ':\"]')].filter(r => "
        "r.querySelector('.badge.yes, .badge.no')).length]))")
    page.wait_for_function(f"Object.values(({count_rows})({json.dumps(list(stream_ids))}))"
                           ".every(n => n > 0)", timeout=WAIT_MS)
    return page.evaluate(count_rows, list(stream_ids))
