"""The browser dashboard: GET / and its static files under /web/, from the package.

The page is plain HTML, CSS and ES modules in ``chatterbox_status/web/`` (no build step,
nothing from elsewhere). Every URL it uses is relative, so it works at the root and
behind a proxy that serves the app under a path prefix. Files carry no content hash in
their names, so browsers revalidate them (``no-cache`` with an ETag: a 304 when nothing
changed) and never run a stale script after an upgrade.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from ..exceptions import NotFound

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


@dataclass(frozen=True)
class StaticFile:
    body: bytes
    content_type: str
    etag: str


_cache: dict[str, tuple[tuple[int, int], StaticFile]] = {}


def load(name: str) -> StaticFile | None:
    """A file of the dashboard, read once and again only when it changes on disk."""
    suffix = Path(name).suffix
    if not SAFE_NAME.match(name) or suffix not in CONTENT_TYPES:
        return None
    path = WEB_DIR / name
    try:
        stat = path.stat()
    except OSError:
        return None
    if not path.is_file():
        return None
    key = (stat.st_mtime_ns, stat.st_size)
    cached = _cache.get(name)
    if cached is not None and cached[0] == key:
        return cached[1]
    body = path.read_bytes()
    entry = StaticFile(body, CONTENT_TYPES[suffix], '"' + hashlib.sha256(body).hexdigest()[:32] + '"')
    _cache[name] = (key, entry)
    return entry


def respond(request: web.Request, file: StaticFile) -> web.Response:
    headers = {
        "ETag": file.etag,
        "Cache-Control": "no-cache",
        "X-Content-Type-Options": "nosniff",
    }
    if file.content_type.startswith("text/html"):
        headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        headers["Referrer-Policy"] = "no-referrer"
    if file.etag in _etags(request.headers.get("If-None-Match", "")):
        return web.Response(status=304, headers=headers)
    return web.Response(body=file.body, headers={**headers, "Content-Type": file.content_type})


def _etags(header: str) -> set[str]:
    return {tag.strip().removeprefix("W/") for tag in header.split(",") if tag.strip()}


@routes.get("/")
async def index(request: web.Request) -> web.Response:
    file = load(INDEX)
    if file is None:
        raise NotFound("The dashboard is not installed (chatterbox_status/web/index.html is missing)")
    return respond(request, file)


@routes.get("/web/{name}")
async def static_file(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    file = load(name)
    if file is None:
        raise NotFound(f"No dashboard file {name!r}")
    return respond(request, file)
