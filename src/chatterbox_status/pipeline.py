"""One request end to end: text -> chunks -> audio -> encoded bytes, announced on the bus.

Every stage change is a ``status`` event and progress inside a stage a ``progress``
event; each carries the full progress fields, so any subscriber can render a request
from its latest event alone. The percentage is the honest share of generation work done
(characters of finished chunks plus the engine's fraction of the current one), never
goes backwards and reaches 100 only on completion; the estimated completion comes from
measured seconds per character and never moves earlier.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from typing import Any

import numpy as np

from . import audio, memory
from .engines.base import Cancelled, EngineError
from .events import EventBus
from .tracker import PAUSED, TERMINAL_STATUSES, StatusTracker
from .exceptions import EngineUnavailable
from .worker import Job, Worker

log = logging.getLogger(__name__)

# Share of the percentage earned by generation; joining and encoding earn the rest.
GENERATION_SHARE = 95.0
CONCATENATING_AT = 95.0
FINALIZING_AT = 97.5
PREVIEW_LENGTH = 100
# Progress inside a chunk is published at most this often (a chunk's first report and its
# end always are): per-token reports would cost every event-stream subscriber a write per token.
PROGRESS_EVENT_INTERVAL = 0.05
# How many characters of evidence the engine-wide throughput counts for against this
# request's own measured pace, once it has finished a chunk.
PRIOR_WEIGHT_CHARS = 200


def preview(text: str) -> str:
    return text if len(text) <= PREVIEW_LENGTH else text[:PREVIEW_LENGTH] + "..."


class Progress:
    """Publishes one request's status and progress events, keeping them monotonic."""

    def __init__(self, job: Job, bus: EventBus, tracker: StatusTracker) -> None:
        self.job = job
        self.bus = bus
        self.tracker = tracker
        self.status = "queued"
        self.step = "Waiting in queue"
        self.chunk_lengths: list[int] = []
        self.done_chars = 0
        self.current_chunk = 0
        self.percentage = 0.0
        self.estimate: float | None = None
        self.generation_started: float | None = None
        self.last_progress_event = 0.0
        self.reported_chunk = 0

    @property
    def total_chars(self) -> int:
        return sum(self.chunk_lengths) or len(self.job.text)

    def _fields(self) -> dict[str, Any]:
        return {
            "request_id": self.job.request_id,
            "status": self.status,
            "is_processing": self.status not in TERMINAL_STATUSES and self.status != PAUSED,
            "duration_seconds": round(time.time() - self.job.created, 3),
            "text_preview": preview(self.job.text),
            "current_step": self.step,
            "current_chunk": self.current_chunk,
            "total_chunks": len(self.chunk_lengths),
            "progress_percentage": self.percentage,
            "estimated_completion": self.estimate,
        }

    def _advance(self, percentage: float) -> None:
        self.percentage = max(self.percentage, round(min(percentage, 99.9), 1))
        spc = self.tracker.seconds_per_char
        if spc is None or self.status == "queued":
            return
        if self.done_chars and self.generation_started is not None:
            own_pace = (time.perf_counter() - self.generation_started) / self.done_chars
            spc = (spc * PRIOR_WEIGHT_CHARS + own_pace * self.done_chars) / (PRIOR_WEIGHT_CHARS + self.done_chars)
        remaining = (1.0 - self.percentage / 100.0) * self.total_chars * spc
        estimate = round(time.time() + remaining, 3)
        self.estimate = estimate if self.estimate is None else max(self.estimate, estimate)

    def stage(self, status: str, step: str, percentage: float | None = None, **extra: Any) -> None:
        self.status, self.step = status, step
        self._advance(self.percentage if percentage is None else percentage)
        self.bus.publish("status", {**self._fields(), **extra})

    def plan(self, chunks: list[str]) -> None:
        self.chunk_lengths = [len(c) for c in chunks]

    def chunk_started(self, index: int) -> None:
        if self.generation_started is None:
            self.generation_started = time.perf_counter()
        self.current_chunk = index + 1
        self.stage("generating_audio", f"Generating audio for chunk {index + 1}/{len(self.chunk_lengths)}")

    def within_chunk(self, index: int, fraction: float) -> None:
        """Engine-reported progress inside chunk ``index`` (0..1); reports of a chunk the
        engine began before this request's events caught up are left out."""
        if self.status != "generating_audio" or index != self.current_chunk - 1:
            return
        current = self.chunk_lengths[self.current_chunk - 1]
        before = self.percentage
        self._advance(GENERATION_SHARE * (self.done_chars + fraction * current) / self.total_chars)
        now = time.monotonic()
        due = (
            fraction >= 1.0
            or self.reported_chunk != self.current_chunk
            or now - self.last_progress_event >= PROGRESS_EVENT_INTERVAL
        )
        if self.percentage != before and due:
            self.last_progress_event, self.reported_chunk = now, self.current_chunk
            self.bus.publish("progress", self._fields())

    def chunk_done(self) -> None:
        self.within_chunk(self.current_chunk - 1, 1.0)
        self.done_chars += self.chunk_lengths[self.current_chunk - 1]

    def finish(self, status: str, step: str, **extra: Any) -> None:
        self.status, self.step = status, step
        if status == "completed":
            self.percentage = 100.0
            self.estimate = round(time.time(), 3)
        self.bus.publish("status", {**self._fields(), **extra})


class BufferedOutput:
    """Collects every chunk, then joins and encodes the whole file."""

    def __init__(self, job: Job, sample_rate: int) -> None:
        self.job = job
        self.sample_rate = sample_rate
        self.pieces: list[np.ndarray] = []
        self.samples = 0

    async def add(self, samples: np.ndarray) -> None:
        self.pieces.append(samples)

    async def finish(self, progress: Progress) -> bytes:
        progress.stage("concatenating", f"Combining {len(self.pieces)} audio chunks", CONCATENATING_AT)
        joined = await asyncio.to_thread(audio.join_chunks, self.pieces, self.sample_rate)
        self.samples = len(joined)
        progress.stage("finalizing", f"Converting to {self.job.response_format}", FINALIZING_AT)
        return await asyncio.to_thread(audio.encode, joined, self.sample_rate, self.job.response_format)


class StreamedOutput:
    """Encodes each chunk as it arrives and hands the bytes to the response at once."""

    def __init__(self, job: Job, sample_rate: int) -> None:
        assert job.stream is not None
        self.queue = job.stream
        self.encoder = audio.StreamEncoder(job.response_format, sample_rate)
        self.gap = np.zeros(int(round(audio.PAUSE_SECONDS * sample_rate)), dtype=np.float32)
        self.samples = 0
        self._send(self.encoder.header())

    def _send(self, data: bytes) -> None:
        if data:
            self.queue.put_nowait(data)

    async def add(self, samples: np.ndarray) -> None:
        piece = np.concatenate([self.gap, samples]) if self.samples else samples
        self.samples += len(piece)
        self._send(await asyncio.to_thread(self.encoder.feed, piece))

    async def finish(self, progress: Progress) -> bytes:
        progress.stage("finalizing", "Finishing the audio stream", FINALIZING_AT)
        self._send(await asyncio.to_thread(self.encoder.finish))
        return b""


async def await_chunk(call: asyncio.Future[np.ndarray], job: Job, timeout: float) -> np.ndarray:
    """A chunk's audio, failing the request if it takes longer than ``timeout``.

    The thread cannot be interrupted, so on timeout the job's cancel flag is set: an engine
    that checks it (per token) stops at once; one that does not holds the thread until it
    returns, and later jobs wait for it.
    """
    try:
        return await asyncio.wait_for(asyncio.shield(call), timeout)
    except TimeoutError:
        job.cancel.set()
        _discard(call)
        raise EngineError(f"a chunk took longer than CHUNK_TIMEOUT ({timeout:g} s)") from None


def _discard(call: asyncio.Future) -> None:
    """Let a call nobody will await end quietly."""
    call.add_done_callback(lambda done: done.cancelled() or done.exception())


async def process(job: Job, worker: Worker, tracker: StatusTracker, chunk_timeout: float) -> None:
    """Run one job to a terminal status; its future gets the encoded audio or the error.

    A streamed job's audio goes out through ``job.stream`` chunk by chunk instead.
    """
    progress = Progress(job, worker.bus, tracker)
    engine = worker.engine
    try:
        waiting = "Waiting for the model to load" if not worker.ready else "Starting request processing"
        progress.stage("initializing", waiting)
        await worker.wait_loaded(job)
        output = (StreamedOutput if job.stream is not None else BufferedOutput)(job, engine.sample_rate)
        started = time.perf_counter()
        progress.stage("processing_text", "Validating and preparing text")
        text = job.spoken
        progress.stage("chunking", "Splitting text into chunks")
        chunks = job.chunking.plan(text)
        progress.plan(chunks)
        speed = job.params.speed
        low, high = engine.speed_range or (1.0, 1.0)
        native = low <= speed <= high
        engine_params = job.params if native else dataclasses.replace(job.params, speed=1.0)

        def submit(index: int) -> asyncio.Future[np.ndarray]:
            report = worker.on_loop(functools.partial(progress.within_chunk, index))
            return worker.run(engine.synthesize, chunks[index], job.voice, engine_params, report, job.cancel)

        upcoming: asyncio.Future[np.ndarray] | None = submit(0)
        try:
            for index in range(len(chunks)):
                if job.cancel.is_set():
                    raise Cancelled()
                progress.chunk_started(index)
                call = upcoming
                # The engine gets its next chunk now, and goes straight on to it when this
                # one ends, however long the loop takes to hear of it.
                upcoming = submit(index + 1) if index + 1 < len(chunks) else None
                samples = await await_chunk(call, job, chunk_timeout)
                if not native:
                    samples = await asyncio.to_thread(audio.change_speed, samples, engine.sample_rate, speed)
                await output.add(samples)
                progress.chunk_done()
        finally:
            if upcoming is not None:  # the request ended early: its next chunk must not run
                job.cancel.set()
                _discard(upcoming)
        if job.cancel.is_set():  # cancelled while the last chunk was finishing
            raise Cancelled()
        data = await output.finish(progress)
    except Cancelled:
        progress.finish("cancelled", "Cancelled")
        _fail(job, Cancelled(f"Request {job.request_id} was cancelled"))
    except EngineUnavailable as exc:
        progress.finish("error", "Failed", error_message=str(exc))
        _fail(job, exc)
    except Exception as exc:
        if memory.is_out_of_memory(exc):
            await worker.run(memory.release)
            message = f"Generation failed: the engine ran out of memory ({exc}); its memory was released"
        else:
            if not isinstance(exc, EngineError):
                log.exception("request %s failed", job.request_id)
            message = f"Generation failed: {exc}"
        progress.finish("error", "Failed", error_message=message)
        _fail(job, EngineError(message))
    else:
        progress.finish(
            "completed",
            "Completed",
            audio_duration_seconds=round(output.samples / engine.sample_rate, 3),
            generation_seconds=time.perf_counter() - started,
            generated_characters=len(text),
        )
        if not job.result.done():
            job.result.set_result(data)
    finally:
        job.end()


def _fail(job: Job, exc: Exception) -> None:
    if not job.result.done():
        job.result.set_exception(exc)
