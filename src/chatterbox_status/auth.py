"""Optional API key: when API_KEY is set, every endpoint but the open ones needs it.

OpenAI clients send ``Authorization: Bearer KEY``; ``X-API-Key`` works too, and so does
``?api_key=`` for browsers' EventSource, which cannot send headers. The comparison runs
in constant time.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from aiohttp import web

from .errors import ApiError

# Liveness checks and the dashboard's static files carry no data and stay open.
OPEN_PATHS = frozenset({"/health", "/v1/health", "/ping", "/v1/ping", "/"})
OPEN_PREFIXES = ("/web/",)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def supplied_key(request: web.Request) -> str | None:
    authorization = request.headers.get("Authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("X-API-Key") or request.query.get("api_key")


def api_key_middleware(api_key: str) -> Callable:
    expected = api_key.encode()

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method == "OPTIONS" or request.path in OPEN_PATHS or request.path.startswith(OPEN_PREFIXES):
            return await handler(request)
        key = supplied_key(request)
        if key is None:
            raise ApiError(401, "An API key is required: send Authorization: Bearer <key>", code="missing_api_key",
                           headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(key.encode(), expected):
            raise ApiError(401, "The API key is not valid", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        return await handler(request)

    return middleware
