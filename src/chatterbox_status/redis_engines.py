"""A server node whose engines are the cluster's engine workers (WORKERS, over REDIS_URL).

The node keeps everything about a request (queue, pipeline, events, output) and hands only
its chunks to the shared queue (:mod:`chatterbox_status.redis_queue`), where any worker on
any machine takes them; the answers come back on this node's reply stream as the engine
process's own frames, so progress, streamed windows, batches and cancellation work as they
do with a local engine. :class:`RemoteEngine` is the :class:`EngineHost` the engine pool
holds for each engine: it is ready while a live worker offers the engine, and its capacity
(how many requests the node runs at once) is what the live workers can step together.

A worker that stops beating (killed, its machine gone) has its claimed chunks ended ``died``
by whichever node notices first: the pipeline then ends each request ``error`` once. They
are not retried: a chunk may have streamed audio to its client already.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from .engines.base import AudioFn, BatchFn, ProgressFn, SynthesisParams, Voice
from .exceptions import EngineDied, EngineError
from .redis_events import HEARTBEAT_SECONDS, redacted
from .redis_queue import (
    CANCEL_SECONDS,
    CANCELLED,
    CHUNKS,
    CONTROL,
    GROUP,
    REPLIES,
    REPLY_LENGTH,
    REPLY_SECONDS,
    STOP_SECONDS,
    WORKER,
    WORKERS,
    ClipCache,
    OrderedSender,
    decode,
    encode,
    ensure_group,
)
from .redis_retry import keep
from .supervisor import EngineFacts, OpenCalls

log = logging.getLogger(__name__)

READ_BLOCK_MS = 1000
REAP_BATCH = 100


class ChunkQueue:
    """This node's end of the shared chunk queue: it sends the calls, reads their answers
    and ends the calls of workers that stopped."""

    def __init__(self, url: str, node: str, on_taken: Callable[[str, str], None], on_capacity: Callable[[], None]) -> None:
        self.url = redacted(url)
        self.node = node
        self._on_taken = on_taken  # (request id, worker): a worker took a chunk of the request
        self._on_capacity = on_capacity  # the workers can take more (or fewer) requests at once now
        self._jobs: dict[int, str] = {}  # call id -> request id, until a worker takes the call
        self.workers: dict[str, dict[str, Any]] = {}  # the live workers' registrations
        self.problem: str | None = "not connected to Redis yet"
        self._client = aioredis.from_url(url)
        self._sender = OrderedSender(self._client, "chunk-calls")
        self._clips = ClipCache(self._client)
        self._calls = OpenCalls()
        self._asked_to_cancel: set[int] = set()
        self._submissions: asyncio.Queue[tuple[int, dict[str, Any], str | None]] = asyncio.Queue()
        self._engines: list[RemoteEngine] = []
        self._offered = asyncio.Condition()
        self._tasks: list[asyncio.Task] = []

    def engine(self, facts: EngineFacts) -> RemoteEngine:
        engine = RemoteEngine(self, facts)
        self._engines.append(engine)
        return engine

    async def start(self) -> None:
        self._sender.start()
        self._tasks = [
            asyncio.create_task(keep(self._submit, self._lost), name="chunk-submitter"),
            asyncio.create_task(keep(self._read, self._lost), name="chunk-answers"),
            asyncio.create_task(keep(self._watch, self._lost), name="chunk-workers"),
        ]

    async def stop(self) -> None:
        self._calls.fail_all(EngineDied("the server is stopping"))
        await self._sender.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.wait(self._tasks, timeout=STOP_SECONDS)  # bounded: a stop never hangs on Redis
        with contextlib.suppress(RedisError, OSError):
            await self._client.delete(REPLIES + self.node)
        await self._client.aclose()

    # -- calls ------------------------------------------------------------------------

    def call(
        self,
        engine: str,
        text: str,
        voice: Voice,
        params: SynthesisParams,
        progress: ProgressFn,
        cancel: Any,
        on_audio: AudioFn | None,
        job: str,
        on_batch: BatchFn | None,
        priority: str,
    ) -> asyncio.Future[np.ndarray]:
        call_id, future = self._calls.open(progress, on_audio, on_batch)
        header = {
            "node": self.node, "call": call_id, "engine": engine, "text": text, "voice": vars(voice), "params": vars(params),
            "stream": on_audio is not None, "job": job, "priority": priority,
        }
        self._submissions.put_nowait((call_id, header, voice.path))
        self._jobs[call_id] = job
        future.add_done_callback(lambda _: self._ended(call_id))
        self._calls.cancel_with(call_id, cancel, lambda: self._cancel(call_id))
        return future

    def _ended(self, call_id: int) -> None:
        self._jobs.pop(call_id, None)
        self._asked_to_cancel.discard(call_id)

    def control(self, message: dict[str, Any]) -> None:
        """A message to every worker (cancel, kill, release)."""
        self._sender.put(lambda pipe: pipe.publish(CONTROL, json.dumps({"node": self.node, **message})))

    def kill_cancelled(self, reason: str) -> None:
        """The calls asked to cancel that have not ended (they overran CHUNK_TIMEOUT and
        ignore it): their workers kill their engine processes, and the calls end now."""
        for call_id in sorted(self._asked_to_cancel):
            self.control({"type": "kill", "call": call_id, "reason": reason})
            self._calls.fail(call_id, EngineDied(reason))  # its future's end forgets it

    def _cancel(self, call_id: int) -> None:
        # The key: a worker that claims the call only now still sees it cancelled.
        self._asked_to_cancel.add(call_id)
        key = f"{CANCELLED}{self.node}:{call_id}"
        self._sender.put(lambda pipe: pipe.set(key, "1", ex=CANCEL_SECONDS))
        self.control({"type": "cancel", "call": call_id})

    async def _submit(self) -> None:
        """Queue the calls in the order they were made, each clip in Redis before its call."""
        while True:
            call_id, header, path = await self._submissions.get()
            if call_id not in self._calls:
                continue  # ended already (the server stops)
            if path is not None:
                try:
                    header["clip"], header["suffix"] = await self._clips.publish(path), Path(path).suffix
                except OSError as exc:
                    self._calls.fail(call_id, EngineError(f"the reference voice clip cannot be read: {exc}"))
                    continue
            stream, fields = CHUNKS[header["priority"]], encode(header)
            self._sender.put(lambda pipe, stream=stream, fields=fields: pipe.xadd(stream, fields))  # type: ignore[misc]

    # -- answers and workers ------------------------------------------------------------

    def _lost(self, exc: BaseException) -> None:
        if self.problem is None:
            log.error("chunk queue: lost Redis at %s: %s", self.url, exc)
        self.problem = str(exc) or type(exc).__name__

    async def _read(self) -> None:
        position = "0-0"  # the stream is this node's alone (a node name is never reused)
        stream = REPLIES + self.node
        while True:
            reply = cast(list, await self._client.xread({stream: position}, count=256, block=READ_BLOCK_MS))
            for entry_id, fields in reply[0][1] if reply else []:
                position = entry_id
                header, payload = decode(fields)
                if header["type"] != "claimed":
                    self._calls.answer(header, payload)
                elif (job := self._jobs.pop(header["call"], None)) is not None:
                    self._on_taken(job, header["worker"])

    async def _watch(self) -> None:
        """Every heartbeat: the live workers (and what they offer), and the chunks of the
        workers that stopped beating ended."""
        await ensure_group(self._client)
        self.problem = None
        while True:
            names = sorted(member.decode() for member in cast(set[bytes], await self._client.smembers(WORKERS)))
            found = await self._client.mget([WORKER + name for name in names]) if names else []
            self.workers = {name: json.loads(value) for name, value in zip(names, found) if value is not None}
            for stream in CHUNKS.values():
                await self._reap(stream)
            for name in set(names) - set(self.workers):
                await self._client.srem(WORKERS, name)
            capacity = [engine.engine.max_batch_size for engine in self._engines]
            for engine in self._engines:
                engine.refresh(self.workers)
            if capacity != [engine.engine.max_batch_size for engine in self._engines]:
                self._on_capacity()
            async with self._offered:
                self._offered.notify_all()
            await asyncio.sleep(HEARTBEAT_SECONDS)  # a heartbeat's period, not a wait for anything

    async def _reap(self, stream: str) -> None:
        """End the chunks a stopped worker claimed: each calling node hears ``died`` once its
        entry is claimed here (a node that claims it later finds nothing left)."""
        for consumer in cast(list[dict[str, Any]], await self._client.xinfo_consumers(stream, GROUP)):
            name = consumer["name"].decode()
            if name in self.workers or await self._client.exists(WORKER + name):  # alive (or just started)
                continue
            if not consumer["pending"]:
                await self._client.xgroup_delconsumer(stream, GROUP, name)
                continue
            pending = cast(list[dict[str, Any]], await self._client.xpending_range(stream, GROUP, "-", "+", REAP_BATCH, consumername=name))
            ids: list[Any] = [entry["message_id"] for entry in pending]
            reaper = f"reaper-{self.node}"
            claimed = cast(list[Any], await self._client.xclaim(stream, GROUP, reaper, int(HEARTBEAT_SECONDS * 1000), ids))
            for entry_id, fields in claimed:
                header, _ = decode(fields)
                message = f"the engine worker running it ({name}) stopped"
                log.warning("chunk queue: %s; request %s ends", message, header.get("job"))
                answer = encode({"type": "failed", "call": header["call"], "kind": "died", "message": message})
                async with self._client.pipeline(transaction=True) as pipe:
                    pipe.xadd(REPLIES + header["node"], answer, maxlen=REPLY_LENGTH, approximate=True)
                    pipe.expire(REPLIES + header["node"], REPLY_SECONDS)
                    pipe.xack(stream, GROUP, entry_id)
                    pipe.xdel(stream, entry_id)
                    await pipe.execute()

    async def offered(self, engine: str) -> None:
        """Wait until a live worker offers ``engine``."""
        async with self._offered:
            await self._offered.wait_for(lambda: any(engine in worker["engines"] for worker in self.workers.values()))


class RemoteEngine:
    """One engine as the cluster's workers run it (an :class:`EngineHost`)."""

    def __init__(self, queue: ChunkQueue, facts: EngineFacts) -> None:
        self.engine = facts
        self.gpu: dict[str, Any] | None = None
        self._queue = queue

    def refresh(self, workers: dict[str, dict[str, Any]]) -> None:
        """Take the facts of a worker that offers it (one that loaded it first), and the
        capacity of all of them."""
        offering = sorted(
            (worker for worker in workers.values() if self.engine.name in worker["engines"]),
            key=lambda worker: self.engine.name not in worker["loaded"],
        )
        if offering:
            self.engine.update(dict(offering[0]["engines"][self.engine.name]))
        self.engine.max_batch_size = max(1, sum(worker["capacity"] for worker in offering))
        self.gpu = next((worker["gpu"] for worker in offering if worker.get("gpu")), None)

    async def load(self, progress: ProgressFn) -> None:
        """Ready once a worker offers it (each worker loads it for its first chunk, or has)."""
        await self._queue.offered(self.engine.name)
        progress(1.0)

    def synthesize(
        self,
        text: str,
        voice: Voice,
        params: SynthesisParams,
        progress: ProgressFn,
        cancel: Any,
        on_audio: AudioFn | None = None,
        job: str = "",
        on_batch: BatchFn | None = None,
        priority: str = "interactive",
    ) -> asyncio.Future[np.ndarray]:
        return self._queue.call(self.engine.name, text, voice, params, progress, cancel, on_audio, job, on_batch, priority)

    async def release(self, reset_peak: bool = False) -> None:
        """Every worker frees the memory its engines do not use (asked, not awaited)."""
        self._queue.control({"type": "release", "reset_peak": reset_peak})

    def memory_pid(self) -> int | None:
        return None  # the workers' memory is theirs: each worker process reports its own

    async def ended(self) -> str:
        """Never: workers come and go behind it (a stopped one's chunks end ``died``)."""
        return await asyncio.get_running_loop().create_future()

    async def kill(self, reason: str) -> None:
        self._queue.kill_cancelled(reason)

    async def close(self) -> None:
        """Nothing to end here: each worker unloads on its own keep-alive."""
