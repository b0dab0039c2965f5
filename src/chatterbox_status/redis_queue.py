"""The cluster's chunk queue in Redis, as both its ends (server nodes, engine workers) see it.

A chunk call is an entry of one of two Redis Streams, interactive and background, read by
one consumer group: each entry goes to one engine worker, which claims it when it has room
and takes interactive calls first, and it stays pending in the group until the worker has
sent its answer, so a worker that dies mid-chunk leaves it behind for the cluster to end.
A worker answers on the calling node's reply stream with the frames of the engine process
(``progress``, ``audio_window``, ``batch``, then ``audio`` or ``failed``), a JSON header
and raw float32 samples. Cancellations and kills go out on a channel, and a cancellation
also stays in a key, so a worker that claims a call after it was cancelled still sees it.

Reference clips travel by content: the node puts a clip's bytes under its SHA-256 once,
and a worker on another machine writes them to a file of its own before it uses them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from .redis_events import KEY, NODE_TTL_SECONDS
from .redis_retry import keep

log = logging.getLogger(__name__)

PRIORITIES = ("interactive", "background")  # the order a worker reads them in
CHUNKS = {priority: f"{KEY}chunks:{priority}" for priority in PRIORITIES}
GROUP = "workers"
REPLIES = KEY + "replies:"  # + node
WORKERS = KEY + "workers"  # the set of worker names (a stopped one leaves once its chunks are ended)
WORKER = KEY + "worker:"  # + worker name: its registration, while it beats
CANCELLED = KEY + "cancelled:"  # + call id
CONTROL = KEY + "control"  # channel: cancel, kill and release
CLIP = KEY + "clip:"  # + sha256 of the bytes
CLIP_SECONDS = 24 * 3600
CANCEL_SECONDS = 3600
REPLY_LENGTH = 10_000
REPLY_SECONDS = 3600  # a reply stream outlives its node by this much
WORKER_TTL_MS = int(NODE_TTL_SECONDS * 1000)
STOP_SECONDS = 5.0  # how long a stopping loop may take to end


def encode(header: dict[str, Any], payload: bytes = b"") -> dict[Any, Any]:
    fields = {"h": json.dumps(header, separators=(",", ":")).encode()}
    if payload:
        fields["b"] = payload
    return fields


def decode(fields: Any) -> tuple[dict[str, Any], bytes]:
    return json.loads(fields[b"h"]), fields.get(b"b", b"")


async def ensure_group(client: Redis) -> None:
    """The consumer group of both chunk streams (made with the streams if need be)."""
    for stream in CHUNKS.values():
        try:
            await client.xgroup_create(stream, GROUP, id="0", mkstream=True)
        except RedisError as exc:
            if "BUSYGROUP" not in str(exc):
                raise


class OrderedSender:
    """Commands sent to Redis in the order they were put, batched into pipelines; kept
    (and retried) through an outage, so no frame or call is lost or reordered."""

    def __init__(self, client: Redis, name: str) -> None:
        self._client = client
        self._queue: asyncio.Queue[Callable[[Pipeline], Any]] = asyncio.Queue()
        self._batch: list[Callable[[Pipeline], Any]] = []  # taken from the queue, not sent yet
        self._failing = False  # the batch failed, and no batch was sent since
        self._task: asyncio.Task | None = None
        self._name = name

    def put(self, command: Callable[[Pipeline], Any]) -> None:
        self._queue.put_nowait(command)

    def start(self) -> None:
        self._task = asyncio.create_task(keep(self._send, self._unsent, reached=lambda: not self._failing), name=self._name)

    async def stop(self) -> None:
        """Send what is waiting (within a second), then stop."""
        if self._task is None:
            return
        try:
            await asyncio.wait_for(self._queue.join(), 1.0)
        except TimeoutError:
            log.warning("%s: stopping with %d commands unsent", self._name, len(self._batch) + self._queue.qsize())
        self._task.cancel()
        await asyncio.wait([self._task], timeout=STOP_SECONDS)  # bounded: a stop never hangs on Redis

    async def _send(self) -> None:
        """Send batches in order: after a failure, the batch that failed first."""
        while True:
            if not self._batch:
                self._batch = [await self._queue.get()]
                while not self._queue.empty() and len(self._batch) < 256:
                    self._batch.append(self._queue.get_nowait())
            async with self._client.pipeline(transaction=False) as pipe:
                for command in self._batch:
                    command(pipe)
                await pipe.execute()
            for _ in self._batch:
                self._queue.task_done()
            self._batch, self._failing = [], False

    def _unsent(self, exc: BaseException) -> None:
        log.warning("%s: Redis unreachable (%s); %d commands wait to be sent again", self._name, exc, len(self._batch))
        self._failing = True


class ClipCache:
    """Reference clips by content: published from a node's file, fetched into a worker's folder."""

    def __init__(self, client: Redis, folder: Path | None = None) -> None:
        self._client = client
        self._folder = folder
        self._published: dict[tuple[str, int, int], str] = {}  # (path, mtime_ns, size) -> sha

    async def publish(self, path: str) -> str:
        """The clip's digest, its bytes in Redis (once per file version)."""
        stat = await asyncio.to_thread(os.stat, path)
        key = (path, stat.st_mtime_ns, stat.st_size)
        digest = self._published.get(key)
        if digest is None:
            data = await asyncio.to_thread(Path(path).read_bytes)
            digest = hashlib.sha256(data).hexdigest()
            await self._client.set(CLIP + digest, data, ex=CLIP_SECONDS, nx=True)
            self._published[key] = digest
        else:
            await self._client.expire(CLIP + digest, CLIP_SECONDS)
        return digest

    async def fetch(self, digest: str, suffix: str) -> str:
        """A file of this process holding the clip ``digest`` (raises LookupError if Redis
        no longer has it)."""
        assert self._folder is not None
        path = self._folder / f"{digest}{suffix}"
        if not path.exists():
            data = cast(bytes | None, await self._client.get(CLIP + digest))
            if data is None:
                raise LookupError(f"reference clip {digest[:12]} is no longer in Redis")
            partial = path.with_name(path.name + ".part")
            await asyncio.to_thread(partial.write_bytes, data)
            os.replace(partial, path)
        return str(path)
