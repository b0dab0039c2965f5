"""The engines a server offers, each loaded in a process of its own when a request needs
it and unloaded when it has been idle for its keep-alive.

An :class:`EngineSlot` is one configured engine: its host (the engine process), the
supervision of that process (restarts with a growing pause while it keeps dying), the
requests using it (leases) and its keep-alive, as ollama keeps models. Unloading ends the
engine process, so every byte of its memory, CUDA's included, goes back to the system.
The :class:`EnginePool` holds the slots and bounds how many are loaded at once
(MAX_LOADED_MODELS): before another loads, the least recently used idle one is unloaded.

Every change a client can see (loading, ready, in use, idle since, unloaded, restarting,
failed) is an ``engine`` event on the bus, naming the engine; the tracker folds them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import numpy as np

from .engines.base import AudioFn, BatchFn, EngineDescription, ProgressFn, SynthesisParams, Voice
from .events import EventBus
from .exceptions import Cancelled, EngineDied, EngineError, EngineUnavailable, ModelBusy

log = logging.getLogger(__name__)

# A realistic sentence: its timing seeds the throughput estimate before any request ran.
WARM_UP_TEXT = "The quick brown fox jumps over the lazy dog, and then it runs far away."
# Restarts after the engine process died: at once the first time, then after 1, 2, 4 ...
# seconds, up to a minute, while it keeps dying within STABLE_SECONDS of being ready.
RESTART_BACKOFF_FIRST = 1.0
RESTART_BACKOFF_MAX = 60.0
STABLE_SECONDS = 60.0


class CancelFlag:
    """Set once, on the loop: awaitable there, and carried to the engine by its host."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self._callbacks: list[Callable[[], None]] = []

    def is_set(self) -> bool:
        return self.event.is_set()

    def set(self) -> None:
        if self.event.is_set():
            return
        self.event.set()
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()

    def on_set(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` when the flag is set; returns what forgets it again."""
        self._callbacks.append(callback)

        def forget() -> None:
            with contextlib.suppress(ValueError):
                self._callbacks.remove(callback)

        return forget


class EngineHost(Protocol):
    """Where the engine runs: what the worker needs of it."""

    @property
    def engine(self) -> EngineDescription: ...

    @property
    def gpu(self) -> dict[str, Any] | None:
        """The engine process's last CUDA figures (None without CUDA)."""

    async def load(self, progress: ProgressFn) -> None:
        """Start the engine and load its model (raises EngineError when it cannot load)."""

    def synthesize(
        self,
        text: str,
        voice: Voice,
        params: SynthesisParams,
        progress: ProgressFn,
        cancel: CancelFlag,
        on_audio: AudioFn | None = None,
        job: str = "",
        on_batch: BatchFn | None = None,
        priority: str = "interactive",
    ) -> asyncio.Future[np.ndarray]:
        """Hand one chunk of request ``job`` to the engine now; progress (and, with
        ``on_audio``, the chunk's audio a window at a time, where the engine streams within a
        chunk; with ``on_batch``, the requests it is batched with) comes on the loop. Where
        chunks wait in a queue the host shares (engine workers), ``background`` ones wait
        behind ``interactive`` ones; a host of its own has the worker's turn for that."""

    async def release(self, reset_peak: bool = False) -> None: ...

    def memory_pid(self) -> int | None: ...

    async def ended(self) -> str:
        """Once the engine is gone: why."""

    async def kill(self, reason: str) -> None: ...

    async def close(self) -> None: ...


async def first_of(*events: asyncio.Event) -> None:
    """Until the first of ``events`` is set."""
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


class EngineSlot:
    """One configured engine: loaded on demand, supervised while loaded, unloaded when idle."""

    def __init__(self, host: EngineHost, bus: EventBus, keep_alive: float) -> None:
        self.host = host
        self.bus = bus
        self.keep_alive = keep_alive
        self.leases = 0
        self.last_used = 0.0  # monotonic, for least-recently-used
        self.load_error: str | None = None
        self.restarts = 0
        self.measured = False  # warmed up once: later loads skip the warm-up
        self._loaded = asyncio.Event()
        self._supervisor: asyncio.Task | None = None
        self._unloading: asyncio.Task | None = None
        self._expiry: asyncio.TimerHandle | None = None

    @property
    def name(self) -> str:
        return self.host.engine.name

    @property
    def engine(self) -> EngineDescription:
        return self.host.engine

    @property
    def running(self) -> bool:
        """Loading, loaded or restarting: it holds (or is about to hold) memory. One that
        failed to load is not: its process is gone."""
        return self._supervisor is not None and self.load_error is None

    @property
    def ready(self) -> bool:
        return self._loaded.is_set() and self.load_error is None

    @property
    def loaded(self) -> asyncio.Event:
        """Set once loading has ended (ready, or failed: see ``load_error``); cleared while
        the engine is restarting or unloaded."""
        return self._loaded

    def _publish(self, **fields) -> None:
        self.bus.publish("engine", {"name": self.name, **fields})

    def announce(self) -> None:
        """Its first event: configured, not loaded yet, and its keep-alive."""
        self._publish(state="not_started", load_progress=0.0, error=None, **self._idle_fields())

    # -- loading -------------------------------------------------------------------

    async def start(self) -> None:
        """Start loading unless it is loaded or loading (after an unload under way ends);
        one that failed to load tries again."""
        if self._unloading is not None:
            await asyncio.shield(self._unloading)
        self.begin()

    def begin(self) -> None:
        if self._supervisor is not None and self.load_error is None:
            return
        self.load_error = None
        self._loaded.clear()
        self._supervisor = asyncio.create_task(self._supervise(), name=f"engine-{self.name}")

    async def wait_loaded(self, cancel: CancelFlag | None = None) -> None:
        """Wait for the model (raises EngineUnavailable if it failed to load), unless
        ``cancel`` is set first (raises Cancelled)."""
        await first_of(self._loaded, *([cancel.event] if cancel is not None else []))
        if cancel is not None and cancel.is_set():
            raise Cancelled()
        if self.load_error is not None:
            raise EngineUnavailable(self.load_error)

    async def _supervise(self) -> None:
        """Load the engine; whenever its process dies, start a new one, backing off while
        it keeps dying soon after it was ready (or while loading)."""
        failures = 0
        while True:
            ready_at = time.monotonic()
            try:
                if not await self._load():
                    return
                ready_at = time.monotonic()
                reason = await self.host.ended()
            except EngineDied as exc:  # while loading or warming up
                reason = str(exc)
            self._loaded.clear()
            self.restarts += 1
            failures = failures + 1 if time.monotonic() - ready_at < STABLE_SECONDS else 1
            delay = 0.0 if failures == 1 else min(RESTART_BACKOFF_MAX, RESTART_BACKOFF_FIRST * 2 ** (failures - 2))
            log.error("engine %s: %s; restarting in %.0f s", self.name, reason, delay)
            self._publish(state="restarting", load_progress=0.0, error=f"{reason}; restart {self.restarts} in {delay:g} s")
            await asyncio.sleep(delay)  # the backoff itself, not a wait for anything

    async def _load(self) -> bool:
        """One start of the engine: loaded (and warmed up the first time), or failed for
        good (False); raises EngineDied when its process dies on the way."""
        self._publish(state="loading", load_progress=0.0, error=None, idle_since=None, unloads_at=None)

        def load_progress(fraction: float) -> None:
            self._publish(load_progress=round(100 * fraction, 1))

        try:
            started = time.perf_counter()
            await self.host.load(load_progress)
            loaded = time.perf_counter()
            measured = None
            if not self.measured:
                # The first call pays one-off costs; the second one measures steady throughput.
                await self._warm_up()
                warm = time.perf_counter()
                await self._warm_up()
                measured = time.perf_counter() - warm
        except EngineDied:
            raise
        except EngineError as exc:
            log.error("engine %s failed to load: %s", self.name, exc)
            self.load_error = f"engine {self.name} failed to load: {exc}"
            self._publish(state="error", error=self.load_error)
            self._loaded.set()
            return False
        log.info("engine %s loaded in %.1fs", self.name, loaded - started)
        ready = {"state": "ready", "load_progress": 100.0, "error": None, "load_seconds": round(loaded - started, 3)}
        if measured is not None:
            self.measured = True
            ready["seconds_per_char"] = measured / len(WARM_UP_TEXT)
        self._loaded.set()
        self._publish(**ready, **self._idle_fields())
        if self.leases == 0:
            self._schedule_expiry()
        return True

    async def _warm_up(self) -> None:
        await self.host.synthesize(
            WARM_UP_TEXT,
            Voice(),
            SynthesisParams(exaggeration=0.5, cfg_weight=0.5, temperature=0.8, seed=0),
            lambda fraction: None,
            CancelFlag(),
        )

    # -- use and keep-alive ------------------------------------------------------------

    def _idle_fields(self) -> dict[str, Any]:
        """How many requests use it; when loaded and unused, since when and when its
        keep-alive ends."""
        fields: dict[str, Any] = {"in_use": self.leases, "keep_alive_seconds": self.keep_alive, "idle_since": None, "unloads_at": None}
        if self.leases == 0 and self.ready:
            now = time.time()
            fields["idle_since"] = round(now, 3)
            fields["unloads_at"] = None if self.keep_alive < 0 else round(now + self.keep_alive, 3)
        return fields

    def lease(self) -> None:
        """A request uses it from now on: it stays loaded until the request lets go."""
        self.leases += 1
        self._cancel_expiry()
        if self.leases == 1:
            self._publish(**self._idle_fields())

    def let_go(self, keep_alive: float | None = None) -> None:
        """A request is done with it; ``keep_alive`` (the request's own) applies from now on."""
        self.leases -= 1
        self.last_used = time.monotonic()
        if keep_alive is not None:
            self.keep_alive = keep_alive
        if self.leases == 0:
            self._publish(**self._idle_fields())
            if self.ready:
                self._schedule_expiry()

    def _schedule_expiry(self) -> None:
        self._cancel_expiry()
        if self.keep_alive < 0:
            return
        self._expiry = asyncio.get_running_loop().call_later(self.keep_alive, self._expire)

    def _cancel_expiry(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None

    def _expire(self) -> None:
        self._expiry = None
        if self.leases == 0 and self.running and self._unloading is None:
            self._unloading = asyncio.create_task(self._unload(f"idle for its keep-alive ({self.keep_alive:g} s)"))

    async def unload(self, reason: str) -> None:
        """End its process and give back its memory (only while no request uses it)."""
        if self.leases:
            raise ModelBusy(f"Model {self.name!r} is in use by {self.leases} request(s); unload it once they end")
        if self._unloading is None:
            self._unloading = asyncio.create_task(self._unload(reason))
        await asyncio.shield(self._unloading)

    async def _unload(self, reason: str) -> None:
        """The one unload under way (a load waits for it to end), unless a request came first."""
        try:
            if self.leases or self._supervisor is None:
                return
            self._cancel_expiry()
            task, self._supervisor = self._supervisor, None
            log.info("unloading engine %s: %s", self.name, reason)
            self._publish(state="unloading", idle_since=None, unloads_at=None)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await self.host.close()
            self._loaded.clear()
            self._publish(state="unloaded", load_progress=0.0, error=None, unload_reason=reason, in_use=0, idle_since=None, unloads_at=None)
        finally:
            self._unloading = None

    async def stop(self) -> None:
        """At shutdown: stop supervising and end the process."""
        self._cancel_expiry()
        for task in (self._supervisor, self._unloading):
            if task is not None:
                task.cancel()
        await asyncio.gather(*(t for t in (self._supervisor, self._unloading) if t is not None), return_exceptions=True)
        self._supervisor = self._unloading = None
        await self.host.close()


class EnginePool:
    """The configured engines by name, at most ``max_loaded`` of them loaded at once."""

    def __init__(self, slots: list[EngineSlot], max_loaded: int) -> None:
        self.slots = {slot.name: slot for slot in slots}
        self.default = slots[0]
        self.max_loaded = max_loaded
        self._room = asyncio.Condition()

    def __getitem__(self, name: str) -> EngineSlot:
        return self.slots[name]

    def start(self) -> None:
        """Announce every engine, and load the default one now, so the first request finds it ready."""
        for slot in self.slots.values():
            slot.announce()
        self.default.begin()

    async def stop(self) -> None:
        await asyncio.gather(*(slot.stop() for slot in self.slots.values()))

    @contextlib.asynccontextmanager
    async def using(self, name: str, cancel: CancelFlag, keep_alive: float | None = None) -> AsyncIterator[EngineSlot]:
        """The engine ``name``, loaded (loading it first, and making room for it, if need be),
        held for the block: it is not unloaded while a request uses it."""
        slot = await self.acquire(name, cancel)
        try:
            yield slot
        finally:
            await self.release(slot, keep_alive)

    async def acquire(self, name: str, cancel: CancelFlag) -> EngineSlot:
        slot = self.slots[name]
        slot.lease()
        try:
            await self.ensure_loaded(slot, cancel)
        except BaseException:
            await self.release(slot)
            raise
        return slot

    async def ensure_loaded(self, slot: EngineSlot, cancel: CancelFlag) -> None:
        """Wait until ``slot`` (leased by the caller) is loaded, loading it if it is not."""
        if not slot.running:
            await self._start(slot, cancel)
        await slot.wait_loaded(cancel)

    async def release(self, slot: EngineSlot, keep_alive: float | None = None) -> None:
        slot.let_go(keep_alive)
        async with self._room:
            self._room.notify_all()

    async def _start(self, slot: EngineSlot, cancel: CancelFlag) -> None:
        """Start loading ``slot`` once there is room: unload least recently used idle engines
        until there is; while every loaded one is in use, wait for one to be let go (or for
        ``cancel``)."""
        async with self._room:
            while True:
                if slot.running:
                    return
                others = [s for s in self.slots.values() if s is not slot and s.running]
                if len(others) < self.max_loaded:
                    await slot.start()
                    return
                idle = [s for s in others if s.leases == 0]
                if idle:
                    victim = min(idle, key=lambda s: s.last_used)
                    await victim.unload(f"making room for {slot.name} (MAX_LOADED_MODELS is {self.max_loaded})")
                    continue
                waiter = asyncio.ensure_future(self._room.wait())
                cancelled = asyncio.ensure_future(cancel.event.wait())
                try:
                    await asyncio.wait([waiter, cancelled], return_when=asyncio.FIRST_COMPLETED)
                finally:
                    cancelled.cancel()
                    if not waiter.done():
                        waiter.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await waiter  # Condition.wait re-acquires the lock even when cancelled
                if cancel.is_set():
                    raise Cancelled()
