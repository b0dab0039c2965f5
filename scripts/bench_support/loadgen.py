"""Load generators that run in the benchmark process: HTTP pollers and SSE subscribers.

Pollers use a minimal HTTP/1.1 keep-alive client on asyncio streams (one connection
per poller), far cheaper per request than a full client, so that on a small machine
the measurement is bound by the server rather than by the load generator. The same
client measures the product and the bare baseline, so their ratio is fair either way.

Subscribers use one aiohttp ClientSession (connector limit 0) and keep each event's
receive time and raw bytes only; parsing waits until the measurement is over, so the
load generator's own work adds as little as possible to the latency it measures.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field

import aiohttp

# A poller that never sees its deadline still stops after this many requests.
MAX_REQUESTS_PER_POLLER = 1_000_000
WARM_UP_REQUESTS = 3


class HttpError(Exception):
    pass


class KeepAliveConnection:
    """GET requests over one persistent HTTP/1.1 connection; Content-Length bodies only."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.reconnects = 0

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    async def get(self, path: str) -> tuple[int, bytes]:
        if self.writer is None:
            await self.open()
            self.reconnects += 1
        assert self.reader is not None and self.writer is not None
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n\r\n".encode("ascii"))
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            at = head.lower().find(b"\r\ncontent-length:")
            if at < 0:
                raise HttpError(f"no Content-Length in response to {path}")
            end = head.index(b"\r\n", at + 2)
            body = await self.reader.readexactly(int(head[at + 17 : end]))
        except (asyncio.IncompleteReadError, ConnectionError):
            self.close()
            raise
        if b"connection: close" in head.lower():
            self.close()
        return status, body


@dataclass
class PollResult:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    busy: int = 0  # bodies that said is_processing: true
    duration: float = 0.0
    pollers_ready: int = 0

    @property
    def requests(self) -> int:
        return len(self.latencies)


async def poll_window(host: str, port: int, path: str, pollers: int, duration: float, ready_timeout: float = 30.0) -> PollResult:
    """``pollers`` closed-loop pollers hammer ``path`` for ``duration`` seconds.

    Each poller opens its connection and makes a few warm-up requests first; timing starts
    for all of them at once. Requests started before the deadline count; throughput is
    their number over the time from the start to the last one's answer.
    """
    result = PollResult()
    start = asyncio.Event()
    window = {"deadline": 0.0}
    ready = asyncio.Semaphore(0)

    async def poller() -> None:
        conn = KeepAliveConnection(host, port)
        try:
            await conn.open()
            for _ in range(WARM_UP_REQUESTS):
                await conn.get(path)
        finally:
            ready.release()
        try:
            await start.wait()
            deadline = window["deadline"]
            for _ in range(MAX_REQUESTS_PER_POLLER):
                sent = time.perf_counter()
                if sent >= deadline:
                    break
                try:
                    status, body = await conn.get(path)
                except (HttpError, asyncio.IncompleteReadError, ConnectionError, ValueError):
                    result.errors += 1
                    continue
                result.latencies.append(time.perf_counter() - sent)
                if status != 200:
                    result.errors += 1
                elif json.loads(body).get("is_processing"):
                    result.busy += 1
        finally:
            conn.close()

    tasks = [asyncio.create_task(poller()) for _ in range(pollers)]
    try:
        ready_deadline = time.perf_counter() + ready_timeout
        for _ in range(pollers):
            remaining = ready_deadline - time.perf_counter()
            await asyncio.wait_for(ready.acquire(), max(remaining, 0.01))
        failed = [t for t in tasks if t.done() and t.exception() is not None]
        if failed:
            raise RuntimeError(f"{len(failed)} pollers failed to start: {failed[0].exception()!r}")
        result.pollers_ready = pollers
        began = time.perf_counter()
        window["deadline"] = began + duration
        start.set()
        await asyncio.wait_for(asyncio.gather(*tasks), duration + ready_timeout)
        result.duration = time.perf_counter() - began
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return result


# The bus puts the timestamp first in every event's data; other streams keep only this much
# of it, so a thousand subscribers of a long run stay small in memory.
TIMESTAMP_PREFIX = b'{"timestamp": '
KEPT_PREFIX = 48


def event_timestamp(payload: bytes) -> float | None:
    """The ``timestamp`` of an event's data, read from a whole payload or a kept prefix."""
    if payload.startswith(TIMESTAMP_PREFIX):
        rest = payload[len(TIMESTAMP_PREFIX) :]
        for end, char in enumerate(rest):
            if char in b",}":
                return float(rest[:end])
    try:
        value = json.loads(payload).get("timestamp")
    except (ValueError, AttributeError):
        return None
    return None if value is None else float(value)


@dataclass
class Subscriber:
    """One /status/stream connection: what arrived, when, and how it ended."""

    index: int
    # Keep every event's whole data (else only a prefix holding its timestamp).
    keep_data: bool = False
    # (receive time as time.time(), id, event type, data or its prefix) per event
    events: list[tuple[float, bytes, bytes, bytes]] = field(default_factory=list)
    opened: bool = False
    open_error: str | None = None
    ended_by_server: bool = False
    snapshot_seen: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def last_id(self) -> int:
        for _, event_id, _, _ in reversed(self.events):
            if event_id:
                return int(event_id)
        return -1


async def subscribe(
    session: aiohttp.ClientSession, url: str, sub: Subscriber, connecting: asyncio.Semaphore, max_events: int
) -> None:
    """Read Server-Sent Events until the server ends the stream, ``max_events``, or cancellation."""
    resp = None
    try:
        async with connecting:
            try:
                resp = await session.get(url, headers={"Accept": "text/event-stream"})
            except (aiohttp.ClientError, OSError) as exc:
                sub.open_error = repr(exc)
                sub.snapshot_seen.set()
                return
            if resp.status != 200:
                sub.open_error = f"HTTP {resp.status}: {(await resp.read())[:200]!r}"
                sub.snapshot_seen.set()
                return
            sub.opened = True
            await _read_events(resp, sub, max_events, until_first=True)
        await _read_events(resp, sub, max_events, until_first=False)
    finally:
        sub.snapshot_seen.set()
        if resp is not None:
            resp.close()


async def _read_events(resp: aiohttp.ClientResponse, sub: Subscriber, max_events: int, until_first: bool) -> None:
    event_id = event_type = b""
    data: list[bytes] = []
    for _ in range(max_events * 8 + 64):  # lines: a few per event, plus pings
        line = await resp.content.readline()
        if not line:
            sub.ended_by_server = True
            return
        line = line.rstrip(b"\r\n")
        if not line:
            if data:
                received = time.time()
                payload = b"\n".join(data)
                if not sub.keep_data and payload.startswith(TIMESTAMP_PREFIX):
                    payload = payload[:KEPT_PREFIX]
                sub.events.append((received, event_id, event_type, payload))
                event_id = event_type = b""
                data = []
                if until_first:
                    sub.snapshot_seen.set()
                    return
                if len(sub.events) >= max_events:
                    return
            continue
        if line.startswith(b":"):
            continue
        name, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            data.append(value)
        elif name == b"id":
            event_id = value
        elif name == b"event":
            event_type = value


async def close_subscribers(tasks: list[asyncio.Task]) -> None:
    for task in tasks:
        task.cancel()
    with contextlib.suppress(Exception):
        await asyncio.gather(*tasks, return_exceptions=True)
