"""``chatterbox-status worker``: one engine worker of a cluster (one per GPU).

A worker holds the configured engines in processes of its own, exactly as a server does
(:class:`~chatterbox_status.engine_pool.EnginePool`: loaded on first use, supervised,
restarted with backoff, unloaded after their keep-alive), and takes chunk calls from the
shared queue (:mod:`chatterbox_status.redis_queue`) while it has room: one at a time, or
as many as its engine steps together. Interactive calls are read before background ones.
It answers each call on its node's reply stream and only then acknowledges it, so a call
of a worker that dies stays pending for the cluster to end. It says it is alive, with
what it offers, every heartbeat; a SIGTERM lets the calls it runs finish (SHUTDOWN_TIMEOUT)
before it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from . import memory
from .config import Settings, parse_duration
from .engine_pool import RESTART_BACKOFF_FIRST, RESTART_BACKOFF_MAX, STABLE_SECONDS, CancelFlag, EngineHost, EnginePool, EngineSlot
from .engine_process import die_with_the_server
from .engines.base import SynthesisParams, Voice
from .events import Event, EventBus
from .exceptions import Cancelled, EngineDied, EngineError, EngineUnavailable
from .redis_events import ALIVE, HEARTBEAT_SECONDS, redacted
from .redis_queue import (
    CANCELLED,
    CHUNKS,
    CONTROL,
    GROUP,
    REPLIES,
    REPLY_LENGTH,
    REPLY_SECONDS,
    STOP_SECONDS,
    WORKER,
    WORKER_TTL_MS,
    WORKERS,
    ClipCache,
    OrderedSender,
    decode,
    encode,
    ensure_group,
)
from .redis_retry import keep
from .supervisor import EngineFacts, describe_exit, engine_processes

log = logging.getLogger(__name__)

READ_BLOCK_MS = 1000


@dataclasses.dataclass
class Running:
    """A call this worker runs: what cancels it, and the engine it runs on once it does."""

    cancel: CancelFlag
    slot: EngineSlot | None = None


class EngineWorker:
    """One worker: its engines (``slots``, the default first), the calls it runs, and its
    registration in Redis. Every worker of a cluster offers the same engines: the queue
    does not route by engine."""

    def __init__(self, settings: Settings, slots: list[EngineSlot], bus: EventBus) -> None:
        assert settings.redis_url
        self.settings = settings
        self.name = f"worker-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.url = redacted(settings.redis_url)
        self.engines = EnginePool(slots, settings.max_loaded_models)
        self.bus = bus
        self._client = aioredis.from_url(settings.redis_url)
        self._sender = OrderedSender(self._client, "chunk-answers")
        self._folder = Path(tempfile.mkdtemp(prefix="chatterbox-status-clips-"))
        self._clips = ClipCache(self._client, self._folder)
        self._running: dict[tuple[str, int], Running] = {}
        self._answering: set[asyncio.Task] = set()
        self._room = asyncio.Event()
        self._accepting = True

    @property
    def capacity(self) -> int:
        """Calls it takes at once: as many as a loaded engine steps together (1 before)."""
        return max([1, *(slot.engine.max_batch_size for slot in self.engines.slots.values() if slot.ready)])

    async def run(self, stop: asyncio.Event) -> None:
        """Serve chunk calls until ``stop`` is set, then let the running ones finish."""
        log.info("engine worker %s on %s, Redis at %s", self.name, self.settings.device, self.url)
        self.engines.start()
        self._sender.start()
        tasks = [
            asyncio.create_task(keep(self._beat, self._lost), name="worker-heartbeat"),
            asyncio.create_task(keep(self._listen, self._lost), name="worker-control"),
        ]
        consumer = asyncio.create_task(keep(self._consume, self._lost), name="worker-calls")
        await stop.wait()
        self._accepting = False
        consumer.cancel()
        await asyncio.wait([consumer], timeout=STOP_SECONDS)
        log.info("engine worker %s stopping: %d calls to finish", self.name, len(self._running))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drained(), self.settings.shutdown_timeout)
        for entry in self._running.values():
            entry.cancel.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drained(), 5.0)
        await self._sender.stop()
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks, timeout=STOP_SECONDS)  # bounded: a stop never hangs on Redis
        await self.engines.stop()
        with contextlib.suppress(RedisError, OSError):
            await self._client.delete(WORKER + self.name)
        await self._client.aclose()
        shutil.rmtree(self._folder, ignore_errors=True)

    async def _drained(self) -> None:
        while self._running:
            self._room.clear()
            await self._room.wait()

    def _lost(self, exc: BaseException) -> None:
        log.error("engine worker: Redis at %s: %s", self.url, exc)

    # -- what it offers --------------------------------------------------------------

    def registration(self) -> dict[str, Any]:
        """What nodes know of it: each engine it offers, with its facts (the loaded model's,
        or its class's until then), which it holds loaded, how many calls it takes and runs,
        its device and its GPU figures."""
        slots = self.engines.slots.values()
        return {
            "name": self.name,
            "device": self.settings.device,
            "pid": os.getpid(),
            "engines": {slot.name: dataclasses.asdict(EngineFacts.of(slot.engine)) for slot in slots},
            "loaded": [slot.name for slot in slots if slot.ready],
            "capacity": self.capacity,
            "running": len(self._running),
            "gpu": next((slot.host.gpu for slot in slots if slot.ready and slot.host.gpu), None),
        }

    async def _beat(self) -> None:
        while True:
            await self._register()
            await asyncio.sleep(HEARTBEAT_SECONDS)  # a heartbeat's period, not a wait for anything

    async def _register(self) -> None:
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.set(WORKER + self.name, json.dumps(self.registration()), px=WORKER_TTL_MS)
            pipe.sadd(WORKERS, self.name)
            await pipe.execute()

    # -- calls ----------------------------------------------------------------------

    async def _consume(self) -> None:
        """Claim calls while there is room, interactive ones first."""
        await ensure_group(self._client)
        await self._register()  # registered before it claims anything
        with contextlib.suppress(EngineUnavailable):  # it failed: the error is in the log, other engines may load
            await self.engines.default.wait_loaded()  # no chunk waits here for a model another worker holds ready
        while self._accepting:
            room = self.capacity - len(self._running)
            if room <= 0:
                self._room.clear()
                await self._room.wait()
                continue
            reply = await self._client.xreadgroup(GROUP, self.name, {CHUNKS["interactive"]: ">"}, count=room)
            if not reply:
                streams = {CHUNKS["interactive"]: ">", CHUNKS["background"]: ">"}
                reply = await self._client.xreadgroup(GROUP, self.name, streams, count=1, block=READ_BLOCK_MS)  # type: ignore[arg-type]
            for stream, entries in cast(list, reply or []):
                for entry_id, fields in entries:
                    header, _ = decode(fields)
                    key = (header["node"], header["call"])
                    self._running[key] = Running(CancelFlag())
                    task = asyncio.create_task(self._answer(stream.decode(), entry_id, header), name=f"call-{header['job']}")
                    self._answering.add(task)
                    task.add_done_callback(self._answering.discard)

    async def _answer(self, stream: str, entry_id: bytes, header: dict[str, Any]) -> None:
        node, call = header["node"], header["call"]
        running = self._running[(node, call)]

        def send(frame: dict[str, Any], payload: bytes = b"") -> None:
            fields = encode({**frame, "call": call}, payload)

            def command(pipe: Any) -> None:
                pipe.xadd(REPLIES + node, fields, maxlen=REPLY_LENGTH, approximate=True)
                pipe.expire(REPLIES + node, REPLY_SECONDS)

            self._sender.put(command)

        try:
            send({"type": "claimed", "worker": self.name})
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.exists(f"{CANCELLED}{node}:{call}")
                pipe.exists(ALIVE + node)
                cancelled, alive = await pipe.execute()
            if cancelled:
                raise Cancelled()
            if not alive:  # the node stopped: nobody waits for this chunk
                raise EngineError(f"the server that queued it ({node}) stopped")
            if header["engine"] not in self.engines.slots:
                raise EngineError(f"engine worker {self.name} does not offer engine {header['engine']!r} (ENGINE, ENGINES)")
            voice = Voice(**header["voice"])
            if header.get("clip"):
                voice = dataclasses.replace(voice, path=await self._clips.fetch(header["clip"], header["suffix"]))
            async with self.engines.using(header["engine"], running.cancel) as slot:
                running.slot = slot
                samples = await slot.host.synthesize(
                    header["text"], voice, SynthesisParams(**header["params"]),
                    lambda fraction: send({"type": "progress", "fraction": fraction}), running.cancel,
                    on_audio=(lambda window: send({"type": "audio_window"}, window.tobytes())) if header["stream"] else None,
                    job=header["job"], on_batch=lambda jobs: send({"type": "batch", "calls": [call], "jobs": jobs}),
                )
        except Exception as exc:
            send(failed(exc))
        else:
            send({"type": "audio", "gpu": slot.host.gpu}, samples.astype("float32", copy=False).tobytes())
        finally:
            del self._running[(node, call)]
            self._sender.put(lambda pipe: (pipe.xack(stream, GROUP, entry_id), pipe.xdel(stream, entry_id)))
            self._room.set()

    async def _listen(self) -> None:
        """Cancellations, kills and memory releases, from any node."""
        async with self._client.pubsub() as pubsub:
            await pubsub.subscribe(CONTROL)
            async for message in pubsub.listen():
                if message["type"] == "message":
                    await self._control(json.loads(message["data"]))

    async def _control(self, message: dict[str, Any]) -> None:
        if message["type"] == "release":
            for slot in self.engines.slots.values():
                if slot.ready:
                    with contextlib.suppress(EngineError):
                        await slot.host.release(bool(message.get("reset_peak")))
            return
        running = self._running.get((message["node"], message["call"]))
        if running is None:
            return
        running.cancel.set()
        if message["type"] == "kill" and running.slot is not None:
            await running.slot.host.kill(message["reason"])


def failed(exc: BaseException) -> dict[str, Any]:
    """The ``failed`` frame for what stopped a call."""
    if isinstance(exc, Cancelled):
        return {"type": "failed", "kind": "cancelled", "message": "cancelled"}
    if isinstance(exc, EngineDied):
        return {"type": "failed", "kind": "died", "message": str(exc)}
    if memory.is_out_of_memory(exc):  # the engine process's report of it, or this process's
        return {"type": "failed", "kind": "out_of_memory", "message": str(exc)}
    if not isinstance(exc, EngineError | LookupError):
        log.exception("engine worker: a call failed", exc_info=exc)
    return {"type": "failed", "kind": "engine", "message": str(exc) or type(exc).__name__}


async def serve(settings: Settings, hosts: Sequence[EngineHost] | None = None) -> None:
    """Run one worker until SIGTERM or SIGINT, on the settings' engines (or ``hosts``, the
    default first: the doubles of tests and benchmarks)."""
    bus = EventBus()  # the engines' events stay in this process: their changes are logged

    def log_engine(event: Event) -> None:
        if event.type == "engine" and "state" in event.data:
            log.info("engine %s: %s%s", event.data["name"], event.data["state"], f" ({event.data['error']})" if event.data.get("error") else "")

    bus.add_listener(log_engine)
    keep_alive = parse_duration(settings.model_keep_alive)
    slots = [EngineSlot(host, bus, keep_alive) for host in (hosts if hosts is not None else engine_processes(settings)[2])]
    worker = EngineWorker(settings, slots, bus)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await worker.run(stop)


class WorkerProcesses:
    """The engine workers a server starts beside itself (WORKERS), one per device, each
    restarted with a growing pause while it keeps dying, and ended with the server."""

    def __init__(self, settings: Settings, devices: list[str]) -> None:
        self.settings = settings
        self.devices = devices
        self.processes: dict[int, asyncio.subprocess.Process] = {}
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._supervise(i, device), name=f"worker-{device}") for i, device in enumerate(self.devices)]

    async def _supervise(self, index: int, device: str) -> None:
        environ = {**os.environ, **self.settings.environ(), "DEVICE": device, "WORKERS": ""}
        failures = 0
        while True:
            started = time.monotonic()
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "chatterbox_status", "worker", env=environ, preexec_fn=die_with_the_server
            )
            self.processes[index] = process
            returncode = await process.wait()
            failures = failures + 1 if time.monotonic() - started < STABLE_SECONDS else 1
            delay = 0.0 if failures == 1 else min(RESTART_BACKOFF_MAX, RESTART_BACKOFF_FIRST * 2 ** (failures - 2))
            log.error("engine worker on %s %s; starting another in %.0f s", device, describe_exit(returncode), delay)
            await asyncio.sleep(delay)  # the backoff itself, not a wait for anything

    async def stop(self) -> None:
        """SIGTERM: each finishes its calls (SHUTDOWN_TIMEOUT), then it is killed."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        running = [process for process in self.processes.values() if process.returncode is None]
        for process in running:
            process.terminate()
        for process in running:
            try:
                await asyncio.wait_for(process.wait(), self.settings.shutdown_timeout + 5.0)
            except TimeoutError:
                process.kill()
                await process.wait()
