"""CORS for every response: errors, whole files and streams alike.

The headers are added as each response is prepared (``on_response_prepare``), so even a
stream whose headers go out before its handler returns carries them; preflight requests
are answered by a middleware before routing, for every path and method.

By default any http://localhost or http://127.0.0.1 origin may call the API, so a
frontend on another local port works while an arbitrary web site cannot read a local
server. CORS_ORIGINS replaces that with a list of origins, or '*' for any.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from aiohttp import web

LOCAL_ORIGIN = re.compile(r"^http://(localhost|127\.0\.0\.1)(:\d{1,5})?$")
ALLOWED_METHODS = "GET, POST, PUT, PATCH, DELETE, OPTIONS"
EXPOSED_HEADERS = "X-Request-ID, Retry-After, Content-Disposition, WWW-Authenticate"
PREFLIGHT_MAX_AGE = "600"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class OriginPolicy:
    def __init__(self, setting: str) -> None:
        entries = [o.strip().rstrip("/") for o in setting.split(",") if o.strip()]
        self.any = "*" in entries
        self.listed = frozenset(entries)

    def allows(self, origin: str) -> bool:
        if self.any:
            return True
        if self.listed:
            return origin in self.listed
        return bool(LOCAL_ORIGIN.match(origin))


def setup_cors(app: web.Application, policy: OriginPolicy) -> None:
    """Answer preflights and add CORS headers to every response of ``app``."""

    @web.middleware
    async def preflight(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            response = web.Response(status=204)
            if policy.allows(request.headers.get("Origin", "")):
                response.headers["Access-Control-Allow-Methods"] = ALLOWED_METHODS
                requested = request.headers.get("Access-Control-Request-Headers")
                if requested:
                    response.headers["Access-Control-Allow-Headers"] = requested
                response.headers["Access-Control-Max-Age"] = PREFLIGHT_MAX_AGE
            return response
        return await handler(request)

    async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
        origin = request.headers.get("Origin")
        if origin is not None and policy.allows(origin):
            response.headers["Access-Control-Allow-Origin"] = "*" if policy.any else origin
            response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
        response.headers.add("Vary", "Origin")

    app.middlewares.insert(0, preflight)
    app.on_response_prepare.append(add_headers)
