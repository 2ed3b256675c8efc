"""The history: a page, a JSON API over the event store, and the store's media files.

``GET /history``
    the page: filters, answers / alerts / tracks with their snapshots, alert clips, paging.
``GET /api/runs``
    every run of the store, newest first, with its counts.
``GET /api/answers``, ``/api/alerts``, ``/api/tracks``
    one page of rows, newest first: ``{"rows": [...], "next": id | null}``. Filters:
    ``run``, ``stream``, ``track``, ``question``, ``answer``, ``zone``, ``rule``, ``since``,
    ``until`` (epoch seconds, ``2h``-style ago, or ISO 8601), ``limit`` (<= 1000) and
    ``before`` (the previous page's ``next``).
``GET /api/facets``
    the values the filters can take.
``GET /media/{path}``
    a snapshot or clip, by the relative path a row gives; nothing outside the store's folder.

The store is read on its own read-only connection per request, in a worker thread, never on
the server's event loop. The token gate in front of the app covers all of it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from vidqa.errors import ConfigError
from vidqa.store import queries

STATIC = Path(__file__).parent / "static"
MEDIA_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webm": "video/webm",
               ".mp4": "video/mp4"}


def history_routes(store: Callable[[], Path | None], query: str) -> list[Route]:
    """The routes above, over the store file ``store()`` names (None: this run has none yet).
    ``query`` is the token's ``?token=...`` for the page's own URLs ("" without one)."""
    page = (STATIC / "history.html").read_text(encoding="utf-8").replace("__QUERY__", query)

    async def history_page(request: Request) -> Response:
        return HTMLResponse(page, headers={"Cache-Control": "no-store"})

    async def run_list(request: Request) -> Response:
        return await _answer(store, queries.runs)

    async def facets(request: Request) -> Response:
        return await _answer(store, queries.facets)

    def rows(kind: str) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            params = request.query_params
            try:
                filters = queries.Filters.parse(dict(params))
                limit = _integer(params, "limit", 100)
                before = _integer(params, "before", None)
            except ConfigError as err:
                return JSONResponse({"error": str(err)}, status_code=400)
            return await _answer(store, lambda path: queries.history(
                path, kind, filters, limit, before).to_dict())
        return endpoint

    async def media(request: Request) -> Response:
        path = store()
        if path is None:
            return _no_store()
        file = media_file(path.parent, request.path_params["path"])
        if file is None:
            return JSONResponse({"error": "no such file in the store"}, status_code=404)
        return FileResponse(file, media_type=MEDIA_TYPES.get(file.suffix.lower()),
                            headers={"Cache-Control": "private, max-age=3600"})

    return [Route("/history", history_page), Route("/api/runs", run_list),
            Route("/api/facets", facets),
            *(Route(f"/api/{kind}", rows(kind)) for kind in queries.KINDS),
            Route("/media/{path:path}", media)]


def media_file(folder: Path, relative: str) -> Path | None:
    """The file ``relative`` names under ``folder``, or None when there is none or the path
    would leave the folder (``..``, an absolute path, a link that points out)."""
    if not relative or relative.startswith(("/", "\\")) or "\\" in relative:
        return None
    if any(part in ("..", "") for part in relative.split("/")):
        return None
    root = folder.resolve()
    file = (root / relative).resolve()
    if not file.is_relative_to(root) or not file.is_file():
        return None
    return file


async def _answer(store: Callable[[], Path | None], read: Callable[[Path], Any]) -> Response:
    path = store()
    if path is None:
        return _no_store()
    try:
        return JSONResponse(await anyio.to_thread.run_sync(read, path))
    except ConfigError as err:
        return JSONResponse({"error": str(err)}, status_code=400)


def _integer(params: Any, name: str, default: int | None) -> int | None:
    text = params.get(name)
    if text in (None, ""):
        return default
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {text!r}") from None


def _no_store() -> Response:
    return JSONResponse({"error": "this run has no event store (yet)"}, status_code=404)
