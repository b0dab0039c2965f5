"""One request end to end: text -> chunks -> audio -> output, announced on the bus.

There is one pipeline. Interactive requests, streamed requests and long-text jobs all run
through :func:`process`; they differ only in their output (a whole file, a stream, chunk
files on disk), their priority (interactive chunks go first; background chunks wait
until no interactive request is queued or running) and where their state is stored.

Every stage change is a ``status`` event and progress inside a stage a ``progress``
event; each carries the full progress fields, so any subscriber can render a request
from its latest event alone. A request's figures are kept by one :class:`Progress` per
request id (see :class:`ProgressBook`), across queueing, pause, resume and cancel: the
percentage is the honest share of generation work done (characters of finished chunks
plus the engine's fraction of the current one), never goes backwards and reaches 100
only on completion; the estimated completion comes from measured seconds per character
and never moves earlier.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from . import audio, memory
from .engine_pool import CancelFlag, EngineSlot
from .engines.base import SynthesisParams, Voice
from .events import EventBus
from .exceptions import Cancelled, EngineError, EngineUnavailable
from .text import Chunking
from .tracker import PAUSED, TERMINAL_STATUSES, StatusTracker
from .worker import CANCEL_GRACE_SECONDS, Worker

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

# Encoded audio a streamed request may have waiting for its client: past this, the client
# is not reading (a player at real time takes far less), and the request is cancelled
# rather than buffered without end. A 4096-character request is about 14 MB of WAV.
STREAM_BUFFER_BYTES = 32 * 1024 * 1024

Priority = Literal["interactive", "background"]
# Why a job was stopped: "cancel" ends it cancelled, "pause" leaves it paused, and
# "shutdown" leaves it as it stands, to resume when the server starts again.
StopReason = Literal["cancel", "pause", "shutdown"]


def preview(text: str) -> str:
    return text if len(text) <= PREVIEW_LENGTH else text[:PREVIEW_LENGTH] + "..."


class Progress:
    """Publishes one request's status and progress events, keeping them monotonic."""

    def __init__(self, book: ProgressBook, request_id: str, text: str) -> None:
        self.book = book
        self.request_id = request_id
        self.text = text
        self.created = time.time()
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
        self.engine: str | None = None
        # Per chunk index: the other requests whose chunks the engine stepped with it.
        self.batches: dict[int, list[str]] = {}
        self.worker: str | None = None  # the engine worker (WORKERS) that took its latest chunk

    @property
    def total_chars(self) -> int:
        return sum(self.chunk_lengths) or len(self.text)

    def _fields(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "status": self.status,
            "is_processing": self.status not in TERMINAL_STATUSES and self.status != PAUSED,
            "duration_seconds": round(time.time() - self.created, 3),
            "text_preview": preview(self.text),
            "current_step": self.step,
            "current_chunk": self.current_chunk,
            "total_chunks": len(self.chunk_lengths),
            "progress_percentage": self.percentage,
            "estimated_completion": self.estimate,
        }

    def _advance(self, percentage: float) -> None:
        self.percentage = max(self.percentage, round(min(percentage, 99.9), 1))
        spc = self.book.tracker.seconds_per_char_of(self.engine)
        if spc is None or self.status in ("queued", PAUSED):
            return
        if self.done_chars and self.generation_started is not None:
            own_pace = (time.perf_counter() - self.generation_started) / self.done_chars
            spc = (spc * PRIOR_WEIGHT_CHARS + own_pace * self.done_chars) / (PRIOR_WEIGHT_CHARS + self.done_chars)
        remaining = (1.0 - self.percentage / 100.0) * self.total_chars * spc
        estimate = round(time.time() + remaining, 3)
        self.estimate = estimate if self.estimate is None else max(self.estimate, estimate)

    def _generated_share(self) -> float:
        return GENERATION_SHARE * self.done_chars / self.total_chars

    def stage(self, status: str, step: str, percentage: float | None = None, **extra: Any) -> None:
        self.status, self.step = status, step
        self._advance(self.percentage if percentage is None else percentage)
        self.book.bus.publish("status", {**self._fields(), **extra})

    def queued(self, step: str, voice_source: str, parameters: dict[str, Any], engine: str, durable: bool = False) -> None:
        """The request enters a queue: the event that makes it known, with what the
        status API shows of it for its whole life. A ``durable`` one (a long-text job)
        outlives its server process: it is resumed when that starts again."""
        self.engine = engine
        self.stage(
            "queued",
            step,
            text_length=len(self.text),
            text_preview=preview(self.text),
            voice_source=voice_source,
            parameters=parameters,
            engine=engine,
            **({"durable": True} if durable else {}),
        )

    def plan(self, chunks: Sequence[str], done: Sequence[int] = ()) -> None:
        """The request's chunks, and those already generated (a resumed long-text job)."""
        self.chunk_lengths = [len(c) for c in chunks]
        self.done_chars = sum(self.chunk_lengths[i] for i in done)
        self._advance(self._generated_share())

    def redo(self, index: int) -> None:
        """A finished chunk must be generated again (its file was lost); the percentage
        already shown stays, the work still to do grows."""
        self.done_chars -= self.chunk_lengths[index]

    def chunk_started(self, index: int) -> None:
        if self.generation_started is None:
            self.generation_started = time.perf_counter()
        self.current_chunk = index + 1
        step = f"Generating audio for chunk {index + 1}/{len(self.chunk_lengths)}"
        self.stage("generating_audio", step, batched_with=self.batches.get(index, []))

    def batched(self, index: int, request_ids: list[str]) -> None:
        """The engine steps chunk ``index`` together with chunks of ``request_ids``."""
        self.batches[index] = sorted(r for r in request_ids if r != self.request_id)
        if self.status == "generating_audio" and index == self.current_chunk - 1:
            self.book.bus.publish("progress", {**self._fields(), "batched_with": self.batches[index]})

    def taken_by(self, worker: str) -> None:
        """An engine worker of the cluster took a chunk of this request (said once per worker)."""
        if worker != self.worker:
            self.worker = worker
            self.book.bus.publish("progress", {**self._fields(), "worker": worker})

    def within_chunk(self, index: int, fraction: float) -> None:
        """Engine-reported progress inside chunk ``index`` (0..1); reports of a chunk the
        engine began before this request's events caught up are left out."""
        if self.status != "generating_audio" or index != self.current_chunk - 1:
            return
        current = self.chunk_lengths[index]
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
            self.book.bus.publish("progress", self._fields())

    def chunk_done(self) -> None:
        self.within_chunk(self.current_chunk - 1, 1.0)
        self.done_chars += self.chunk_lengths[self.current_chunk - 1]

    def pause(self) -> None:
        """Stopped, to go on later: the figures stay as they are, and so does this object."""
        self.status, self.step = PAUSED, "Paused"
        self.book.bus.publish("status", self._fields())

    def finish(self, status: str, step: str, **extra: Any) -> None:
        """The terminal event, with the request's final figures."""
        self.status, self.step = status, step
        if status == "completed":
            self.percentage = 100.0
            self.estimate = round(time.time(), 3)
        self.book.forget(self.request_id)
        self.book.bus.publish("status", {**self._fields(), **extra})


class ProgressBook:
    """The one Progress of each unfinished request id: whoever hands a request over
    (queue, pause, resume, retry) takes its Progress from here, so its figures carry on."""

    def __init__(self, bus: EventBus, tracker: StatusTracker) -> None:
        self.bus = bus
        self.tracker = tracker
        self._open: dict[str, Progress] = {}

    def open(self, request_id: str, text: str) -> Progress:
        progress = self._open.get(request_id)
        if progress is None:
            progress = self._open[request_id] = Progress(self, request_id, text)
        return progress

    def forget(self, request_id: str) -> None:
        self._open.pop(request_id, None)

    def find(self, request_id: str) -> Progress | None:
        return self._open.get(request_id)


class AudioStream:
    """A streamed request's encoded audio, from the pipeline to its response, bounded in
    bytes waiting: ``put`` raises Cancelled once the client has left too much unread."""

    def __init__(self, limit: int = STREAM_BUFFER_BYTES) -> None:
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._limit = limit
        self.waiting = 0

    def put(self, data: bytes) -> None:
        if self.waiting + len(data) > self._limit:
            raise Cancelled(f"the client left {self.waiting} bytes of the stream unread")
        self.waiting += len(data)
        self._queue.put_nowait(data)

    def end(self) -> None:
        self._queue.put_nowait(None)

    async def get(self) -> bytes | None:
        """The next piece, or None once the stream has ended."""
        data = await self._queue.get()
        if data is not None:
            self.waiting -= len(data)
        return data


class Output(Protocol):
    """Where a job's audio goes; the store's state changes are committed here, before the
    pipeline announces them."""

    samples: int

    async def start(self, sample_rate: int, chunks: Sequence[str]) -> list[int]:
        """Get ready; the indices of the chunks still to generate."""

    async def chunk_started(self, index: int) -> None: ...

    async def add(self, index: int, samples: np.ndarray) -> None: ...

    async def check(self) -> list[int]:
        """After the last chunk: the indices of chunks whose audio was lost and must be redone."""

    async def finish(self, progress: Progress) -> bytes:
        """The encoded result (b"" when the audio went elsewhere)."""

    async def failed(self, message: str) -> None: ...

    async def stopped(self, reason: StopReason) -> None: ...


@dataclass(eq=False)
class Job:
    """One request on its way through the queue and the pipeline."""

    request_id: str
    text: str  # as the client sent it
    voice: Voice
    params: SynthesisParams
    output: Output
    progress: Progress
    result: asyncio.Future[bytes]
    engine: str  # the engine that speaks it
    priority: Priority = "interactive"
    # Either the chunks, planned already (a long-text job's, kept in its store), or the
    # normalised text and how to chunk it, planned here off the loop.
    chunks: Sequence[str] | None = None
    spoken: str = ""
    chunking: Chunking | None = None
    # For streamed responses: encoded audio pieces as they are ready, then the end.
    stream: AudioStream | None = None
    # Set by request_cancel(): awaitable on the loop, and carried to the engine process.
    cancel: CancelFlag = field(default_factory=CancelFlag)
    stop_reason: StopReason = "cancel"
    # Files that live exactly as long as the job (a one-off reference voice).
    temporary_files: list[Path] = field(default_factory=list)
    # How long its engine stays loaded after it (None: as it is).
    keep_alive: float | None = None

    def request_cancel(self, reason: StopReason = "cancel") -> None:
        if not self.cancel.is_set():
            self.stop_reason = reason
        self.cancel.set()

    def end(self) -> None:
        """Once the job reached its terminal status: close its stream, delete its files."""
        if self.stream is not None:
            self.stream.end()
        for path in self.temporary_files:
            path.unlink(missing_ok=True)


class BufferedOutput:
    """Collects every chunk, then joins and encodes the whole file."""

    def __init__(self, response_format: str) -> None:
        self.response_format = response_format
        self.pieces: list[np.ndarray] = []
        self.samples = 0
        self.sample_rate = 0

    async def start(self, sample_rate: int, chunks: Sequence[str]) -> list[int]:
        self.sample_rate = sample_rate
        return list(range(len(chunks)))

    async def chunk_started(self, index: int) -> None:
        pass

    async def add(self, index: int, samples: np.ndarray) -> None:
        self.pieces.append(samples)

    async def check(self) -> list[int]:
        return []

    async def finish(self, progress: Progress) -> bytes:
        progress.stage("concatenating", f"Combining {len(self.pieces)} audio chunks", CONCATENATING_AT)
        joined = await asyncio.to_thread(audio.join_chunks, self.pieces, self.sample_rate)
        self.samples = len(joined)
        progress.stage("finalizing", f"Converting to {self.response_format}", FINALIZING_AT)
        return await asyncio.to_thread(audio.encode, joined, self.sample_rate, self.response_format)

    async def failed(self, message: str) -> None:
        pass

    async def stopped(self, reason: StopReason) -> None:
        pass


class StreamedOutput(BufferedOutput):
    """Encodes each chunk as it arrives and hands the bytes to the response at once; from an
    engine that streams within a chunk, each window of it as it arrives.

    Windows come on the loop as the engine makes them, and may belong to the next chunk
    (handed to the engine ahead) before this one's end is added: they wait until their chunk
    is the current one, and are encoded in order, one after another.
    """

    def __init__(self, response_format: str, stream: AudioStream) -> None:
        super().__init__(response_format)
        self.stream = stream
        self.encoder: audio.StreamEncoder | None = None
        self.gap = np.zeros(0, dtype=np.float32)
        self.current: int | None = None
        self.windows: dict[int, list[np.ndarray]] = {}
        self.pending: asyncio.Future | None = None
        self.begun: set[int] = set()

    def _send(self, data: bytes) -> None:
        if data:
            self.stream.put(data)

    async def start(self, sample_rate: int, chunks: Sequence[str]) -> list[int]:
        self.gap = np.zeros(int(round(audio.PAUSE_SECONDS * sample_rate)), dtype=np.float32)
        self.encoder = await asyncio.to_thread(audio.StreamEncoder, self.response_format, sample_rate)
        self._send(await asyncio.to_thread(self.encoder.header))
        return await super().start(sample_rate, chunks)

    async def chunk_started(self, index: int) -> None:
        self.current = index
        if self.windows.get(index):
            self._drain_later()

    def window(self, index: int, samples: np.ndarray) -> None:
        """A window of chunk ``index``, as the engine made it (called on the loop)."""
        self.windows.setdefault(index, []).append(samples)
        if index == self.current:
            self._drain_later()

    def _drain_later(self) -> None:
        assert self.current is not None
        self.pending = asyncio.ensure_future(self._drain(self.pending, self.current))

    async def _drain(self, before: asyncio.Future | None, index: int) -> None:
        if before is not None:
            await before
        for samples in self.windows.pop(index, []):
            await self._feed(index, samples)

    async def add(self, index: int, samples: np.ndarray) -> None:
        """The chunk's end: after its windows, in order."""
        if self.pending is not None:
            pending, self.pending = self.pending, None
            await pending
        for window in self.windows.pop(index, []):
            await self._feed(index, window)
        await self._feed(index, samples)

    async def _feed(self, index: int, samples: np.ndarray) -> None:
        assert self.encoder is not None
        first_of_chunk = index not in self.begun
        self.begun.add(index)
        piece = np.concatenate([self.gap, samples]) if self.samples and first_of_chunk else samples
        self.samples += len(piece)
        self._send(await asyncio.to_thread(self.encoder.feed, piece))

    async def _settle(self) -> None:
        """A stream that ended early: windows still being encoded no longer matter."""
        pending, self.pending = self.pending, None
        if pending is not None:
            await asyncio.gather(pending, return_exceptions=True)

    async def failed(self, message: str) -> None:
        await self._settle()

    async def stopped(self, reason: StopReason) -> None:
        await self._settle()

    async def finish(self, progress: Progress) -> bytes:
        assert self.encoder is not None
        progress.stage("finalizing", "Finishing the audio stream", FINALIZING_AT)
        self._send(await asyncio.to_thread(self.encoder.finish))
        return b""


async def await_chunk(
    call: asyncio.Future[np.ndarray], job: Job, worker: Worker, slot: EngineSlot, timeout: float
) -> np.ndarray:
    """A chunk's audio, failing the request if it takes longer than ``timeout``.

    On timeout the job is cancelled: an engine that checks (per token) stops at once; one
    that has not stopped within the grace has its process killed and replaced, so the
    next job never waits behind it.
    """
    try:
        return await asyncio.wait_for(asyncio.shield(call), timeout)
    except TimeoutError:
        _discard(call)
        message = f"a chunk took longer than CHUNK_TIMEOUT ({timeout:g} s)"
        grace = min(CANCEL_GRACE_SECONDS, timeout)
        await worker.abandon(slot, call, job.cancel, grace, f"{message} and ignored cancellation for {grace:g} s")
        raise EngineError(message) from None


def _discard(call: asyncio.Future) -> None:
    """Let a call nobody will await end quietly."""
    call.add_done_callback(lambda done: done.cancelled() or done.exception())


async def process(job: Job, worker: Worker, chunk_timeout: float) -> None:
    """Run one job until it ends (completed, error, cancelled) or stops (paused, shut down).

    The job's future gets the encoded audio or the error; a streamed job's audio goes out
    through ``job.stream`` chunk by chunk instead. Either comes once the bus has delivered
    the job's last event, so a client that asks for the request's status next sees it.
    """
    progress, output = job.progress, job.output
    slot = worker.engines[job.engine]
    engine = slot.engine
    outcome: bytes | Exception | None = None
    try:
        waiting = "Waiting for the model to load" if not slot.ready else "Starting request processing"
        progress.stage("initializing", waiting)
        async with worker.engines.using(slot.name, job.cancel, job.keep_alive):
            started = time.perf_counter()
            generated = await _speak(job, worker, slot, chunk_timeout)
        if job.cancel.is_set():  # cancelled while the last chunk was finishing
            raise Cancelled()
        data = await output.finish(progress)
    except Cancelled:
        if job.stop_reason == "shutdown":
            outcome = Cancelled("The server shut down")
        elif job.stop_reason == "pause":
            await record_stop(output, job.request_id, "pause")
            progress.pause()
            outcome = Cancelled(f"Request {job.request_id} was paused")
        else:
            await record_stop(output, job.request_id, "cancel")
            progress.finish("cancelled", "Cancelled")
            outcome = Cancelled(f"Request {job.request_id} was cancelled")
    except EngineUnavailable as exc:
        outcome = await _failed(job, str(exc), exc)
    except Exception as exc:
        if memory.is_out_of_memory(exc):
            await worker.release()
            message = f"Generation failed: the engine ran out of memory ({exc}); its memory was released"
        else:
            if not isinstance(exc, EngineError):
                log.exception("request %s failed", job.request_id)
            message = f"Generation failed: {exc}"
        outcome = await _failed(job, message, EngineError(message))
    else:
        extra: dict[str, Any] = {"audio_duration_seconds": round(output.samples / engine.sample_rate, 3)}
        if generated:
            extra.update(generation_seconds=time.perf_counter() - started, generated_characters=generated)
        progress.finish("completed", "Completed", **extra)
        outcome = data
    finally:
        try:
            if outcome is not None:
                await progress.book.bus.settled()
        finally:
            if outcome is not None and not job.result.done():
                if isinstance(outcome, Exception):
                    job.result.set_exception(outcome)
                else:
                    job.result.set_result(outcome)
            job.end()


async def _speak(job: Job, worker: Worker, slot: EngineSlot, chunk_timeout: float) -> int:
    """Plan the job's chunks and speak those its output still needs; the characters spoken."""
    progress, output = job.progress, job.output
    if job.chunks is None:
        assert job.chunking is not None
        progress.stage("processing_text", "Validating and preparing text")
        progress.stage("chunking", "Splitting text into chunks")
        chunks: Sequence[str] = await asyncio.to_thread(job.chunking.plan, job.spoken)
    else:
        chunks = job.chunks
    todo = await output.start(slot.engine.sample_rate, chunks)
    progress.plan(chunks, done=sorted(set(range(len(chunks))) - set(todo)))
    generated = 0
    while todo:
        await _generate(job, worker, slot, chunks, todo, chunk_timeout)
        generated += sum(len(chunks[i]) for i in todo)
        todo = await output.check()
        for index in todo:
            progress.redo(index)
    return generated


async def _generate(
    job: Job, worker: Worker, slot: EngineSlot, chunks: Sequence[str], todo: list[int], chunk_timeout: float
) -> None:
    """Speak the chunks ``todo`` into the job's output, in order.

    An interactive job hands the engine its next chunk while it speaks the current one, so
    the engine never idles between chunks waiting on a busy loop. A background job asks
    for its turn before each chunk, so interactive requests wait at most one of its chunks.
    """
    progress, output, engine = job.progress, job.output, slot.engine
    low, high = engine.speed_range or (1.0, 1.0)
    speed = job.params.speed
    native = low <= speed <= high
    params = job.params if native else dataclasses.replace(job.params, speed=1.0)
    ahead = job.priority == "interactive"
    # A streamed response takes each chunk's audio a window at a time from an engine that can.
    windows = output if native and engine.streams_within_chunk and isinstance(output, StreamedOutput) else None

    def submit(index: int) -> asyncio.Future[np.ndarray]:
        report = functools.partial(progress.within_chunk, index)
        streaming = {"on_audio": functools.partial(windows.window, index)} if windows is not None else {}
        on_batch = functools.partial(progress.batched, index)
        return slot.host.synthesize(
            chunks[index], job.voice, params, report, job.cancel, job=job.request_id, on_batch=on_batch, priority=job.priority, **streaming
        )

    upcoming = submit(todo[0]) if ahead else None
    try:
        for position, index in enumerate(todo):
            if job.cancel.is_set():
                raise Cancelled()
            await output.chunk_started(index)
            if not ahead:
                await worker.turn(job.cancel, slot)
                upcoming = submit(index)  # no await since the turn came: the engine is ours
            progress.chunk_started(index)
            call = upcoming
            assert call is not None
            upcoming = submit(todo[position + 1]) if ahead and position + 1 < len(todo) else None
            samples = await await_chunk(call, job, worker, slot, chunk_timeout)
            if not native:
                samples = await asyncio.to_thread(audio.change_speed, samples, engine.sample_rate, speed)
            await output.add(index, np.asarray(samples, dtype=np.float32).reshape(-1))
            progress.chunk_done()
    finally:
        if upcoming is not None:  # the request ended early: its next chunk must not run
            job.cancel.set()
            _discard(upcoming)


async def record_stop(output: Output, request_id: str, reason: StopReason) -> None:
    """The output records the stop; one it cannot record (a full disk) still stops the
    request, and whoever asked for the stop finds the output's record unchanged."""
    try:
        await output.stopped(reason)
    except Exception:
        log.exception("request %s: its %s could not be stored", request_id, reason)


async def _failed(job: Job, message: str, exc: Exception) -> Exception:
    """The request ends in error: what its future gets."""
    try:
        await job.output.failed(message)
    except Exception:
        log.exception("request %s: its failure could not be stored", job.request_id)
    job.progress.finish("error", "Failed", error_message=message)
    return exc
