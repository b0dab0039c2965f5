"""Slow clients: a request body that stops arriving, a response nobody takes.

aiohttp waits for both for ever, so a client could hold a connection, a handler and its
buffers as long as it likes. As nginx does (client_body_timeout, send_timeout), each
connection is watched: a request body that sends nothing for BODY_READ_TIMEOUT seconds
ends in a 408 and the connection is closed; a response the client takes nothing of for
SEND_TIMEOUT seconds (the transport's buffer full and not shrinking) has its connection
aborted, so the handler writing it stops and its request is cancelled.

The watch is a timer per open connection that looks at what moved since it last looked,
so a stall is noticed between one and one and a half timeouts after it began. Responses
sent with the kernel's sendfile (whole-file downloads) fill no buffer of ours, so their
stalls are not seen.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from .errors import ApiError

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class BodyTimeout(asyncio.TimeoutError):
    """Set on a stalled body: the handler's read raises it; aiohttp's lingering read of the
    rest of the body ignores it and closes the connection."""


class ConnectionWatch:
    """One connection's timer: what the body and the send buffer did since the last look."""

    def __init__(self, protocol: RequestHandler, body_timeout: float, send_timeout: float,
                 on_end: Callable[[ConnectionWatch], None]) -> None:
        self.protocol = protocol
        self._on_end = on_end
        self._body_timeout = body_timeout
        self._send_timeout = send_timeout
        self._interval = min(body_timeout, send_timeout) / 2
        self._loop = asyncio.get_running_loop()
        self.request: web.Request | None = None  # the one whose body is being read
        self._read_mark: tuple[web.Request | None, int] = (None, 0)
        self._read_at = self._sent_at = self._loop.time()
        self._sent_mark = 0
        self._loop.call_later(self._interval, self._look)

    def _look(self) -> None:
        transport = self.protocol.transport
        if transport is None or transport.is_closing():
            self._on_end(self)  # the connection is gone, and its watch with it
            return
        now = self._loop.time()
        pending = transport.get_write_buffer_size()
        if not self.protocol.writing_paused or pending != self._sent_mark:
            self._sent_mark, self._sent_at = pending, now
        elif now - self._sent_at >= self._send_timeout:
            log.info("closing a connection whose client took no data for %g s (SEND_TIMEOUT)", self._send_timeout)
            transport.abort()
            self._on_end(self)
            return
        request = self.request
        mark = (request, request.content.total_bytes if request is not None else 0)
        if request is None or request.content.is_eof() or mark != self._read_mark:
            self._read_mark, self._read_at = mark, now
        elif now - self._read_at >= self._body_timeout:
            request.content.set_exception(BodyTimeout())
            self.request = None
        self._loop.call_later(self._interval, self._look)


def slow_client_middleware(body_timeout: float, send_timeout: float) -> Callable:
    """Watch every connection; a body that stopped arriving becomes a JSON 408."""
    watches: dict[int, ConnectionWatch] = {}  # by id() of each open connection's protocol

    def forget(watch: ConnectionWatch) -> None:
        if watches.get(id(watch.protocol)) is watch:
            del watches[id(watch.protocol)]

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        key = id(request.protocol)
        watch = watches.get(key)
        if watch is None or watch.protocol is not request.protocol:
            watch = watches[key] = ConnectionWatch(request.protocol, body_timeout, send_timeout, forget)
        watch.request = request
        try:
            return await handler(request)
        except BodyTimeout:
            raise ApiError(
                408, f"The request body stopped arriving for {body_timeout:g} s (BODY_READ_TIMEOUT)",
                code="body_timeout", headers={"Connection": "close"},
            ) from None
        finally:
            watch.request = None

    return middleware
