"""What a web page elsewhere must not do to this server: DNS rebinding and cross-site writes.

A page on any site can send requests to a local server; CORS only stops it reading the
answers. Two checks, as middlewares that run before everything else:

* Host: a page that rebinds its own name to 127.0.0.1 reaches us with that name in Host.
  Only names of this server are answered: localhost, any IP address (an address cannot be
  rebound), HOST, and ALLOWED_HOSTS ('*' turns the check off).
* Origin: a state-changing request (POST, PUT, PATCH, DELETE) from a browser must come
  from this server's own origin or one the CORS policy allows (the same policy, so one
  setting, CORS_ORIGINS, decides both); without an Origin, a ``Sec-Fetch-Site:
  cross-site`` request is refused. Clients that are not browsers send neither header.

Each refusal is a JSON 403 that says why.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from aiohttp import web

from .cors import OriginPolicy
from .errors import ApiError, error_response

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
LOCAL_NAMES = frozenset({"localhost"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class HostPolicy:
    def __init__(self, bound_host: str, setting: str) -> None:
        entries = {name.strip().lower().rstrip(".") for name in setting.split(",") if name.strip()}
        self.any = "*" in entries
        self.names = LOCAL_NAMES | entries | {bound_host.lower()}
        # Clients send the same few Host values again and again: decide each once.
        self.allows = functools.lru_cache(maxsize=1024)(self._allows)

    def _allows(self, host_header: str) -> bool:
        if self.any:
            return True
        name = _hostname(host_header)
        if name is None:
            return False
        return name in self.names or _is_address(name)


def _hostname(host_header: str) -> str | None:
    """The name in a Host header, without port or brackets, lowercased; None if malformed."""
    if any(ch in host_header for ch in "@/?#\\"):
        return None
    try:
        parts = urlsplit(f"//{host_header}")
        parts.port  # noqa: B018 -- raises ValueError for a port that is not a number
    except ValueError:
        return None
    return parts.hostname.rstrip(".") if parts.hostname else None


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def setup_guard(app: web.Application, hosts: HostPolicy, origins: OriginPolicy) -> None:
    """Check Host on every request and Origin on state-changing ones, before anything else runs."""

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        refusal = _refusal(request, hosts, origins)
        if refusal is not None:
            return error_response(refusal)
        return await handler(request)

    app.middlewares.insert(0, guard)


def _refusal(request: web.Request, hosts: HostPolicy, origins: OriginPolicy) -> ApiError | None:
    host = request.headers.get("Host")
    if host is not None and not hosts.allows(host):
        return ApiError(
            403,
            "This server does not answer to the host name in the request (a guard against DNS rebinding); "
            "add it to ALLOWED_HOSTS",
            param="Host",
            code="host_not_allowed",
        )
    if request.method not in STATE_CHANGING:
        return None
    origin = request.headers.get("Origin")
    if origin is not None:
        if origins.allows(origin) or (host is not None and _netloc(origin) == host.lower()):
            return None
        return ApiError(
            403,
            "Requests that change something are not accepted from this page's origin; "
            "CORS_ORIGINS lists the origins that may",
            param="Origin",
            code="origin_not_allowed",
        )
    if request.headers.get("Sec-Fetch-Site") == "cross-site":
        return ApiError(
            403,
            "Cross-site requests that change something are not accepted",
            param="Sec-Fetch-Site",
            code="cross_site_request",
        )
    return None


def _netloc(origin: str) -> str | None:
    try:
        return urlsplit(origin).netloc.lower()
    except ValueError:
        return None
