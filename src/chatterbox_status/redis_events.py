"""The event log in Redis: several server processes, one status view (REDIS_URL).

Every node appends its events to one Redis Stream through a script that numbers them
(INCR), so event ids stay increasing integers over the whole cluster, and every node
folds the whole stream in that order: the trackers of every node agree, statistics are
exact over the cluster, and ``Last-Event-ID`` resumes on any node, whichever node served
the earlier events. A node folds its own events only once Redis has numbered them, like
everyone else's, so what it shows is the stream's truth, never its own guess.

Exactly once: each node numbers what it publishes, and the script appends an event only if
that node has not appended it already, so a batch sent again after a lost connection
counts once. The tracker's state (statistics, history, requests in flight; not engine
states, which are each node's own) is checkpointed in Redis every ``CHECKPOINT_EVERY``
events by the nodes that fold that event; a node that starts, or finds that the stream was
trimmed past its position, restores the newest checkpoint and folds the events after it.
Redis must persist its data (appendonly) for the figures to outlive a Redis restart.

Each node says it is alive every ``HEARTBEAT_SECONDS``; when a node has not for
``NODE_TTL_SECONDS`` (killed, its machine gone), the others end the requests it was running
or holding in its queue as ``error``, each once (the node that claims a request in Redis
first publishes its end). Long-text jobs stay as they were: their node resumes them when it
starts again.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, cast
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError

from .events import Event, EventBus
from .redis_retry import keep

log = logging.getLogger(__name__)

KEY = "chatterbox-status:"
STREAM = KEY + "events"
SEQUENCE = KEY + "events:seq"
APPENDED = KEY + "events:appended"  # each node's newest appended event number
CHECKPOINT = KEY + "checkpoint"
ALIVE = KEY + "alive:"  # + node: set while the node beats
ENDED = KEY + "ended:"  # + request id: the node that ended a request of a node that stopped
HEARTBEAT_SECONDS = 1.0
NODE_TTL_SECONDS = 8.0
CHECKPOINT_EVERY = 1000
# Events the stream keeps (about: Redis trims in whole nodes): many checkpoints' worth, so a
# node restoring the newest checkpoint always finds the events after it.
STREAM_LENGTH = 20 * CHECKPOINT_EVERY
READ_BATCH = 512
READ_BLOCK_MS = 1000
SEND_BATCH = 256
# What the client answers (it does not decode responses): a stream's entries, a hash.
Entries = list[tuple[bytes, dict[bytes, bytes]]]
Hash = dict[bytes, bytes]
# How long an answer waits for its request's events to come back from Redis folded.
SETTLE_SECONDS = 5.0

APPEND = """
local held = tonumber(redis.call('HGET', KEYS[3], ARGV[1]) or '0')
if tonumber(ARGV[2]) <= held then return 0 end
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
local seq = redis.call('INCR', KEYS[2])
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'seq', seq, 'type', ARGV[4], 'data', ARGV[5])
return seq
"""
SAVE_CHECKPOINT = """
local held = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
if tonumber(ARGV[1]) <= held then return 0 end
redis.call('HSET', KEYS[1], 'seq', ARGV[1], 'position', ARGV[2], 'state', ARGV[3])
return 1
"""


class SharedFold(Protocol):
    """The fold the cluster shares (the status tracker): what a checkpoint saves and
    restores, and which node runs which request."""

    def checkpoint(self) -> dict[str, Any]: ...

    def restore(self, state: dict[str, Any]) -> None: ...

    def running_on(self) -> dict[str, list[str]]: ...


def node_name() -> str:
    """This server process among the cluster's: host, pid and a random tag (a restarted
    process is a new node)."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def redacted(url: str) -> str:
    """The URL without its password, for logs and /health."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class RedisEventBus(EventBus):
    """The bus over a Redis Stream shared by every node; loop thread only.

    ``publish`` stays synchronous: the event waits in an outbox that one task appends to
    the stream, in order; another task reads the stream and delivers every node's events
    (listeners, replay ring, subscribers) exactly as the in-process bus does.
    """

    node: str

    def __init__(
        self,
        url: str,
        node: str,
        fold: SharedFold,
        replay_size: int = 1024,
        subscriber_queue_size: int = 256,
        max_subscribers: int | None = None,
    ) -> None:
        super().__init__(replay_size, subscriber_queue_size, max_subscribers)
        self.url = redacted(url)
        self.node = node
        self._fold = fold
        self._client = aioredis.from_url(url)
        self._append = self._client.register_script(APPEND)
        self._save_checkpoint = self._client.register_script(SAVE_CHECKPOINT)
        self._outbox: collections.deque[tuple[int, str, str] | asyncio.Future[int]] = collections.deque()
        self._numbered = 0  # events this node has published
        self._sent_seq = 0  # the stream number of the newest one appended
        self._position: str | None = None  # the stream entry last read; None: restore first
        self._pending = asyncio.Event()
        self._folded = asyncio.Condition()
        self._caught_up = asyncio.Event()  # the reader has reached the end of the stream
        self._tasks: list[asyncio.Task] = []
        self._write_error: str | None = "not connected to Redis yet"
        self._read_error: str | None = "not connected to Redis yet"
        self._watch_error: str | None = None

    @property
    def problem(self) -> str | None:
        error = self._write_error or self._read_error or self._watch_error
        return None if error is None else f"the event log (Redis at {self.url}) is unreachable: {error}"

    def publish(self, type: str, data: dict[str, Any]) -> None:
        self._numbered += 1
        payload = json.dumps({"timestamp": time.time(), **data, "node": self.node})
        self._outbox.append((self._numbered, type, payload))
        self._pending.set()

    async def start(self) -> None:
        """Start appending and reading, and wait (SETTLE_SECONDS at most) until this node has
        folded the stream so far, so it never shows a view the cluster has left behind;
        until Redis answers, ``problem`` says so."""
        with contextlib.suppress(RedisError, OSError):
            await self._beat()  # alive before anything of this node's is folded anywhere
        self._tasks = [
            asyncio.create_task(self._keep(self._write, "_write_error"), name="event-log-writer"),
            asyncio.create_task(self._keep(self._read, "_read_error"), name="event-log-reader"),
            asyncio.create_task(self._keep(self._watch, "_watch_error"), name="event-log-watcher"),
        ]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._caught_up.wait(), SETTLE_SECONDS)

    async def settled(self) -> None:
        """Wait (SETTLE_SECONDS at most) until this node's events so far came back folded."""
        marker: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._outbox.append(marker)
        self._pending.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SETTLE_SECONDS):
                seq = await marker
                async with self._folded:
                    await self._folded.wait_for(lambda: self.last_id >= seq)

    async def stop(self) -> None:
        """Append what is still in the outbox (SETTLE_SECONDS at most), then disconnect."""
        if self._outbox and self._write_error is None:
            await self.settled()
        for task in self._tasks:
            task.cancel()
        await asyncio.wait(self._tasks, timeout=SETTLE_SECONDS)  # bounded: shutdown never hangs on Redis
        with contextlib.suppress(RedisError, OSError):
            await self._client.delete(ALIVE + self.node)  # gone, with nothing left running
        await self._client.aclose()
        self.close()

    async def _keep(self, run: Callable[[], Awaitable[None]], error_attribute: str) -> None:
        """One of the loops, kept through Redis going away and coming back: the error is kept
        for ``problem`` (logged once an outage) until the loop, connected again, clears it."""

        def lost(exc: BaseException) -> None:
            if getattr(self, error_attribute) is None:
                log.error("event log: lost Redis at %s: %s", self.url, exc)
            setattr(self, error_attribute, str(exc) or type(exc).__name__)

        await keep(run, lost, reached=lambda: getattr(self, error_attribute) is None)

    async def _write(self) -> None:
        """Append the outbox in order, a batch per round trip; markers learn the number of
        the newest event appended before them."""
        await self._client.ping()
        self._write_error = None
        while True:
            while not self._outbox:
                self._pending.clear()
                await self._pending.wait()
            batch = [self._outbox[i] for i in range(min(SEND_BATCH, len(self._outbox)))]
            events = [item for item in batch if not isinstance(item, asyncio.Future)]
            if events:
                self._sent_seq = max([self._sent_seq, *await self._append_all(cast(list[tuple[int, str, str]], events))])
            for item in batch:
                self._outbox.popleft()
                if isinstance(item, asyncio.Future) and not item.done():
                    item.set_result(self._sent_seq)

    async def _append_all(self, events: list[tuple[int, str, str]]) -> list[int]:
        """Append ``events`` in one round trip (EVALSHA each: redis-py's pipelined scripts
        would ask SCRIPT EXISTS first, a round trip more); a Redis that lacks the script
        (new, restarted, flushed) is given it and the batch sent again, which the script
        makes harmless: what was appended already is refused, numbered 0."""
        try:
            return await self._evalsha_all(events)
        except NoScriptError:
            await self._client.script_load(APPEND)
            return await self._evalsha_all(events)

    async def _evalsha_all(self, events: list[tuple[int, str, str]]) -> list[int]:
        async with self._client.pipeline(transaction=False) as pipe:
            for number, type, payload in events:
                pipe.evalsha(self._append.sha, 3, STREAM, SEQUENCE, APPENDED, self.node, number, STREAM_LENGTH, type, payload)
            return [int(number) for number in await pipe.execute()]

    async def _read(self) -> None:
        """Deliver the stream's events in order, from the newest checkpoint on a first
        connection, after a gap, or when the stream started again."""
        if self._position is None:
            await self._restore()
        self._read_error = None
        restored = False
        while True:
            assert self._position is not None
            block = READ_BLOCK_MS if self._caught_up.is_set() else None
            reply = cast(list[tuple[bytes, Entries]], await self._client.xread({STREAM: self._position}, count=READ_BATCH, block=block))
            entries = reply[0][1] if reply else []
            for position, fields in entries:
                seq = int(fields[b"seq"])
                if seq != self.last_id + 1 and not restored:
                    log.warning("event log: event %d follows %d here (trimmed, or Redis lost its data)", seq, self.last_id)
                    await self._restore()
                    restored = True
                    break
                if seq != self.last_id + 1:  # even the newest checkpoint does not reach it
                    log.error("event log: events %d to %d are lost to this node", self.last_id + 1, seq - 1)
                    self._last_id = seq - 1
                restored = False
                self._position = position.decode()
                self._deliver(Event(seq, fields[b"type"].decode(), json.loads(fields[b"data"])))
                if seq % CHECKPOINT_EVERY == 0:
                    await self._checkpoint(seq)
            if len(entries) < READ_BATCH:
                self._caught_up.set()
            async with self._folded:
                self._folded.notify_all()

    async def _beat(self) -> None:
        await self._client.set(ALIVE + self.node, "1", px=int(NODE_TTL_SECONDS * 1000))

    async def _watch(self) -> None:
        """Beat; end the requests of the nodes that stopped beating."""
        while True:
            await self._beat()
            self._watch_error = None
            for node, request_ids in self._fold.running_on().items():
                if node == self.node or await self._client.exists(ALIVE + node):
                    continue
                for request_id in request_ids:
                    if await self._client.set(ENDED + request_id, self.node, nx=True, ex=86400):
                        log.warning("event log: node %s stopped; request %s ends as error", node, request_id)
                        self.publish("status", {
                            "request_id": request_id,
                            "status": "error",
                            "is_processing": False,
                            "current_step": "Failed",
                            "error_message": f"The server process running it ({node}) stopped",
                        })
            await asyncio.sleep(HEARTBEAT_SECONDS)

    async def _restore(self) -> None:
        """Start again from the newest checkpoint (or the stream's beginning)."""
        saved = cast(Hash, await self._client.hgetall(CHECKPOINT))
        if saved:
            self._fold.restore(json.loads(saved[b"state"]))
            self._last_id, self._position = int(saved[b"seq"]), saved[b"position"].decode()
        else:
            self._last_id, self._position = 0, "0-0"
        self._replay.clear()
        log.info("event log: Redis at %s, folding from event %d", self.url, self._last_id + 1)

    async def _checkpoint(self, seq: int) -> None:
        assert self._position is not None
        state = json.dumps(self._fold.checkpoint())
        await self._save_checkpoint(keys=[CHECKPOINT], args=[seq, self._position, state])
