"""What the protocol layer says: the server's name, never its versions, and its own errors as JSON.

aiohttp's default ``Server: Python/3.x aiohttp/3.y`` tells a scanner which known bugs to try.

A request aiohttp cannot parse (a request line or header longer than 8190 bytes, too many
headers, a malformed request line or header, a bad chunked body) never reaches the app or
its error middleware: ``aiohttp.web_protocol.RequestHandler.handle_error`` answers it, in
text/plain, with aiohttp's ``Server`` header. aiohttp has no public hook for that answer
(aio-libs/aiohttp#3287), so the app is served by :class:`JsonErrorAppRunner`, whose
connections are handled by :class:`JsonErrorRequestHandler`: the same status, the same
logging and connection close as aiohttp's, with the API's error body
(``errors.error_response``) and ``Server: chatterbox-status``.

The aiohttp internals this relies on (aiohttp 3.14.5), each watched by a test in
tests/test_protocol_errors.py that fails if a release changes it:

- ``RequestHandler.handle_error(request, status, exc, message)`` makes every answer the
  protocol layer gives by itself (parse errors: 400, with the parser's exception and its
  message; 500 and 504 for what escapes the app). Not called, or called otherwise: the
  raw-socket tests get text/plain, or fail on every request.
- ``web.Server.__call__`` builds each connection's ``RequestHandler`` from the server's
  private ``_loop`` and ``_kwargs``; renamed, every request fails.
- ``web.AppRunner._make_server`` builds the app's ``web.Server``; :class:`JsonErrorAppRunner`
  rebuilds it as a :class:`JsonErrorServer` from its arguments (its public attributes,
  ``_loop`` and ``_kwargs``). A setting the rebuild would lose fails the test comparing it
  with aiohttp's own.
- ``web.run_app`` takes no runner, so :func:`run_app` repeats its body for one socket; a
  default changed there fails the test comparing the two signatures.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from contextlib import suppress
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.log import access_logger
from aiohttp.web_protocol import RequestHandler

from .errors import ApiError, error_response

SERVER = "chatterbox-status"


async def _server_header(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = SERVER


def setup_server_header(app: web.Application) -> None:
    app.on_response_prepare.append(_server_header)


def protocol_error(status: int, reason: str, exc: BaseException | None, message: str | None) -> ApiError:
    """The API error for an answer aiohttp's protocol layer makes itself (its status and reason)."""
    if isinstance(exc, HttpProcessingError):  # the parser's: message is what it says was wrong
        detail = "\n".join(line for line in (message or exc.message or reason).splitlines() if line.strip())
        if isinstance(exc, LineTooLong):
            return ApiError(status, f"A request line or header is too long: {detail}", code="line_too_long")
        return ApiError(status, f"The request is not valid HTTP: {detail}", code="malformed_request")
    if status == HTTPStatus.INTERNAL_SERVER_ERROR:  # as the error middleware says it; never a traceback
        return ApiError(status, "Internal server error", code="internal_error")
    if status == HTTPStatus.GATEWAY_TIMEOUT:
        return ApiError(status, "The server timed out handling the request", code="handler_timeout")
    return ApiError(status, reason)


class JsonErrorRequestHandler(RequestHandler):
    """aiohttp's connection handler, whose own error answers are the API's JSON errors."""

    __slots__ = ()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        # aiohttp's: it logs, raises if a response has begun, and picks the status.
        plain = super().handle_error(request, status, exc, message)
        response = error_response(protocol_error(plain.status, plain.reason, exc, message))
        response.headers["Server"] = SERVER  # the app's on_response_prepare never sees a request it could not parse
        response.force_close()
        return response


class JsonErrorServer(web.Server):
    """A ``web.Server`` whose connections are handled by :class:`JsonErrorRequestHandler`."""

    def __call__(self) -> RequestHandler:
        return JsonErrorRequestHandler(self, loop=self._loop, **self._kwargs)


class JsonErrorAppRunner(web.AppRunner):
    """``web.AppRunner`` serving the app through a :class:`JsonErrorServer`."""

    __slots__ = ()

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()  # starts the app up, as aiohttp's does
        return JsonErrorServer(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            loop=server._loop,
            **server._kwargs,
        )


def run_app(
    app: web.Application,
    sock: socket.socket,
    *,
    shutdown_timeout: float = 60.0,
    keepalive_timeout: float = 75.0,
    access_log: logging.Logger | None = access_logger,
    handle_signals: bool = True,
    handler_cancellation: bool = False,
    **kwargs: Any,
) -> None:
    """``web.run_app(app, sock=sock, print=None, ...)`` with a :class:`JsonErrorAppRunner`.

    aiohttp's ``run_app`` always builds a plain ``AppRunner``; this is its body for one
    socket, with its defaults (``keepalive_timeout`` is 75 s there, 3630 s in the handler
    itself) and its ending: SIGINT and SIGTERM raise ``GracefulExit`` out of the loop (the
    runner's signal handlers), then the serving task is cancelled so the runner's cleanup
    runs (stop listening, the app's on_shutdown, ``shutdown_timeout`` for the connections
    to finish, on_cleanup), and only then are the tasks still left cancelled and the loop
    closed. Other keyword arguments go to the runner, as run_app's do.
    """
    options = dict(
        shutdown_timeout=shutdown_timeout,
        keepalive_timeout=keepalive_timeout,
        access_log=access_log,
        handle_signals=handle_signals,
        handler_cancellation=handler_cancellation,
        **kwargs,
    )
    loop = asyncio.new_event_loop()
    main_task = loop.create_task(_serve(app, sock, **options))
    try:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(main_task)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        try:
            if not main_task.done():
                main_task.cancel()
                with suppress(asyncio.CancelledError):
                    loop.run_until_complete(main_task)
        finally:
            _cancel_tasks(asyncio.all_tasks(loop), loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()


async def _serve(app: web.Application, sock: socket.socket, **kwargs: Any) -> None:
    runner = JsonErrorAppRunner(app, **kwargs)
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
        await asyncio.Event().wait()  # until cancelled
    finally:
        await runner.cleanup()


def _cancel_tasks(tasks: set[asyncio.Task[Any]], loop: asyncio.AbstractEventLoop) -> None:
    """Cancel what is still running after the runner's cleanup, as run_app does."""
    if not tasks:
        return
    for task in tasks:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            loop.call_exception_handler(
                {"message": "unhandled exception during shutdown", "exception": task.exception(), "task": task}
            )
