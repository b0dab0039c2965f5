"""Routing with aliases and strict query-parameter parsing shared by the resources."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from ..exceptions import InvalidInput

_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})


def aliased(routes: web.RouteTableDef, method: str, *paths: str) -> Callable:
    """Register one handler under every path given (the spec's aliases)."""

    def register(handler: Callable) -> Callable:
        for path in paths:
            routes.route(method, path)(handler)
        return handler

    return register


def query_bool(request: web.Request, name: str, default: bool = False) -> bool:
    raw = request.query.get(name)
    if raw is None:
        return default
    lowered = raw.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise InvalidInput(f"Query parameter {name} must be true or false, got {raw!r}", param=name)


def query_int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidInput(f"Query parameter {name} must be an integer, got {raw!r}", param=name) from None
    if not low <= value <= high:
        raise InvalidInput(f"Query parameter {name} must be between {low} and {high}, got {value}", param=name)
    return value
