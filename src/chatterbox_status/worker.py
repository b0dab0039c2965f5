"""The worker: a FIFO job queue in front of the engine, and the engine's supervision.

The engine runs in a process of its own (:class:`~chatterbox_status.supervisor.EngineProcess`,
behind the :class:`EngineHost` protocol); the queue, status events and cancellation live on
the event loop. The worker loads the engine, warms it up, and when its process dies starts
a new one, with a growing pause when it keeps dying; jobs meanwhile wait as
``initializing``. A chunk that overruns CHUNK_TIMEOUT and ignores cancellation has its
process killed and replaced.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from .engines.base import EngineDescription, ProgressFn, SynthesisParams, Voice
from .events import EventBus
from .exceptions import Cancelled, EngineDied, EngineError, EngineUnavailable, QueueFull, ShuttingDown

log = logging.getLogger(__name__)

# A realistic sentence: its timing seeds the throughput estimate before any request ran.
WARM_UP_TEXT = "The quick brown fox jumps over the lazy dog, and then it runs far away."
# Restarts after the engine process died: at once the first time, then after 1, 2, 4 ...
# seconds, up to a minute, while it keeps dying within STABLE_SECONDS of being ready.
RESTART_BACKOFF_FIRST = 1.0
RESTART_BACKOFF_MAX = 60.0
STABLE_SECONDS = 60.0
# How long a chunk past CHUNK_TIMEOUT gets to honour its cancellation before its process
# is killed (at most CHUNK_TIMEOUT itself).
CANCEL_GRACE_SECONDS = 10.0


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
        self, text: str, voice: Voice, params: SynthesisParams, progress: ProgressFn, cancel: CancelFlag
    ) -> asyncio.Future[np.ndarray]:
        """Hand one chunk to the engine now; progress is reported on the loop."""

    async def release(self, reset_peak: bool = False) -> None: ...

    def memory_pid(self) -> int | None: ...

    async def ended(self) -> str:
        """Once the engine is gone: why."""

    async def kill(self, reason: str) -> None: ...

    async def close(self) -> None: ...


class Queued(Protocol):
    """What the queue needs of a job."""

    request_id: str

    def request_cancel(self) -> None: ...


Q = TypeVar("Q", bound=Queued)


class JobQueue(Generic[Q]):
    """A bounded FIFO; submit, cancel, ids and next are all a shared queue must offer
    (positions are the tracker's, folded from the events)."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._jobs: collections.OrderedDict[str, Q] = collections.OrderedDict()
        self._nonempty = asyncio.Event()

    def __len__(self) -> int:
        return len(self._jobs)

    def submit(self, job: Q) -> None:
        if len(self._jobs) >= self.maxsize:
            raise QueueFull()
        self._jobs[job.request_id] = job
        self._nonempty.set()

    def cancel(self, request_id: str) -> Q | None:
        return self._jobs.pop(request_id, None)

    def ids(self) -> list[str]:
        return list(self._jobs)

    async def next(self) -> Q:
        while not self._jobs:
            self._nonempty.clear()
            await self._nonempty.wait()
        return self._jobs.popitem(last=False)[1]


class Worker(Generic[Q]):
    """Loads the engine in the background, then runs queued jobs one at a time."""

    def __init__(self, host: EngineHost, bus: EventBus, max_queue_size: int) -> None:
        self.host = host
        self.bus = bus
        self.queue: JobQueue[Q] = JobQueue(max_queue_size)
        self.current: Q | None = None
        self.load_error: str | None = None
        self.accepting = True
        self.restarts = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._loaded = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    @property
    def engine(self) -> EngineDescription:
        return self.host.engine

    @property
    def ready(self) -> bool:
        return self._loaded.is_set() and self.load_error is None

    def start(self, process: Callable[[Q], Awaitable[None]]) -> None:
        """Start loading the model and consuming jobs with ``process`` (the pipeline)."""
        self._tasks = [
            asyncio.create_task(self._supervise(), name="engine-supervisor"),
            asyncio.create_task(self._consume(process), name="job-consumer"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.host.close()

    def synthesize(
        self, text: str, voice: Voice, params: SynthesisParams, progress: ProgressFn, cancel: CancelFlag
    ) -> asyncio.Future[np.ndarray]:
        """Hand one chunk to the engine now, not when awaited, so the engine never waits
        behind whatever else the loop has queued."""
        return self.host.synthesize(text, voice, params, progress, cancel)

    async def release(self, reset_peak: bool = False) -> None:
        """Give back the engine's free memory (a no-op while it is restarting)."""
        with contextlib.suppress(EngineError):
            await self.host.release(reset_peak)

    async def abandon(self, call: asyncio.Future, cancel: CancelFlag, grace: float, reason: str) -> None:
        """A chunk overran: cancel it, and if it has not ended within ``grace`` seconds,
        kill the engine (it will be replaced) so no later job waits behind it."""
        cancel.set()
        done, _ = await asyncio.wait([call], timeout=grace)
        if not done:
            await self.host.kill(reason)

    async def turn(self, cancel: CancelFlag) -> None:
        """Return once no interactive job is queued or running (raises Cancelled if
        ``cancel`` is set first).

        Background work (long-text chunks) yields to interactive requests: a caller hands
        its chunk to :meth:`synthesize` right after this returns, with no await in between,
        so a waiting request is delayed by at most one such chunk.
        """
        while not self._idle.is_set():
            await _first_of(self._idle, cancel.event)
            if cancel.is_set():
                raise Cancelled()

    async def wait_loaded(self, cancel: CancelFlag | None = None) -> None:
        """Wait for the model (raises EngineUnavailable if it failed to load), unless
        ``cancel`` is set first (raises Cancelled)."""
        await _first_of(self._loaded, *([cancel.event] if cancel is not None else []))
        if cancel is not None and cancel.is_set():
            raise Cancelled()
        if self.load_error is not None:
            raise EngineUnavailable(self.load_error)

    def submit(self, job: Q) -> None:
        if not self.accepting:
            raise ShuttingDown()
        self.queue.submit(job)
        self._idle.clear()

    async def idle(self) -> None:
        """Wait until no job is queued or running."""
        await self._idle.wait()

    def cancel(self, request_id: str) -> Q | None:
        """Cancel a queued or running job; returns it, or None when it is neither."""
        job = self.queue.cancel(request_id)
        if job is None and self.current is not None and self.current.request_id == request_id:
            job = self.current
        if not self.queue and self.current is None:
            self._idle.set()
        if job is not None:
            job.request_cancel()
        return job

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
            log.error("engine %s: %s; restarting in %.0f s", self.engine.name, reason, delay)
            self.bus.publish(
                "engine",
                {"state": "restarting", "load_progress": 0.0, "error": f"{reason}; restart {self.restarts} in {delay:g} s"},
            )
            await asyncio.sleep(delay)  # the backoff itself, not a wait for anything

    async def _load(self) -> bool:
        """One start of the engine: loaded and warmed up (True), or failed for good (False);
        raises EngineDied when its process dies on the way."""
        name = self.engine.name
        self.bus.publish("engine", {"name": name, "state": "loading", "load_progress": 0.0, "error": None})

        def load_progress(fraction: float) -> None:
            self.bus.publish("engine", {"load_progress": round(100 * fraction, 1)})

        try:
            started = time.perf_counter()
            await self.host.load(load_progress)
            loaded = time.perf_counter()
            # The first call pays one-off costs; the second one measures steady throughput.
            await self._warm_up()
            warm = time.perf_counter()
            await self._warm_up()
            measured = time.perf_counter() - warm
        except EngineDied:
            raise
        except EngineError as exc:
            log.error("engine %s failed to load: %s", name, exc)
            self.load_error = f"engine {name} failed to load: {exc}"
            self.bus.publish("engine", {"state": "error", "error": self.load_error})
            self._loaded.set()
            return False
        log.info("engine %s loaded in %.1fs, warm-up took %.2fs", name, loaded - started, warm - loaded)
        self.bus.publish(
            "engine",
            {
                "state": "ready",
                "load_progress": 100.0,
                "error": None,
                "load_seconds": round(loaded - started, 3),
                "seconds_per_char": measured / len(WARM_UP_TEXT),
            },
        )
        self._loaded.set()
        return True

    async def _warm_up(self) -> None:
        await self.host.synthesize(
            WARM_UP_TEXT,
            Voice(),
            SynthesisParams(exaggeration=0.5, cfg_weight=0.5, temperature=0.8, seed=0),
            lambda fraction: None,
            CancelFlag(),
        )

    async def _consume(self, process: Callable[[Q], Awaitable[None]]) -> None:
        while True:
            job = await self.queue.next()
            self.current = job
            try:
                await process(job)
            except Exception:
                log.exception("pipeline crashed on request %s", job.request_id)
            finally:
                self.current = None
                if not self.queue:
                    self._idle.set()


async def _first_of(*events: asyncio.Event) -> None:
    """Until the first of ``events`` is set."""
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
