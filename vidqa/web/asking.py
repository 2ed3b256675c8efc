"""The history page's ask box: a new question over the filtered history, answered by a
``vidqa ask`` process while the page watches its answers arrive.

``POST /api/ask`` with ``{"question": ..., "filters": {stream, run, track, zone, since,
until}}`` starts ``python -m vidqa ask STORE QUESTION --tag TAG ...`` (an argument list, no
shell) and answers ``202 {"tag": ...}``; one ask runs at a time (409 while one does).
``GET /api/asks?tag=TAG`` says how far it is: the ask's row of the store (tracks, answered, from
features or crops, end) once the process has written it, whether the process still runs, and
the last lines it printed. Its answers are ``GET /api/answers?ask=ID``: the store is the
channel, so what the page shows is what ``vidqa events`` shows.

The ask runs in its own process: it loads its own copy of the model (the run's model keeps
serving the cameras), and a crash of either leaves the other running. Stopping the server
interrupts the ask (SIGINT: it keeps what it answered; asking again resumes).
"""

from __future__ import annotations

import contextlib
import secrets
import signal
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from vidqa.store import queries

FILTERS = ("run", "stream", "track", "zone", "since", "until")  # what `vidqa ask` takes
MAX_QUESTION = 500  # characters
OUTPUT_LINES = 20  # lines of the ask's output kept for the page
STOP_WAIT_S = 5.0


class AskJobs:
    """At most one ``vidqa ask`` process at a time, started for the page."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self._tag: str | None = None
        self._output: deque[str] = deque(maxlen=OUTPUT_LINES)

    def start(self, store: Path, question: str, filters: dict[str, str]) -> str:
        """Start an ask; its tag. Raises :class:`Busy` while another runs."""
        with self._lock:
            if self._process is not None and self._process.poll() is None:
                raise Busy(f"an ask is running ({self._tag}): wait for it to end")
            tag = secrets.token_hex(8)
            args = [sys.executable, "-m", "vidqa", "ask", str(store), question, "--tag", tag,
                    "--quiet"]
            for name in FILTERS:
                if filters.get(name):
                    args += [f"--{name}", str(filters[name])]
            self._output.clear()
            self._process = subprocess.Popen(args, stdout=subprocess.PIPE,
                                             stderr=subprocess.STDOUT, text=True)
            self._tag = tag
            threading.Thread(target=self._read, args=(self._process,), name="ask-output",
                             daemon=True).start()
            return tag

    def status(self, tag: str) -> dict[str, Any]:
        with self._lock:
            mine = tag == self._tag and self._process is not None
            running = mine and self._process.poll() is None
            code = self._process.returncode if mine and not running else None
            output = list(self._output) if mine else []
        return {"tag": tag, "running": running, "exit_code": code, "output": output}

    def close(self) -> None:
        """Interrupt a running ask (it keeps what it answered), then make sure it ended."""
        with self._lock:
            process = self._process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def _read(self, process: subprocess.Popen) -> None:
        for line in process.stdout:
            self._output.append(line.rstrip())
        with contextlib.suppress(OSError):
            process.stdout.close()


class Busy(RuntimeError):
    """Another ask is running."""


def ask_routes(store: Callable[[], Path | None], jobs: AskJobs) -> list[Route]:
    """``POST /api/ask`` and ``GET /api/asks`` (see the module doc)."""

    async def start(request: Request) -> Response:
        path = store()
        if path is None:
            return JSONResponse({"error": "this run has no event store (yet)"}, status_code=404)
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": "send JSON: {\"question\": ..., \"filters\": {...}}"},
                                status_code=400)
        question = str(body.get("question") or "").strip() if isinstance(body, dict) else ""
        filters = body.get("filters") or {} if isinstance(body, dict) else {}
        if not question or len(question) > MAX_QUESTION or not isinstance(filters, dict):
            return JSONResponse({"error": f"give a question of 1 to {MAX_QUESTION} characters "
                                          f"and filters as an object"}, status_code=400)
        try:
            tag = jobs.start(path, question, {k: str(v) for k, v in filters.items()
                                              if k in FILTERS and v not in (None, "")})
        except Busy as err:
            return JSONResponse({"error": str(err)}, status_code=409)
        return JSONResponse({"tag": tag}, status_code=202)

    async def status(request: Request) -> Response:
        tag = request.query_params.get("tag", "")
        path = store()
        if not tag or path is None:
            return JSONResponse({"error": "give ?tag= of an ask this page started"},
                                status_code=400)
        rows = await anyio.to_thread.run_sync(queries.asks, path, tag)
        return JSONResponse({**jobs.status(tag), "ask": rows[0] if rows else None})

    return [Route("/api/ask", start, methods=["POST"]), Route("/api/asks", status)]
