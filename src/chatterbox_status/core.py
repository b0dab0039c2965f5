"""The service without HTTP: bus, tracker, worker and engine wired together.

Both the web app and the ``say`` command run on it, so a file written from the terminal
goes through exactly the queue, pipeline and events that a web request does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from . import engines, memory, pipeline
from .config import Settings, parse_duration
from .engine_pool import CancelFlag, EngineHost, EnginePool, EngineSlot
from .events import Event, EventBus
from .exceptions import Cancelled, EngineUnavailable, EventLogUnavailable, QueueFull, SharedStateUnavailable
from .pipeline import Job, ProgressBook
from .planning import Planner, SpeechJob
from .supervisor import engine_facts, engine_processes, offered
from .tracker import PAUSED, TERMINAL_STATUSES, StatusTracker
from .voices import VoiceLibrary
from .worker import Worker

if TYPE_CHECKING:
    from .engine_worker import WorkerProcesses
    from .redis_engines import ChunkQueue

log = logging.getLogger(__name__)


class Core:
    """``host`` (one, or several with the default first) stands in for the engine processes
    the settings would start: tests hand in their own."""

    def __init__(self, settings: Settings, host: EngineHost | Sequence[EngineHost] | None = None) -> None:
        self.settings = settings
        self.chunks: ChunkQueue | None = None
        self.worker_processes: WorkerProcesses | None = None
        if host is None and settings.worker_devices is not None:
            hosts: list[EngineHost] = self._remote_engines(settings)
        elif host is None:
            self.choice, self.catalog, processes = engine_processes(settings)
            hosts = list(processes)
        else:
            hosts = list(host) if isinstance(host, Sequence) else [host]
            self.choice = engines.EngineChoice(hosts[0].engine.name, settings.engine, "engine supplied by the caller")
            self.catalog = engines.catalog(self.choice.name, [h.engine.name for h in hosts[1:]], settings.model_aliases)
        self.host = hosts[0]
        self.engine = self.host.engine
        self.bus, self.tracker = self._event_log(settings)
        self.bus.add_listener(self.tracker.apply)
        if self.chunks is not None:
            self.tracker.lanes = self.engine.max_batch_size
        self.bus.add_listener(self._cancel_asked)
        self.progress = ProgressBook(self.bus, self.tracker)
        keep_alive = parse_duration(settings.model_keep_alive)
        self.engines = EnginePool([EngineSlot(h, self.bus, keep_alive) for h in hosts], settings.max_loaded_models)
        self.worker: Worker[Job] = Worker(self.engines, settings.max_queue_size)
        self.voices = self._voice_library(settings)
        self.planner = Planner(settings, self.catalog, {h.engine.name: h.engine for h in hosts}, self.voices)
        self.started_at = time.time()
        self._processed = 0

    def _remote_engines(self, settings: Settings) -> list[EngineHost]:
        """The engines as the cluster's workers run them (WORKERS); the workers WORKERS names
        start beside this server."""
        from . import redis_events
        from .engine_worker import WorkerProcesses
        from .redis_engines import ChunkQueue  # the redis package is needed only here

        self.choice, self.catalog = offered(settings)
        self.chunks = ChunkQueue(settings.redis_url, redis_events.node_name(), self._taken, self._capacity_changed)
        if settings.worker_devices:
            self.worker_processes = WorkerProcesses(settings, settings.worker_devices)
        return [self.chunks.engine(engine_facts(name, settings)) for name in self.catalog.engines]

    def _capacity_changed(self) -> None:
        """The engine workers take more (or fewer) requests at once: so do the queue, and its
        estimates (by the default engine's workers)."""
        self.tracker.lanes = self.engine.max_batch_size
        self.worker.reconsider()

    def _taken(self, request_id: str, worker: str) -> None:
        """An engine worker took a chunk of the request: its record says which."""
        progress = self.progress.find(request_id)
        if progress is not None:
            progress.taken_by(worker)

    def _event_log(self, settings: Settings) -> tuple[EventBus, StatusTracker]:
        """The bus and the tracker that folds it: in process, or over the Redis that
        REDIS_URL names, shared with the cluster's other nodes."""
        sizes = (settings.event_replay_size, settings.sse_queue_size, settings.max_sse_subscribers)
        if not settings.redis_url:
            return EventBus(*sizes), StatusTracker(settings.history_size, self.catalog.default)
        from . import redis_events  # the redis package is needed only here

        node = self.chunks.node if self.chunks is not None else redis_events.node_name()
        tracker = StatusTracker(settings.history_size, self.catalog.default, node)
        return redis_events.RedisEventBus(settings.redis_url, node, tracker, *sizes), tracker

    def _voice_library(self, settings: Settings) -> VoiceLibrary:
        """The voices of this node, or of every node sharing REDIS_URL."""
        if not settings.redis_url:
            return VoiceLibrary(Path(settings.voice_library_dir))
        from .redis_voices import SharedVoiceLibrary

        return SharedVoiceLibrary(settings.voice_library_dir, settings.redis_url, self.bus)

    async def start(self) -> None:
        await self.bus.start()
        await self.voices.start()
        if self.chunks is not None:
            await self.chunks.start()
        if self.worker_processes is not None:
            await self.worker_processes.start()
        log.info("engine: %s (%s)", self.choice.name, self.choice.reason)
        if self.settings.voice_sample_path and not self.engine.supports_cloning:
            log.warning("VOICE_SAMPLE_PATH is ignored: engine %s cannot clone voices", self.engine.name)
        self.worker.start(self.run_job)

    async def shutdown(self) -> None:
        """Take no new jobs, let queued and running ones finish within SHUTDOWN_TIMEOUT,
        cancel what is left, then end every event stream after its last events."""
        self.worker.accepting = False
        try:
            await asyncio.wait_for(self.worker.idle(), self.settings.shutdown_timeout)
        except TimeoutError:
            log.warning("shutdown: cancelling requests still unfinished after %ss", self.settings.shutdown_timeout)
            for request_id in [*self.worker.queue.ids(), *self.worker.running]:
                self.cancel(request_id)
            # A running chunk stops at the engine's next cancellation check; a request still
            # waiting for the model is ended by stop() cancelling the worker.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.worker.idle(), self.settings.shutdown_timeout)
        finally:
            self.bus.close()

    async def stop(self) -> None:
        await self.worker.stop()
        if self.worker_processes is not None:
            await self.worker_processes.stop()
        if self.chunks is not None:
            await self.chunks.stop()
        await self.voices.stop()
        await self.bus.stop()

    async def run_job(self, job: Job) -> None:
        """Through the pipeline; every MEMORY_CLEANUP_INTERVAL jobs, release memory."""
        await pipeline.process(job, self.worker, self.settings.chunk_timeout)
        self._processed += 1
        interval = self.settings.memory_cleanup_interval
        if interval and self._processed % interval == 0:
            await self.worker.release()

    def memory(self) -> dict:
        """Memory now, of the server and its engine processes (see memory.snapshot)."""
        return memory.snapshot([(slot.host.memory_pid(), slot.host.gpu) for slot in self.engines.slots.values()])

    def memory_report(self) -> dict:
        """What the status API shows of memory (a note when monitoring is off)."""
        if not self.settings.enable_memory_monitoring:
            return memory.report(False)
        return self.memory()

    async def release_memory(self) -> None:
        """Collect garbage here and in the engine process, and empty its CUDA cache
        (resetting the peak)."""
        await asyncio.to_thread(memory.release)
        await self.worker.release(reset_peak=True)

    async def load_engine(self, name: str) -> None:
        """Load engine ``name`` now (raises EngineUnavailable if it cannot); its keep-alive
        starts once it is ready."""
        slot = await self.engines.acquire(name, CancelFlag())
        await self.engines.release(slot)

    def check_ready(self, engine: str) -> None:
        """Refuse new work for ``engine`` when it failed to load (the tracker knows), or when
        the shared event log is unreachable, so the work could not be tracked."""
        state = self.tracker.engine_state(engine)
        if state.get("state") == "error":
            raise EngineUnavailable(state.get("error") or "the engine failed to load")
        if self.bus.problem:
            raise EventLogUnavailable(f"The request cannot be tracked: {self.bus.problem}")
        if self.chunks is not None and self.chunks.problem:
            raise SharedStateUnavailable(f"The engine workers cannot be reached: the chunk queue (Redis at {self.chunks.url}): {self.chunks.problem}")

    def submit(self, request_id: str, speech: SpeechJob, temporary_files: list[Path] | None = None) -> Job:
        """Queue a job (raises QueueFull, ShuttingDown or EngineUnavailable) and announce it.

        Await ``job.result`` for the audio; a streamed job's audio comes through ``job.stream``.
        """
        self.check_ready(speech.engine)
        stream = pipeline.AudioStream() if speech.stream_format else None
        output = (
            pipeline.StreamedOutput(speech.response_format, stream)
            if stream is not None
            else pipeline.BufferedOutput(speech.response_format)
        )
        job = Job(
            request_id=request_id,
            text=speech.text,
            spoken=speech.spoken,
            voice=speech.voice,
            params=speech.params,
            chunking=speech.chunking,
            output=output,
            progress=self.progress.open(request_id, speech.text),
            result=asyncio.get_running_loop().create_future(),
            stream=stream,
            temporary_files=temporary_files or [],
            engine=speech.engine,
            keep_alive=speech.keep_alive,
        )
        try:
            self.worker.submit(job)
        except QueueFull:
            self.progress.forget(request_id)
            raise QueueFull(
                f"The queue is full ({self.settings.max_queue_size} requests waiting); try again later",
                retry_after=self._queue_wait(),
            ) from None
        except BaseException:
            self.progress.forget(request_id)
            raise
        job.progress.queued("Waiting in queue", speech.voice.source, speech.parameters_view, speech.engine)
        return job

    def _queue_wait(self) -> float:
        """Seconds until the queue should have room: the head's estimated completion."""
        queue = self.tracker.queue_view()["requests"]
        eta = queue[0]["estimated_completion"] if queue else None
        return max(1.0, eta - time.time()) if eta else 1.0

    def cancel(self, request_id: str) -> bool:
        """Cancel a queued or running request; a queued one ends at once. One that another
        node runs (on a shared event log) is asked to stop through the log."""
        return self._cancel_here(request_id) or self._cancel_elsewhere(request_id)

    def _cancel_here(self, request_id: str) -> bool:
        job = self.worker.cancel(request_id)
        if job is None:
            return False
        if job.progress.status == "queued":
            job.progress.finish("cancelled", "Cancelled")
            if not job.result.done():
                job.result.set_exception(Cancelled(f"Request {request_id} was cancelled"))
            job.end()
        return True

    def _cancel_elsewhere(self, request_id: str) -> bool:
        record = self.tracker.find(request_id)
        if record is None or record.fields.get("node") in (None, self.bus.node):
            return False  # unknown, or this node's (in process, every request is)
        if record.status in TERMINAL_STATUSES or record.status == PAUSED:
            return False
        self.bus.publish("cancel", {"request_id": request_id})
        return True

    def _cancel_asked(self, event: Event) -> None:
        """Another node was asked to cancel a request: if it is this node's, cancel it."""
        if event.type == "cancel" and event.data.get("node") != self.bus.node:
            self._cancel_here(event.data["request_id"])
