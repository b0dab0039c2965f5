"""The worker: a FIFO job queue in front of the engines, run one job at a time (a batch's
worth at a time on an engine that batches).

Each engine runs in a process of its own (:class:`~chatterbox_status.supervisor.EngineProcess`,
behind the :class:`EngineHost` protocol), loaded, supervised and unloaded by its
:class:`~chatterbox_status.engine_pool.EngineSlot`; the queue, status events and
cancellation live on the event loop. A chunk that overruns CHUNK_TIMEOUT and ignores
cancellation has its process killed and replaced.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, Protocol, TypeVar

from .engine_pool import CancelFlag, EnginePool, EngineSlot, first_of
from .engines.base import EngineDescription
from .exceptions import Cancelled, EngineError, QueueFull, ShuttingDown

log = logging.getLogger(__name__)

# How long a chunk past CHUNK_TIMEOUT gets to honour its cancellation before its process
# is killed (at most CHUNK_TIMEOUT itself).
CANCEL_GRACE_SECONDS = 10.0


class Queued(Protocol):
    """What the queue needs of a job."""

    request_id: str
    engine: str

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

    async def head(self) -> Q:
        """The first job, left in the queue (``cancel`` takes it out)."""
        while not self._jobs:
            self._nonempty.clear()
            await self._nonempty.wait()
        return next(iter(self._jobs.values()))


class Worker(Generic[Q]):
    """Runs queued jobs in order on the engines of its pool: one at a time, except that an
    engine that batches (``max_batch_size`` > 1, once loaded) takes up to that many jobs at
    once, whose chunks it steps together. Jobs of another engine wait until those end."""

    def __init__(self, engines: EnginePool, max_queue_size: int) -> None:
        self.engines = engines
        self.queue: JobQueue[Q] = JobQueue(max_queue_size)
        self.running: dict[str, Q] = {}
        self.accepting = True
        self._idle = asyncio.Event()
        self._idle.set()
        self._changed = asyncio.Event()  # a job came, went or ended: the head may start now
        self._consumer: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()

    # The default engine's state, as a server with one engine has it.

    @property
    def engine(self) -> EngineDescription:
        return self.engines.default.engine

    @property
    def ready(self) -> bool:
        return self.engines.default.ready

    async def wait_loaded(self, cancel: CancelFlag | None = None) -> None:
        """Wait for the default engine (raises EngineUnavailable if it failed to load), unless
        ``cancel`` is set first (raises Cancelled)."""
        await self.engines.default.wait_loaded(cancel)

    def start(self, process: Callable[[Q], Awaitable[None]]) -> None:
        """Start loading the default engine and consuming jobs with ``process`` (the pipeline)."""
        self.engines.start()
        self._consumer = asyncio.create_task(self._consume(process), name="job-consumer")

    async def stop(self) -> None:
        tasks = [task for task in (self._consumer, *self._tasks) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.engines.stop()

    async def release(self, reset_peak: bool = False) -> None:
        """Give back the free memory of every loaded engine (a no-op for one restarting)."""
        for slot in self.engines.slots.values():
            if slot.ready:
                with contextlib.suppress(EngineError):
                    await slot.host.release(reset_peak)

    async def abandon(self, slot: EngineSlot, call: asyncio.Future, cancel: CancelFlag, grace: float, reason: str) -> None:
        """A chunk overran: cancel it, and if it has not ended within ``grace`` seconds,
        kill its engine (it will be replaced) so no later job waits behind it."""
        cancel.set()
        done, _ = await asyncio.wait([call], timeout=grace)
        if not done:
            await slot.host.kill(reason)

    async def turn(self, cancel: CancelFlag, slot: EngineSlot) -> None:
        """Return once no interactive job is queued or running and ``slot`` (the caller's
        engine, which it uses) is loaded; raises Cancelled if ``cancel`` is set first.

        Background work (long-text chunks) yields to interactive requests: a caller hands
        its chunk to the engine right after this returns, with no await in between, so a
        waiting request is delayed by at most one such chunk. While it waits, the caller
        lets go of its engine, so an interactive request for another engine may unload it
        to make room (that request must not wait for the job that waits for it); it is
        loaded again, if need be, once the turn comes.
        """
        if self._idle.is_set():
            return
        await self.engines.release(slot)
        try:
            while not self._idle.is_set():
                await first_of(self._idle, cancel.event)
                if cancel.is_set():
                    raise Cancelled()
        finally:
            slot.lease()  # held again, so the caller lets go of it exactly once
        await self.engines.ensure_loaded(slot, cancel)

    def submit(self, job: Q) -> None:
        if not self.accepting:
            raise ShuttingDown()
        self.queue.submit(job)
        self._idle.clear()
        self._changed.set()

    def reconsider(self) -> None:
        """What an engine can take at once changed (engine workers came or went): the first
        queued job may start now."""
        self._changed.set()

    async def idle(self) -> None:
        """Wait until no job is queued or running."""
        await self._idle.wait()

    def cancel(self, request_id: str) -> Q | None:
        """Cancel a queued or running job; returns it, or None when it is neither."""
        job = self.queue.cancel(request_id) or self.running.get(request_id)
        if not self.queue and not self.running:
            self._idle.set()
        self._changed.set()
        if job is not None:
            job.request_cancel()
        return job

    def _may_start(self, job: Q) -> bool:
        """Whether the first queued job may run now, beside those running."""
        if not self.running:
            return True
        slot = self.engines[job.engine]
        capacity = slot.engine.max_batch_size if slot.ready else 1
        return len(self.running) < capacity and all(other.engine == job.engine for other in self.running.values())

    async def _consume(self, process: Callable[[Q], Awaitable[None]]) -> None:
        while True:
            job = await self.queue.head()
            if not self._may_start(job):
                self._changed.clear()
                slot = self.engines[job.engine]
                # Its engine loading may make room (a batching engine takes more jobs).
                await first_of(self._changed, *([] if slot.loaded.is_set() else [slot.loaded]))
                continue
            self.queue.cancel(job.request_id)
            self.running[job.request_id] = job
            task = asyncio.create_task(self._run(process, job), name=f"job-{job.request_id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, process: Callable[[Q], Awaitable[None]], job: Q) -> None:
        try:
            await process(job)
        except Exception:
            log.exception("pipeline crashed on request %s", job.request_id)
        finally:
            del self.running[job.request_id]
            if not self.queue and not self.running:
                self._idle.set()
            self._changed.set()
