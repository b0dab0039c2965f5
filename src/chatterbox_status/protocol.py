"""What every response says about the server itself: its name, never its versions.

aiohttp's default ``Server: Python/3.x aiohttp/3.y`` tells a scanner which known bugs to try.
"""

from __future__ import annotations

from aiohttp import web

SERVER = "chatterbox-status"


async def _server_header(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = SERVER


def setup_server_header(app: web.Application) -> None:
    app.on_response_prepare.append(_server_header)
