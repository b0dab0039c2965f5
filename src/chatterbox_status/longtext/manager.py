"""The long-text runner: jobs from the store, chunk by chunk through the engine thread.

Each job runs in its own asyncio task, at most LONG_TEXT_MAX_CONCURRENT_JOBS at once
(the rest stay pending). A chunk runs with ``Worker.run_background``, so interactive
requests always go first and wait at most one chunk. Every state change is committed to
the store (off the loop) before its bus event is published; the bus events use the job
id as request id and the tracker's status vocabulary, so jobs show up in /status and
/status/stream like any request. A finished chunk's audio is on disk (fsync'd) before
the chunk is marked done, so a restart resumes at the first unfinished chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import audio
from ..engines.base import SynthesisParams
from ..exceptions import Cancelled, Conflict, EngineError, EngineUnavailable, NotFound, OutOfSpace
from ..planning import LongTextPlan
from ..pipeline import Progress, preview
from . import files
from .config import LongTextConfig
from .store import (
    CANCELLED,
    COMPLETED,
    FAILED,
    FINISHED,
    PAUSED,
    PENDING,
    PROCESSING,
    RUNNABLE,
    ChunkRecord,
    JobRecord,
    JobStore,
)

log = logging.getLogger(__name__)
MB = 1024 * 1024


class JobNotFound(NotFound):
    """No long-text job has the id asked for."""


class JobConflict(Conflict):
    """The job's state does not allow the action."""

    code = "invalid_job_state"


class QuotaExceeded(OutOfSpace):
    """The long-text storage holds as much as LONG_TEXT_MAX_DISK_MB allows."""

    code = "disk_quota_exceeded"


@dataclass
class _Announced:
    """What pipeline.Progress reads of a job."""

    request_id: str
    text: str
    created: float


@dataclass(eq=False)
class _Run:
    job_id: str
    cancel: threading.Event = field(default_factory=threading.Event)
    reason: str | None = None  # "pause", "cancel" or "shutdown" once it is being stopped
    task: asyncio.Task | None = None


class LongTextManager:
    def __init__(self, core: Any, config: LongTextConfig) -> None:
        self.core = core
        self.config = config
        self.root = Path(config.data_dir) / "long_text"
        self._db_path = self.root / "jobs.sqlite3"
        self._opening = asyncio.Lock()
        self.store: JobStore | None = None
        self._runs: dict[str, _Run] = {}
        self._slots: asyncio.Semaphore | None = None
        self._cleaner: asyncio.Task | None = None

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        self._slots = asyncio.Semaphore(self.config.max_concurrent_jobs)
        exists = await asyncio.to_thread(self._db_path.exists)
        for job_id in await self._db("ids_with_status", RUNNABLE) if exists else []:
            job = await self._db("get", job_id)
            if job is not None:
                log.info("long-text job %s resumes at chunk %d of %d", job_id, job.completed_chunks + 1, job.total_chunks)
                self._launch(job)
        if self.config.retention_days and self.config.cleanup_interval:
            self._cleaner = asyncio.create_task(self._clean_periodically(), name="long-text-cleanup")

    async def stop(self) -> None:
        """Stop running jobs where they are; their records stay runnable for the next start."""
        if self._cleaner is not None:
            self._cleaner.cancel()
            await asyncio.gather(self._cleaner, return_exceptions=True)
        runs = list(self._runs.values())
        for run in runs:
            self._signal(run, "shutdown")
        await asyncio.gather(*(r.task for r in runs if r.task), return_exceptions=True)
        if self.store is not None:
            await asyncio.to_thread(self.store.close)

    async def _db(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Every store call runs off the event loop. The database is created on first use,
        so a server that never takes a long-text job writes nothing."""
        if self.store is None:
            async with self._opening:
                if self.store is None:
                    self.store = await asyncio.to_thread(JobStore, self._db_path)
        return await asyncio.to_thread(getattr(self.store, method), *args, **kwargs)

    # -- actions -----------------------------------------------------------------

    async def check_quota(self) -> None:
        if not self.config.max_disk_mb:
            return
        used = await asyncio.to_thread(files.disk_usage, self.root / "jobs")
        if used >= self.config.max_disk_mb * MB:
            raise QuotaExceeded(
                f"Long-text storage is full: {used / MB:.1f} MB used, LONG_TEXT_MAX_DISK_MB is "
                f"{self.config.max_disk_mb:g}; delete finished jobs to make room"
            )

    async def create(self, plan: LongTextPlan, session_id: str | None = None, display_name: str | None = None) -> JobRecord:
        engine = self.core.tracker.engine
        if engine.get("state") == "error":
            raise EngineUnavailable(engine.get("error") or "the engine failed to load")
        await self.check_quota()
        speech = plan.speech
        now = time.time()
        job = JobRecord(
            job_id=uuid.uuid4().hex,
            status=PENDING,
            created_at=now,
            updated_at=now,
            text=speech.text,
            text_length=len(speech.text),
            voice=speech.parameters_view["voice"],
            parameters=speech.parameters_view,
            synthesis=dataclasses.asdict(speech.params),
            output_format=speech.response_format,
            silence_padding_ms=plan.silence_padding_ms,
            total_chunks=len(plan.chunks),
            session_id=session_id,
            display_name=display_name,
        )
        await self._db("create", job, plan.chunks)
        self._launch(job)
        return job

    async def get(self, job_id: str) -> JobRecord:
        job = await self._db("get", job_id)
        if job is None:
            raise JobNotFound(f"Job {job_id} not found", param="job_id")
        return job

    async def chunks(self, job_id: str) -> list[ChunkRecord]:
        return await self._db("chunks", job_id)

    async def pause(self, job_id: str) -> JobRecord:
        job = await self.get(job_id)
        if job.status not in RUNNABLE:
            raise JobConflict(f"Cannot pause job in {job.status} state")
        await self._stop(job_id, "pause", PAUSED)
        return await self.get(job_id)

    async def resume(self, job_id: str) -> JobRecord:
        job = await self.get(job_id)
        if job.status != PAUSED or job_id in self._runs:
            raise JobConflict(f"Cannot resume job in {job.status} state")
        job = await self._db("update", job_id, status=PENDING, processing_paused_at=None)
        self._launch(job)
        return job

    async def cancel(self, job_id: str) -> JobRecord:
        job = await self.get(job_id)
        if job.status in FINISHED:
            raise JobConflict(f"Cannot cancel job in {job.status} state")
        await self._stop(job_id, "cancel", CANCELLED)
        return await self.get(job_id)

    async def retry(self, job_id: str) -> JobRecord:
        """A failed or cancelled job continues from its last finished chunk."""
        job = await self.get(job_id)
        if job.status not in (FAILED, CANCELLED) or job_id in self._runs:
            raise JobConflict(f"Cannot retry job in {job.status} state; only failed or cancelled jobs can be retried")
        job = await self._db("update", job_id, status=PENDING, error=None, retry_count=job.retry_count + 1)
        self._launch(job)
        return job

    async def delete(self, job_id: str) -> None:
        job = await self.get(job_id)
        self._end_paused(job)
        run = self._runs.get(job_id)
        if run is not None:
            self._signal(run, "cancel")
            await asyncio.gather(run.task, return_exceptions=True)
        await self._db("delete", job_id)
        await asyncio.to_thread(files.remove_job, self.root, job_id)

    async def update_metadata(self, job_id: str, **fields: Any) -> JobRecord:
        await self.get(job_id)
        changes = {k: v for k, v in fields.items() if v is not None}
        return await self._db("update", job_id, **changes)

    async def touch(self, job_id: str) -> None:
        await self._db("update", job_id, last_accessed=time.time())

    async def list(self, status: str | None, limit: int, offset: int) -> tuple[list[JobRecord], int]:
        return await self._db("list", status, limit, offset)

    async def counts(self) -> dict[str, int]:
        return await self._db("counts")

    async def all_jobs(self) -> list[JobRecord]:
        return await self._db("all_jobs")

    async def clear_history(self) -> int:
        """Delete every finished job and its files."""
        ids = await self._db("ids_with_status", FINISHED)
        for job_id in ids:
            await self.delete(job_id)
        return len(ids)

    async def cleanup(self, now: float | None = None) -> list[str]:
        """Remove finished jobs (and their files) older than LONG_TEXT_JOB_RETENTION_DAYS."""
        if not self.config.retention_days:
            return []
        if self.store is None and not await asyncio.to_thread(self._db_path.exists):
            return []
        now = time.time() if now is None else now
        cutoff = now - self.config.retention_days * 86400
        ids = await self._db("finished_before", cutoff)
        for job_id in ids:
            with contextlib.suppress(JobNotFound):
                await self.delete(job_id)
        if ids:
            log.info("long-text retention: removed %d jobs", len(ids))
        return ids

    async def _clean_periodically(self) -> None:
        while True:
            try:
                await self.cleanup()
            except Exception:
                log.exception("long-text cleanup failed")
            await asyncio.sleep(self.config.cleanup_interval)

    def is_running(self, job_id: str) -> bool:
        return job_id in self._runs

    async def wait(self, job_id: str) -> None:
        """Until the job's current run (if any) has stopped: finished, paused or cancelled."""
        run = self._runs.get(job_id)
        if run is not None and run.task is not None:
            await asyncio.gather(asyncio.shield(run.task), return_exceptions=True)

    # -- running -----------------------------------------------------------------

    def _launch(self, job: JobRecord) -> None:
        run = _Run(job.job_id)
        progress = Progress(_Announced(job.job_id, job.text, time.time()), self.core.bus, self.core.tracker)
        progress.stage(
            "queued",
            "Waiting for a long-text slot",
            text_length=job.text_length,
            text_preview=preview(job.text),
            voice_source=job.voice,
            parameters=job.parameters,
            engine=self.core.engine.name,
        )
        self._runs[job.job_id] = run
        run.task = asyncio.create_task(self._run(run, job, progress), name=f"long-text-{job.job_id}")

    def _end_paused(self, job: JobRecord) -> None:
        """A paused job that is cancelled or deleted ends in the status API as cancelled."""
        record = self.core.tracker.find(job.job_id)
        if record is not None and record.status == "paused":
            progress = Progress(_Announced(job.job_id, job.text, time.time()), self.core.bus, self.core.tracker)
            progress.finish("cancelled", "Cancelled")

    def _signal(self, run: _Run, reason: str) -> None:
        run.reason = run.reason or reason
        if run.task is not None:
            run.task.cancel()
        run.cancel.set()

    async def _stop(self, job_id: str, reason: str, status: str) -> None:
        run = self._runs.get(job_id)
        if run is None:
            job = await self._db("update", job_id, status=status, current_chunk=None)
            if status == CANCELLED:
                self._end_paused(job)
            return
        self._signal(run, reason)
        await asyncio.gather(run.task, return_exceptions=True)

    async def _run(self, run: _Run, job: JobRecord, progress: Progress) -> None:
        assert self._slots is not None
        job_id = job.job_id
        try:
            async with self._slots:
                await self.core.worker.wait_loaded()
                await self._process(run, progress)
        except (asyncio.CancelledError, Cancelled):
            if run.reason in (None, "shutdown"):
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            paused = run.reason == "pause"
            await self._db(
                "update",
                job_id,
                status=PAUSED if paused else CANCELLED,
                current_chunk=None,
                processing_paused_at=time.time() if paused else None,
            )
            progress.finish("paused" if paused else "cancelled", "Paused" if paused else "Cancelled")
        except Exception as exc:
            if isinstance(exc, QuotaExceeded):
                message = str(exc)
            else:
                if not isinstance(exc, EngineError):
                    log.exception("long-text job %s failed", job_id)
                message = f"Generation failed: {exc}"
            await self._db("update", job_id, status=FAILED, error=message, current_chunk=None)
            progress.finish("error", "Failed", error_message=message)
        finally:
            if self._runs.get(job_id) is run:
                del self._runs[job_id]

    async def _process(self, run: _Run, progress: Progress) -> None:
        core = self.core
        job_id = run.job_id
        job = await self._db("get", job_id)
        job = await self._db(
            "update", job_id, status=PROCESSING, processing_started_at=job.processing_started_at or time.time()
        )
        chunks = await self._db("chunks", job_id)
        progress.stage("initializing", "Starting long-text job")
        progress.plan([c.text for c in chunks])
        progress.done_chars = sum(len(c.text) for c in chunks if c.done)
        voice = core.planner.resolve_voice(job.voice)
        if voice is None:
            raise EngineError(f"voice {job.voice!r} is not available any more")
        params = SynthesisParams(**job.synthesis)
        engine = core.engine
        low, high = engine.speed_range or (1.0, 1.0)
        native = low <= params.speed <= high
        engine_params = params if native else dataclasses.replace(params, speed=1.0)
        started = time.perf_counter()
        generated = 0
        while True:
            for chunk in chunks:
                if chunk.done:
                    continue
                await self._generate(run, progress, chunk, voice, engine_params, None if native else params.speed)
                generated += len(chunk.text)
            pieces, bad = await asyncio.to_thread(self._load_pieces, job_id, chunks)
            if not bad:
                break
            for chunk, reason in bad:
                log.warning("long-text job %s: chunk %d %s; generating it again", job_id, chunk.index, reason)
                await self._db("chunk_invalid", job_id, chunk.index, reason)
                chunk.done, chunk.samples = False, None
                progress.done_chars -= len(chunk.text)
        progress.stage("concatenating", f"Combining {len(pieces)} audio chunks", 95.0)
        fmt = job.output_format
        output = files.job_dir(self.root, job_id) / f"output.{fmt}"
        size, samples = await asyncio.to_thread(self._assemble, pieces, job.silence_padding_ms, fmt, output)
        duration = round(samples / engine.sample_rate, 3)
        await self._db(
            "update",
            job_id,
            status=COMPLETED,
            current_chunk=None,
            processing_completed_at=time.time(),
            output_path=output.name,
            output_size_bytes=size,
            output_duration_seconds=duration,
        )
        extra: dict[str, Any] = {"audio_duration_seconds": duration}
        if generated:
            extra.update(generation_seconds=time.perf_counter() - started, generated_characters=generated)
        progress.finish("completed", "Completed", **extra)

    async def _generate(self, run: _Run, progress: Progress, chunk: ChunkRecord, voice: Any, params: SynthesisParams, speed: float | None) -> None:
        worker = self.core.worker
        job_id = run.job_id
        await self.check_quota()
        await self._db("chunk_started", job_id, chunk.index)
        began = time.perf_counter()
        report = worker.on_loop(functools.partial(progress.within_chunk, chunk.index))
        # Announced when the engine thread takes the chunk up, not while it waits its turn.
        # A chunk taken up after the job was paused or cancelled is not announced.
        started = worker.on_loop(lambda index: None if run.reason else progress.chunk_started(index))
        samples = await worker.run_background(
            _announced_call, started, chunk.index, worker.engine.synthesize, chunk.text, voice, params, report, run.cancel
        )
        if speed is not None:
            samples = await asyncio.to_thread(audio.change_speed, samples, worker.engine.sample_rate, speed)
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        await asyncio.to_thread(files.write_atomic, files.chunk_path(self.root, job_id, chunk.index), None, samples)
        duration_ms = int(round(1000 * len(samples) / worker.engine.sample_rate))
        elapsed_ms = int(round(1000 * (time.perf_counter() - began)))
        await self._db("chunk_done", job_id, chunk.index, len(samples), duration_ms, elapsed_ms)
        chunk.done, chunk.samples = True, len(samples)
        progress.chunk_done()

    def _load_pieces(self, job_id: str, chunks: list[ChunkRecord]) -> tuple[list[np.ndarray], list[tuple[ChunkRecord, str]]]:
        """Every chunk's audio, validated; the chunks whose file is missing or corrupt."""
        pieces, bad = [], []
        for chunk in chunks:
            path = files.chunk_path(self.root, job_id, chunk.index)
            piece = files.read_chunk(path, chunk.samples)
            if piece is None:
                bad.append((chunk, "audio file is missing" if not path.exists() else "audio file is corrupt"))
            else:
                pieces.append(piece)
        return pieces, bad

    def _assemble(self, pieces: list[np.ndarray], padding_ms: int, fmt: str, output: Path) -> tuple[int, int]:
        sample_rate = self.core.engine.sample_rate
        joined = audio.join_chunks(pieces, sample_rate, pause_seconds=padding_ms / 1000.0)
        data = audio.encode(joined, sample_rate, fmt)
        return files.write_atomic(output, data), len(joined)


def _announced_call(announce: Any, index: int, fn: Any, *args: Any) -> Any:
    """On the engine thread: announce the chunk's start (hopped to the loop), then run it."""
    cancel = args[-1]
    if cancel.is_set():
        raise Cancelled()
    announce(index)
    return fn(*args)
