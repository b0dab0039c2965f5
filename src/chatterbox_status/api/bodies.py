"""Request bodies as HTTP brings them: JSON objects and forms parsed into the schemas'
models, and the client's request id. Planning happens below HTTP, in planning.py."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from ..core import Core
from ..errors import ApiError
from ..exceptions import Conflict, InvalidInput
from ..schemas import first_problem

REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{7,63}$")
M = TypeVar("M", bound=BaseModel)


def _validation_error(exc: ValidationError) -> InvalidInput:
    param, message = first_problem(exc)
    return InvalidInput(message, param=param)


def parse(model: type[M], raw: dict[str, Any]) -> M:
    """A JSON body: types must be JSON's own (no "0.5" for a number)."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise _validation_error(exc) from None


def parse_form(model: type[M], fields: dict[str, str]) -> M:
    """A form: every value arrives as text, so numbers are parsed; empty fields mean unset."""
    try:
        return model.model_validate({k: v for k, v in fields.items() if v != ""}, strict=False)
    except ValidationError as exc:
        raise _validation_error(exc) from None


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object, or a 415/400/413 that says what is wrong with it."""
    if request.content_type != "application/json":
        raise ApiError(415, f"Content-Type must be application/json, got {request.content_type!r}")
    raw = await request.read()
    try:
        body = json.loads(raw, parse_constant=_reject_constant)
        # A lone surrogate escape ("\ud800") parses, but is no text: it could never be stored or spoken.
        json.dumps(body, ensure_ascii=False).encode()
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise InvalidInput(f"Request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidInput("Request body must be a JSON object")
    return body


async def read_optional_json(request: web.Request) -> dict[str, Any]:
    """The JSON object body, or {} when the request has none."""
    if not request.can_read_body:
        return {}
    return await read_json_object(request)


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


def request_id_from(request: web.Request, core: Core) -> str:
    """The client's X-Request-ID when it is well formed and unused, else a fresh one."""
    chosen = request.headers.get("X-Request-ID")
    if chosen is None:
        return uuid.uuid4().hex[:12]
    if not REQUEST_ID_PATTERN.match(chosen):
        raise InvalidInput(
            "X-Request-ID must be 8 to 64 characters of letters, digits, '.', '_' or '-'", param="X-Request-ID"
        )
    if core.tracker.find(chosen) is not None:
        raise Conflict(f"Request id {chosen!r} is already in use", param="X-Request-ID", code="duplicate_request_id")
    return chosen
