"""Strict query-parameter parsing shared by the resources, and how the document states it."""

from __future__ import annotations

from aiohttp import web

from ..exceptions import InvalidInput
from .routing import Param

_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})


def bool_param(name: str, description: str) -> Param:
    """The document's entry for a parameter read with :func:`query_bool`."""
    return Param(name, {"type": "boolean", "default": False}, f"{description} (true, 1, yes or on; false, 0, no or off)")


def int_param(name: str, default: int, low: int, high: int, description: str) -> Param:
    """The document's entry for a parameter read with :func:`query_int`."""
    return Param(name, {"type": "integer", "minimum": low, "maximum": high, "default": default}, description)


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
