"""CORS as a middleware, so every response (errors and streams too) carries the headers.

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
EXPOSED_HEADERS = "X-Request-ID, Retry-After, Content-Disposition"
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


def cors_middleware(policy: OriginPolicy) -> Callable:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        allowed = origin is not None and policy.allows(origin)
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            response: web.StreamResponse = web.Response(status=204)
            if allowed:
                response.headers["Access-Control-Allow-Methods"] = ALLOWED_METHODS
                requested = request.headers.get("Access-Control-Request-Headers")
                if requested:
                    response.headers["Access-Control-Allow-Headers"] = requested
                response.headers["Access-Control-Max-Age"] = PREFLIGHT_MAX_AGE
        else:
            response = await handler(request)
        if allowed:
            response.headers["Access-Control-Allow-Origin"] = "*" if policy.any else origin
            response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
        response.headers.add("Vary", "Origin")
        return response

    return middleware
