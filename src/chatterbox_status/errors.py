"""API errors and the middleware that renders every error as the same JSON shape.

Every failure a client can see, from a bad field to an unknown route to a crash, becomes
``{"error": {"message", "type", "param", "code"}}`` with an honest status code. Domain
refusals (``exceptions.Refusal``) are translated by one table, ``ERROR_TABLE``; ``ApiError``
is for what only HTTP knows (a wrong content type, a body too large).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import NamedTuple

from aiohttp import web

from .exceptions import (
    Conflict,
    EngineError,
    InvalidInput,
    NotFound,
    OutOfSpace,
    QueueFull,
    Refusal,
    TooManyStreams,
    Unavailable,
)

log = logging.getLogger(__name__)


class ErrorKind(NamedTuple):
    status: int
    type: str


# The one translation from domain refusals to HTTP; a subclass takes its nearest base's row.
ERROR_TABLE: dict[type[Refusal], ErrorKind] = {
    InvalidInput: ErrorKind(400, "invalid_request_error"),
    NotFound: ErrorKind(404, "not_found_error"),
    Conflict: ErrorKind(409, "conflict_error"),
    QueueFull: ErrorKind(429, "queue_full"),
    TooManyStreams: ErrorKind(429, "too_many_streams"),
    OutOfSpace: ErrorKind(507, "insufficient_storage"),
    Unavailable: ErrorKind(503, "service_unavailable"),
    EngineError: ErrorKind(500, "server_error"),
}
DEFAULT_KIND = ErrorKind(500, "server_error")

# Error types of what HTTP itself refuses, by status.
HTTP_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "method_not_allowed",
    409: "conflict_error",
    413: "request_too_large",
    415: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable",
}


def kind_of(refusal: Refusal | type[Refusal]) -> ErrorKind:
    """The row of a refusal, or of a refusal class (as the OpenAPI document asks)."""
    for cls in (refusal if isinstance(refusal, type) else type(refusal)).__mro__:
        if cls in ERROR_TABLE:
            return ERROR_TABLE[cls]  # type: ignore[index]
    return DEFAULT_KIND


class ApiError(Exception):
    """An error only HTTP knows, with its status, rendered by :func:`error_middleware`."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}
        self.type = type or HTTP_ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")


def from_refusal(exc: Refusal, headers: dict[str, str] | None = None) -> ApiError:
    """The HTTP error a domain refusal becomes, per ERROR_TABLE."""
    kind = kind_of(exc)
    headers = dict(headers or {})
    if exc.retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    return ApiError(kind.status, exc.message, param=exc.param, code=exc.code, headers=headers, type=kind.type)


def error_body(error: ApiError) -> dict:
    return {"error": {"message": error.message, "type": error.type, "param": error.param, "code": error.code}}


def error_response(error: ApiError) -> web.Response:
    return web.json_response(error_body(error), status=error.status, headers=error.headers)


_HTTP_MESSAGES = {
    404: "No route matches {method} {path}",
    405: "Method {method} is not allowed on {path}",
    413: "Request body is larger than the server accepts",
}


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as error:
        return error_response(error)
    except Refusal as refusal:
        return error_response(from_refusal(refusal))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        template = _HTTP_MESSAGES.get(exc.status)
        message = template.format(method=request.method, path=request.path) if template else exc.reason
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
        return error_response(ApiError(exc.status, message, headers=headers))
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(ApiError(500, "Internal server error", code="internal_error"))
