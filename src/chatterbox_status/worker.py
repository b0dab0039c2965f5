"""The worker: a FIFO job queue in front of one dedicated executor thread that owns the engine.

The engine is touched only from that thread. Everything else (queue, status events,
cancellation) lives on the event loop; progress reported by the engine from its thread
is handed to the loop with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, Protocol, TypeVar

from .engines.base import Engine, SynthesisParams, Voice
from .events import EventBus
from .exceptions import Cancelled, EngineUnavailable, QueueFull, ShuttingDown

log = logging.getLogger(__name__)
T = TypeVar("T")

# A realistic sentence: its timing seeds the throughput estimate before any request ran.
WARM_UP_TEXT = "The quick brown fox jumps over the lazy dog, and then it runs far away."


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

    def __init__(self, engine: Engine, bus: EventBus, max_queue_size: int) -> None:
        self.engine = engine
        self.bus = bus
        self.queue: JobQueue[Q] = JobQueue(max_queue_size)
        self.current: Q | None = None
        self.load_error: str | None = None
        self.accepting = True
        self._idle = asyncio.Event()
        self._idle.set()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")
        self._loaded = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def ready(self) -> bool:
        return self._loaded.is_set() and self.load_error is None

    def start(self, process: Callable[[Q], Awaitable[None]]) -> None:
        """Start loading the model and consuming jobs with ``process`` (the pipeline)."""
        self._loop = asyncio.get_running_loop()
        self._tasks = [
            asyncio.create_task(self._load(), name="engine-load"),
            asyncio.create_task(self._consume(process), name="job-consumer"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._executor.shutdown(wait=False, cancel_futures=True)

    def run(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Run ``fn`` on the engine thread; it is handed over now, not when awaited, so the
        engine never waits behind whatever else the loop has queued."""
        assert self._loop is not None
        return self._loop.run_in_executor(self._executor, fn, *args)

    async def turn(self, cancel_requested: asyncio.Event) -> None:
        """Return once no interactive job is queued or running (raises Cancelled if
        ``cancel_requested`` is set first).

        Background work (long-text chunks) yields to interactive requests: a caller hands
        its chunk to :meth:`run` right after this returns, with no await in between, so a
        waiting request is delayed by at most one such chunk.
        """
        while not self._idle.is_set():
            await _first_of(self._idle, cancel_requested)
            if cancel_requested.is_set():
                raise Cancelled()

    def on_loop(self, fn: Callable[..., None]) -> Callable[..., None]:
        """Wrap ``fn`` so that calling it from the engine thread runs it on the loop."""
        loop = self._loop
        assert loop is not None

        def hop(*args: Any) -> None:
            loop.call_soon_threadsafe(fn, *args)

        return hop

    async def wait_loaded(self, cancel_requested: asyncio.Event | None = None) -> None:
        """Wait for the model (raises EngineUnavailable if it failed to load), unless
        ``cancel_requested`` is set first (raises Cancelled)."""
        await _first_of(self._loaded, *([cancel_requested] if cancel_requested is not None else []))
        if cancel_requested is not None and cancel_requested.is_set():
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

    async def _load(self) -> None:
        name = self.engine.name
        self.bus.publish("engine", {"name": name, "state": "loading", "load_progress": 0.0})
        def load_progress(fraction: float) -> None:
            self.bus.publish("engine", {"load_progress": round(100 * fraction, 1)})

        report = self.on_loop(load_progress)
        try:
            started = time.perf_counter()
            await self.run(self.engine.load, report)
            loaded = time.perf_counter()
            # The first call pays one-off costs; the second one measures steady throughput.
            await self._warm_up()
            warm = time.perf_counter()
            await self._warm_up()
            measured = time.perf_counter() - warm
        except Exception as exc:
            log.exception("engine %s failed to load", name)
            self.load_error = f"engine {name} failed to load: {exc}"
            self.bus.publish("engine", {"state": "error", "error": self.load_error})
        else:
            log.info("engine %s loaded in %.1fs, warm-up took %.2fs", name, loaded - started, warm - loaded)
            self.bus.publish(
                "engine",
                {
                    "state": "ready",
                    "load_progress": 100.0,
                    "load_seconds": round(loaded - started, 3),
                    "seconds_per_char": measured / len(WARM_UP_TEXT),
                },
            )
        finally:
            self._loaded.set()

    async def _warm_up(self) -> None:
        await self.run(
            self.engine.synthesize,
            WARM_UP_TEXT,
            Voice(),
            SynthesisParams(exaggeration=0.5, cfg_weight=0.5, temperature=0.8, seed=0),
            lambda fraction: None,
            threading.Event(),
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
