"""API errors and the middleware that renders every error as the same JSON shape.

Every failure a client can see, from a bad field to an unknown route to a crash, becomes
``{"error": {"message", "type", "param", "code"}}`` with an honest status code.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

log = logging.getLogger(__name__)

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "method_not_allowed",
    409: "conflict_error",
    413: "request_too_large",
    415: "invalid_request_error",
    429: "queue_full",
    500: "server_error",
    503: "service_unavailable",
}


class ApiError(Exception):
    """An error with an HTTP status, rendered by :func:`error_middleware`."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def not_found(message: str, param: str | None = None) -> ApiError:
    return ApiError(404, message, param=param, code="not_found")


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    return {
        "error": {
            "message": message,
            "type": ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error"),
            "param": param,
            "code": code,
        }
    }


def error_response(error: ApiError) -> web.Response:
    return web.json_response(
        error_body(error.status, error.message, error.param, error.code),
        status=error.status,
        headers=error.headers,
    )


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
