"""What aiohttp's protocol layer answers by itself is the API's JSON error too.

A request aiohttp cannot parse never reaches the app: ``RequestHandler.handle_error``
answers it. Each request here goes over a raw TCP socket to a real server, run by the
runner ``chatterbox-status serve`` uses (``protocol.JsonErrorAppRunner``; the last test
runs ``serve`` itself). Without ``JsonErrorRequestHandler.handle_error`` these answers are
aiohttp's text/plain, with its ``Server`` header, and every test here fails but the two
comparing protocol.py with aiohttp (the runner's server, run_app's defaults); with
``serve`` back on ``web.run_app``, the last one fails.

The limits are aiohttp 3.14's defaults (8190 bytes a line, 128 headers): if a release
changes them, or stops answering through ``handle_error``, these tests fail.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
import signal
from contextlib import suppress

import pytest
from aiohttp import web
from conftest import assert_error_shape
from doubles import hosted
from helpers import JsonErrorTestServer, free_port, start_serve, stop, wait_healthy

from chatterbox_status.app import create_app
from chatterbox_status.config import Settings
from chatterbox_status.protocol import JsonErrorAppRunner, JsonErrorServer, run_app

HOST = b"Host: 127.0.0.1\r\n"
LINE_LIMIT = 8190  # aiohttp's max_line_size and max_field_size
HEADER_LIMIT = 128  # aiohttp's max_headers

# name: (request, error code, what the message must say was wrong)
BAD_REQUESTS = {
    "request line too long": (
        b"GET /" + b"a" * (LINE_LIMIT + 100) + b" HTTP/1.1\r\n" + HOST + b"\r\n",
        "line_too_long",
        rf"too long.*{LINE_LIMIT} bytes",
    ),
    "header too large": (
        b"GET /ping HTTP/1.1\r\n" + HOST + b"X-Big: " + b"a" * (LINE_LIMIT + 100) + b"\r\n\r\n",
        "line_too_long",
        rf"too long.*{LINE_LIMIT} bytes",
    ),
    "too many headers": (
        b"GET /ping HTTP/1.1\r\n" + HOST + b"".join(b"X-H%d: v\r\n" % n for n in range(HEADER_LIMIT * 2)) + b"\r\n",
        "malformed_request",
        r"not valid HTTP: Too many headers",
    ),
    "request line without a target": (
        b"GET\r\n" + HOST + b"\r\n",
        "malformed_request",
        r"not valid HTTP: .*after method.*GET",
    ),
    "unknown HTTP version": (
        b"GET /ping HTTP/9.9\r\n" + HOST + b"\r\n",
        "malformed_request",
        r"not valid HTTP: .*Invalid HTTP version.*HTTP/9\.9",
    ),
    "header line without a colon": (
        b"GET /ping HTTP/1.1\r\n" + HOST + b"NoColonHere\r\n\r\n",
        "malformed_request",
        r"not valid HTTP: Invalid header token.*NoColonHere",
    ),
    "HTTP/1.1 request without Host": (
        b"GET /ping HTTP/1.1\r\n\r\n",
        "malformed_request",
        r"not valid HTTP: Missing 'Host' header",
    ),
    "bad chunked body": (
        b"POST /v1/audio/speech HTTP/1.1\r\n" + HOST + b"Content-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
        "malformed_request",
        r"not valid HTTP: Invalid character in chunk size.*zz",
    ),
}

PING = b"GET /ping HTTP/1.1\r\n" + HOST + b"Connection: close\r\n\r\n"


async def exchange(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``request`` on a new connection; the status, headers (lower-case names) and body
    of what the server answered, read until it closed the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        with suppress(ConnectionError):
            await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    assert len(body) == int(headers["content-length"]), raw
    return int(status_line.split()[1]), headers, body


async def assert_json_error(port: int, request: bytes, status: int, code: str, says: str) -> dict:
    got, headers, body = await exchange(port, request)
    assert got == status, (got, headers, body)
    assert headers["content-type"].split(";")[0] == "application/json", headers
    assert headers["server"] == "chatterbox-status", headers
    error = json.loads(body)
    assert_error_shape(error)
    error = error["error"]
    assert error["type"] == ("invalid_request_error" if status < 500 else "server_error"), error
    assert error["code"] == code, error
    assert re.search(says, error["message"], re.DOTALL), error["message"]
    return error


async def error_of_a_handler_raising(exc: Exception, status: int, code: str, says: str) -> dict:
    """The JSON error a server answers when its one handler raises ``exc`` and no middleware
    catches it (an app without any)."""

    async def raising(request: web.Request) -> web.Response:
        raise exc

    app = web.Application()
    app.router.add_get("/raise", raising)
    async with JsonErrorTestServer(app) as test_server:
        return await assert_json_error(test_server.port, b"GET /raise HTTP/1.1\r\n" + HOST + b"\r\n", status, code, says)


async def assert_still_serving(port: int) -> None:
    status, headers, body = await exchange(port, PING)
    assert status == 200, body
    assert json.loads(body)["message"] == "pong"


@pytest.fixture
async def server(tmp_path, scripted):
    settings = Settings(voice_library_dir=str(tmp_path / "voices"), data_dir=str(tmp_path / "data"))
    async with JsonErrorTestServer(create_app(settings, hosted(scripted))) as test_server:
        yield test_server


@pytest.mark.parametrize("name", BAD_REQUESTS)
async def test_a_request_aiohttp_cannot_parse_is_a_json_400_and_the_server_goes_on(server, name):
    request, code, says = BAD_REQUESTS[name]
    await assert_json_error(server.port, request, 400, code, says)
    await assert_still_serving(server.port)


async def test_what_escapes_the_app_is_a_json_500_without_a_traceback():
    """handle_error's other answer: an exception no middleware caught (an app without any)."""

    error = await error_of_a_handler_raising(RuntimeError("a secret detail of the crash"), 500, "internal_error", r"^Internal server error$")
    assert "secret" not in json.dumps(error)


async def test_a_handler_timeout_that_escapes_the_app_is_a_json_504():
    """handle_error's third answer: a TimeoutError no middleware caught is aiohttp's 504. 504
    is not in errors.HTTP_ERROR_TYPES, so its type is the fallback for the server's fault."""

    error = await error_of_a_handler_raising(
        TimeoutError("an upstream wait ran out"), 504, "handler_timeout", r"^The server timed out handling the request$"
    )
    assert error["type"] == "server_error"
    assert "upstream" not in json.dumps(error)


async def test_the_runner_builds_the_server_aiohttp_builds_but_for_its_class():
    """JsonErrorAppRunner rebuilds aiohttp's Server from its arguments: if a release gives
    Server a setting the rebuild does not carry over, this fails."""
    options = {"access_log": None, "handler_cancellation": True, "keepalive_timeout": 5.0, "shutdown_timeout": 3.0}
    ours, theirs = JsonErrorAppRunner(web.Application(), **options), web.AppRunner(web.Application(), **options)
    await ours.setup()
    await theirs.setup()
    try:
        assert type(ours.server) is JsonErrorServer and type(theirs.server) is web.Server

        def settings(server: web.Server | None) -> dict:
            state = dict(vars(server))
            for bound in ("request_handler", "request_factory"):  # each app's own methods
                state[bound] = state[bound].__func__
            return state

        assert settings(ours.server) == settings(theirs.server)
    finally:
        await ours.cleanup()
        await theirs.cleanup()


def test_run_app_has_the_defaults_of_aiohttps_run_app():
    """protocol.run_app stands in for web.run_app: a default aiohttp changes shows up here."""
    ours = inspect.signature(run_app).parameters
    theirs = inspect.signature(web.run_app).parameters
    mine = [name for name, parameter in ours.items() if parameter.default is not inspect.Parameter.empty]
    assert mine, ours
    for name in mine:
        assert ours[name].default == theirs[name].default, name


async def test_serve_answers_protocol_errors_in_json_and_goes_on(tmp_path):
    """The real command: cli.serve runs the app with the JSON-error runner, and still stops on SIGTERM."""
    port = free_port()
    process, log_path = start_serve(tmp_path, port)
    try:
        await asyncio.to_thread(wait_healthy, f"http://127.0.0.1:{port}", process, log_path, 60)
        for name in ("request line too long", "too many headers", "bad chunked body"):
            request, code, says = BAD_REQUESTS[name]
            await assert_json_error(port, request, 400, code, says)
            await assert_still_serving(port)
        process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 30) == 0, log_path.read_text(errors="replace")
    finally:
        stop(process)
