"""The service without HTTP: bus, tracker, worker and engine wired together.

Both the web app and the ``say`` command run on it, so a file written from the terminal
goes through exactly the queue, pipeline and events that a web request does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from . import engines, memory, pipeline, voices
from .config import Settings
from .engines.base import Cancelled, Engine, SynthesisParams, Voice
from .events import EventBus
from .text import Chunking
from .tracker import StatusTracker
from .voices import VoiceLibrary
from .worker import Job, Worker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SpeechJob:
    """What a caller asks for, already validated."""

    text: str
    voice: Voice
    params: SynthesisParams
    response_format: str
    parameters_view: dict
    chunking: Chunking
    # None for a whole file; "audio" or "sse" for a response streamed as chunks are made.
    stream_format: str | None = None


class Core:
    def __init__(self, settings: Settings, engine: Engine | None = None) -> None:
        self.settings = settings
        if engine is None:
            self.choice = engines.choose(settings)
            engine = engines.create(self.choice, settings)
        else:
            self.choice = engines.EngineChoice(engine.name, settings.engine, "engine supplied by the caller")
        self.engine = engine
        self.bus = EventBus(settings.event_replay_size, settings.sse_queue_size)
        self.tracker = StatusTracker(settings.history_size)
        self.bus.add_listener(self.tracker.apply)
        self.worker = Worker(engine, self.bus, settings.max_queue_size)
        self.voices = VoiceLibrary(Path(settings.voice_library_dir))
        self.started_at = time.time()
        self._processed = 0

    def resolve_voice(self, name: str) -> Voice | None:
        """The voice a request names. Engines that cannot clone speak with their own voice:
        VOICE_SAMPLE_PATH and a library default do not apply to them."""
        if not self.engine.supports_cloning:
            return voices.resolve(name, None)
        return voices.resolve(name, self.settings.voice_sample_path, self.voices)

    def start(self) -> None:
        log.info("engine: %s (%s)", self.choice.name, self.choice.reason)
        if self.settings.voice_sample_path and not self.engine.supports_cloning:
            log.warning("VOICE_SAMPLE_PATH is ignored: engine %s cannot clone voices", self.engine.name)
        self.worker.start(self._process)

    async def shutdown(self) -> None:
        """Take no new jobs, let queued and running ones finish within SHUTDOWN_TIMEOUT,
        cancel what is left, then end every event stream after its last events."""
        self.worker.accepting = False
        try:
            await asyncio.wait_for(self.worker.idle(), self.settings.shutdown_timeout)
        except TimeoutError:
            log.warning("shutdown: cancelling requests still unfinished after %ss", self.settings.shutdown_timeout)
            for request_id in self.worker.queue.ids():
                self.cancel(request_id)
            if self.worker.current is not None:
                self.cancel(self.worker.current.request_id)
            # A running chunk stops at the engine's next cancellation check; a request still
            # waiting for the model is ended by stop() cancelling the worker.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.worker.idle(), self.settings.shutdown_timeout)
        finally:
            self.bus.close()

    async def stop(self) -> None:
        await self.worker.stop()
        self.bus.close()

    async def _process(self, job: Job) -> None:
        await pipeline.process(job, self.worker, self.tracker, self.settings.chunk_timeout)
        self._processed += 1
        interval = self.settings.memory_cleanup_interval
        if interval and self._processed % interval == 0:
            await self.worker.run(memory.release)

    def submit(self, request_id: str, speech: SpeechJob, temporary_files: list[Path] | None = None) -> Job:
        """Queue a job (raises QueueFull or ShuttingDown) and announce it.

        Await ``job.result`` for the audio; a streamed job's audio comes through ``job.stream``.
        """
        job = Job(
            request_id=request_id,
            text=speech.text,
            voice=speech.voice,
            params=speech.params,
            response_format=speech.response_format,
            chunking=speech.chunking,
            result=asyncio.get_running_loop().create_future(),
            stream=asyncio.Queue() if speech.stream_format else None,
            temporary_files=temporary_files or [],
        )
        self.worker.submit(job)
        pipeline.Progress(job, self.bus, self.tracker).stage(
            "queued",
            "Waiting in queue",
            text_length=len(speech.text),
            text_preview=pipeline.preview(speech.text),
            voice_source=speech.voice.source,
            parameters=speech.parameters_view,
            engine=self.engine.name,
        )
        return job

    def cancel(self, request_id: str) -> bool:
        """Cancel a queued or running request; a queued one ends at once."""
        job = self.worker.cancel(request_id)
        if job is None:
            return False
        record = self.tracker.find(request_id)
        if record is not None and record.status == "queued":
            pipeline.Progress(job, self.bus, self.tracker).finish("cancelled", "Cancelled")
            if not job.result.done():
                job.result.set_exception(Cancelled())
            job.end()
        return True
