"""The browser dashboard: GET / and its static files under /web/, from the package.

The page is plain HTML, CSS and ES modules in ``chatterbox_status/web/`` (no build step,
nothing from elsewhere). Every URL it uses is relative, so it works at the root and
behind a proxy that serves the app under a path prefix. Files carry no content hash in
their names, so browsers revalidate them (``no-cache`` with an ETag: a 304 when nothing
changed) and never run a stale script after an upgrade. aiohttp's FileResponse sends
them: ETags, 304s and Range requests, with the file read off the event loop.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from aiohttp import web

from ..exceptions import NotFound
from .routing import Param, Reply, api_route

routes = web.RouteTableDef()

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
INDEX = "index.html"

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".json": "application/json",
}
# Plain names only: no folders, no dot files, no way out of WEB_DIR.
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

# The page loads only its own files; it talks to the API wherever ?api= points it (any
# http or https origin, which CORS_ORIGINS on that server must allow) and plays blob: audio.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "media-src 'self' blob:",
        "connect-src 'self' http: https:",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)


IF_NONE_MATCH = Param("If-None-Match", {"type": "string"}, "ETags the client has", where="header")
NOT_MODIFIED = Reply("Unchanged since the ETag sent in If-None-Match")
PARTIAL = Reply("The byte range the Range header asked for")


async def respond(name: str) -> web.FileResponse | None:
    """The file, sent by aiohttp (ETag, 304, Range, read off the loop) with the headers a
    page needs; None when there is no such dashboard file."""
    suffix = Path(name).suffix
    if not SAFE_NAME.match(name) or suffix not in CONTENT_TYPES:
        return None
    path = WEB_DIR / name
    if not await asyncio.to_thread(path.is_file):
        return None
    headers = {
        "Content-Type": CONTENT_TYPES[suffix],
        "Cache-Control": "no-cache",
        "X-Content-Type-Options": "nosniff",
    }
    if suffix == ".html":
        headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        headers["Referrer-Policy"] = "no-referrer"
    return web.FileResponse(path, headers=headers)


@api_route(
    routes, "GET", "/",
    operation_id="getDashboard",
    summary="The browser dashboard",
    tag="dashboard",
    responses={200: Reply("The page", media=("text/html",)), 206: PARTIAL, 304: NOT_MODIFIED},
    errors=(NotFound,),
    params=(IF_NONE_MATCH,),
)
async def index(request: web.Request) -> web.StreamResponse:
    response = await respond(INDEX)
    if response is None:
        raise NotFound("The dashboard is not installed (chatterbox_status/web/index.html is missing)")
    return response


@api_route(
    routes, "GET", "/web/{name}",
    operation_id="getDashboardFile",
    summary="A script, style sheet or image of the dashboard",
    tag="dashboard",
    responses={
        200: Reply("The file", media=tuple(dict.fromkeys(t.split(";")[0] for t in CONTENT_TYPES.values()))),
        206: PARTIAL,
        304: NOT_MODIFIED,
    },
    errors=(NotFound,),
    params=(IF_NONE_MATCH,),
    path_params={"name": "The file's name"},
)
async def static_file(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    response = await respond(name)
    if response is None:
        raise NotFound(f"No dashboard file {name!r}")
    return response
