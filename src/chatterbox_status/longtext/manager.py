"""The long-text jobs: durable records in a store, run through the one pipeline.

Each job runs in its own asyncio task, at most LONG_TEXT_MAX_CONCURRENT_JOBS at once
(the rest stay pending), through ``pipeline.process`` at background priority, so
interactive requests always go first and wait at most one chunk. What differs from an
interactive request is the output (``ChunkFileOutput``: chunk files on disk, committed
to the store before the pipeline announces them) and how it stops: a job can be paused
and resumed, and one stopped by a shutdown resumes at the next start. The bus events use
the job id as request id, so jobs show up in /status and /status/stream like any request,
and their figures carry on across pause, resume and retry (one Progress per id).

With REDIS_URL the jobs live in Redis (``redis_store``), shared by every node: any node
takes a job, shows it, stops it and serves its audio. A job runs on the node that holds its
lease; the others ask that node, through the event log, to pause or cancel it, and take it
over (from its last finished chunk) once its node stops renewing the lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import audio
from ..engines.base import SynthesisParams
from ..events import Event
from ..exceptions import Conflict, EngineUnavailable, NotFound, OutOfSpace, QueueFull, SharedStateUnavailable, StorageUnavailable
from ..pipeline import Job, Progress, StopReason, record_stop
from ..planning import LongTextPlan
from ..tracker import TERMINAL_STATUSES
from . import files
from .config import LongTextConfig
from .output import ChunkFileOutput
from .store import (
    CANCELLED,
    FAILED,
    FINISHED,
    JOB_STATUSES,
    PAUSED,
    PENDING,
    RUNNABLE,
    ChunkRecord,
    JobRecord,
    JobStore,
    set_aside,
    storage_errors,
)

log = logging.getLogger(__name__)
MB = 1024 * 1024
# In a cluster: seconds between two renewals of this node's leases and two looks for jobs
# that no node holds.
LEASE_RENEW_SECONDS = 2.5
# How long a node waits before it tries again a jobs database that could not be opened at its
# start (another process held it locked, or the disk was full).
REOPEN_SECONDS = 5.0
# What a jobs database that cannot be used now answers; work in the background that meets it
# waits for its next look instead of failing.
STORE_AWAY = (StorageUnavailable, OutOfSpace)
# In a cluster: how long a pause or cancel waits for the node running the job to stop it.
STOP_ELSEWHERE_SECONDS = 60.0


class JobNotFound(NotFound):
    """No long-text job has the id asked for."""


class JobConflict(Conflict):
    """The job's state does not allow the action."""

    code = "invalid_job_state"


class QuotaExceeded(OutOfSpace):
    """The long-text storage holds as much as LONG_TEXT_MAX_DISK_MB allows."""

    code = "disk_quota_exceeded"


@dataclass(eq=False)
class _Run:
    job_id: str
    reason: StopReason | None = None  # once it is being stopped
    job: Job | None = None  # once it is in the pipeline
    task: asyncio.Task | None = None


class LongTextManager:
    def __init__(self, core: Any, config: LongTextConfig) -> None:
        self.core = core
        self.config = config
        self.root = Path(config.data_dir) / "long_text"
        self._db_path = self.root / "jobs.sqlite3"
        self._opening = asyncio.Lock()
        self.store: Any = None  # a JobStore, or with REDIS_URL a RedisJobStore
        self._unreachable: tuple[type[Exception], ...] = ()  # the store's "cannot reach it" errors
        self._runs: dict[str, _Run] = {}
        self._slots: asyncio.Semaphore | None = None
        self._cleaner: asyncio.Task | None = None
        self._leases: asyncio.Task | None = None
        self._resuming: asyncio.Task | None = None
        self._removals: set[asyncio.Task] = set()
        self.node = core.bus.node
        if config.redis_url:
            core.bus.add_listener(self._asked_elsewhere)

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        self._slots = asyncio.Semaphore(self.config.max_concurrent_jobs)
        if self.config.redis_url:  # the jobs no node holds are taken by the lease keeper
            try:
                await self._share_local_jobs()
            except SharedStateUnavailable as exc:
                log.error("long-text jobs of this node's own database stay there until Redis is back: %s", exc)
            self._leases = asyncio.create_task(self._keep_leases(), name="long-text-leases")
        elif await asyncio.to_thread(self._db_path.exists):
            try:
                await self._resume()
            except STORE_AWAY as exc:
                log.error("long-text jobs wait to resume until their database opens: %s", exc)
                self._resuming = asyncio.create_task(self._resume_once_open(), name="long-text-resume")
        if self.config.retention_days and self.config.cleanup_interval:
            self._cleaner = asyncio.create_task(self._clean_periodically(), name="long-text-cleanup")

    async def stop(self) -> None:
        """Stop running jobs where they are; their records stay runnable for the next start
        (in a cluster, for another node to take over)."""
        for task in (self._cleaner, self._leases, self._resuming):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        runs = list(self._runs.values())
        for run in runs:
            self._signal(run, "shutdown")
        await asyncio.gather(*(r.task for r in runs if r.task), *self._removals, return_exceptions=True)
        if self.store is not None:
            await asyncio.to_thread(self.store.close)

    async def _resume(self) -> None:
        """The jobs left runnable in this node's database start again where they stopped."""
        for job_id in await self._db("ids_with_status", RUNNABLE):
            job = None if job_id in self._runs else await self._db("get", job_id)
            if job is not None:
                log.info("long-text job %s resumes at chunk %d of %d", job_id, job.completed_chunks + 1, job.total_chunks)
                await self._launch(job)

    async def _resume_once_open(self) -> None:
        """A database that could not be opened at the start is tried again until it opens, so its
        jobs are not left waiting for the next start (one resumed or created meanwhile runs once)."""
        while True:
            await asyncio.sleep(REOPEN_SECONDS)
            try:
                await self._resume()
                return
            except STORE_AWAY as exc:
                log.warning("long-text jobs still wait to resume: %s", exc)

    async def _db(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Every store call runs off the event loop. The database is created on first use,
        so a server that never takes a long-text job writes nothing."""
        try:
            if self.store is None:
                async with self._opening:
                    if self.store is None:
                        self.store = await asyncio.to_thread(self._open)
            return await asyncio.to_thread(getattr(self.store, method), *args, **kwargs)
        except self._unreachable as exc:
            raise SharedStateUnavailable(f"The long-text jobs (Redis) are unreachable: {exc}") from exc
        except (OSError, sqlite3.OperationalError) as exc:
            translated = storage_errors(exc)
            if translated is exc:
                raise
            raise translated from exc

    def _open(self) -> Any:
        """The store: this node's database, or with REDIS_URL the cluster's jobs."""
        if self.config.redis_url:
            from redis.exceptions import RedisError  # the redis package is needed only here

            from .redis_store import RedisJobStore

            self._unreachable = (RedisError,)
            return RedisJobStore(self.config.redis_url)
        return JobStore(self._db_path)

    # -- actions -----------------------------------------------------------------

    async def check_quota(self, needed: int = 0) -> None:
        """Refuse when what the long-text storage holds (jobs' files and the database),
        plus ``needed`` bytes more, passes LONG_TEXT_MAX_DISK_MB."""
        if not self.config.max_disk_mb:
            return
        used = await self._db("usage") if self.config.redis_url else await asyncio.to_thread(files.disk_usage, self.root)
        quota = self.config.max_disk_mb * MB
        if used >= quota:
            raise QuotaExceeded(
                f"Long-text storage is full: {used / MB:.1f} MB used, LONG_TEXT_MAX_DISK_MB is "
                f"{self.config.max_disk_mb:g}; delete finished jobs to make room"
            )
        if used + needed > quota:
            raise QuotaExceeded(
                f"This job would need about {needed / MB:.1f} MB and {(quota - used) / MB:.1f} MB is left of "
                f"LONG_TEXT_MAX_DISK_MB ({self.config.max_disk_mb:g}); delete finished jobs or send less text"
            )

    async def create(self, plan: LongTextPlan, session_id: str | None = None, display_name: str | None = None) -> JobRecord:
        speech = plan.speech
        self.core.check_ready(speech.engine)
        self._check_room()
        rate = self.core.planner.engines[speech.engine].sample_rate
        # Chunk files are float32; the final file is the format's size for speech and silence.
        needed = plan.speech_seconds * rate * 4 + plan.output_seconds * audio.bytes_per_second(speech.response_format, rate)
        await self.check_quota(int(needed))
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
        await self._take(job.job_id)  # before the job exists: no other node may take it first
        try:
            await self._db("create", job, plan.chunks)
        except BaseException:
            await self._let_go(job.job_id)
            raise
        await self._launch(job)
        return job

    def _check_room(self) -> None:
        if len(self._runs) < self.config.max_pending_jobs:
            return
        now = time.time()
        records = (self.core.tracker.find(job_id) for job_id in self._runs)
        etas = [
            eta
            for record in records
            if record is not None and (eta := record.progress_view(now)["estimated_completion"]) is not None
        ]
        raise QueueFull(
            f"{len(self._runs)} long-text jobs are waiting or running (MAX_QUEUE_SIZE); try again later",
            retry_after=max(1.0, min(etas) - now) if etas else 1.0,
        )

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
        self._check_room()
        await self._take(job_id)
        job = await self._db("update", job_id, status=PENDING, processing_paused_at=None)
        await self._launch(job)
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
        self._check_room()
        await self._take(job_id)
        job = await self._db("update", job_id, status=PENDING, error=None, retry_count=job.retry_count + 1)
        await self._launch(job)
        return job

    async def delete(self, job_id: str) -> None:
        job = await self.get(job_id)
        run = self._runs.get(job_id)
        if run is not None:
            self._signal(run, "cancel")
            await asyncio.gather(*([run.task] if run.task else []), return_exceptions=True)
        elif self.config.redis_url and job.status in RUNNABLE:
            await self._stop(job_id, "cancel", CANCELLED)
        await self._settle_record(dataclasses.replace(job, status=CANCELLED))  # a paused one, say
        await self._db("delete", job_id)
        await asyncio.to_thread(files.remove_job, self.root, job_id)
        if self.config.redis_url:  # the other nodes' copies of its files
            self.core.bus.publish("long_text", {"job_id": job_id, "deleted": True})

    async def update_metadata(self, job_id: str, **fields: Any) -> JobRecord:
        await self.get(job_id)
        changes = {k: v for k, v in fields.items() if v is not None}
        return await self._db("update", job_id, **changes)

    async def touch(self, job_id: str) -> None:
        await self._db("update", job_id, last_accessed=time.time())

    async def page(self, status: str | None, limit: int, offset: int) -> tuple[list[JobRecord], int]:
        """Jobs newest first, and how many match in all."""
        return await self._db("page", status, limit, offset)

    async def counts(self) -> dict[str, int]:
        return await self._db("counts")

    async def stats(self) -> dict[str, Any]:
        """chatterbox-tts-api's history statistics, computed by the database."""
        return await self._db("stats")

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
        if self.store is None and not self.config.redis_url and not await asyncio.to_thread(self._db_path.exists):
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
            except STORE_AWAY as exc:
                log.warning("long-text cleanup waits for its next turn: %s", exc)
            except Exception:
                log.exception("long-text cleanup failed")
            await asyncio.sleep(self.config.cleanup_interval)

    def is_running(self, job: JobRecord) -> bool:
        """Running or waiting to run: here, or in a cluster on any node."""
        return job.job_id in self._runs or (bool(self.config.redis_url) and job.status in RUNNABLE)

    async def output_file(self, job: JobRecord) -> Path | None:
        """A completed job's audio file on this node's disk (in a cluster, copied from Redis
        the first time this node serves it), or None when it is lost."""
        if not job.output_path:
            return None
        path = files.job_dir(self.root, job.job_id) / job.output_path
        if not await asyncio.to_thread(path.is_file) and self.config.redis_url:
            data = await self._db("get_file", job.job_id, job.output_path)
            if data is not None:
                await asyncio.to_thread(files.write_atomic, path, data)
        return path if await asyncio.to_thread(path.is_file) else None

    async def wait(self, job_id: str) -> None:
        """Until the job's current run (if any) has stopped: finished, paused or cancelled."""
        run = self._runs.get(job_id)
        if run is not None and run.task is not None:
            await asyncio.gather(asyncio.shield(run.task), return_exceptions=True)

    # -- running -----------------------------------------------------------------

    async def _launch(self, record: JobRecord) -> None:
        """Announce the job (with its stored progress) and start its run; it waits for a slot."""
        run = self._runs[record.job_id] = _Run(record.job_id)
        chunks = await self._db("chunks", record.job_id)
        if run.reason is not None:  # stopped while its chunks were read: the stop is stored, no run starts
            del self._runs[record.job_id]
            await self._let_go(record.job_id)
            if run.reason != "shutdown":
                await self._settle_record(dataclasses.replace(record, status=PAUSED if run.reason == "pause" else CANCELLED))
            return
        progress = self.core.progress.open(record.job_id, record.text)
        progress.plan([c.text for c in chunks], done=[c.index for c in chunks if c.done])
        progress.queued("Waiting for a long-text slot", record.voice, record.parameters, self._engine(record), durable=True)
        run.task = asyncio.create_task(self._run(run, record, chunks, progress), name=f"long-text-{record.job_id}")

    def _engine(self, record: JobRecord) -> str:
        """The engine the job's model chose (jobs stored before there was a choice: the default)."""
        return record.parameters.get("engine") or self.core.catalog.default

    async def _settle_record(self, job: JobRecord) -> None:
        """A job stopped or deleted while no run had it (paused, or in a cluster one whose
        node stopped): the status API shows it as ``job`` now is, with the figures it stopped
        at, before the answer says so."""
        record = self.core.tracker.find(job.job_id)
        if record is None or record.status in TERMINAL_STATUSES or record.status == job.status:
            return
        progress = self.core.progress.open(job.job_id, job.text)
        if job.status == PAUSED:
            progress.pause()
        else:
            progress.finish("cancelled", "Cancelled")
        await self.core.bus.settled()

    def _signal(self, run: _Run, reason: StopReason) -> None:
        """In the pipeline, the job stops at its next check; before, its wait is cut short."""
        run.reason = run.reason or reason
        if run.job is not None:
            run.job.request_cancel(run.reason)
        elif run.task is not None:
            run.task.cancel()

    async def _stop(self, job_id: str, reason: StopReason, status: str) -> None:
        run = self._runs.get(job_id)
        deadline = time.monotonic() + STOP_ELSEWHERE_SECONDS
        while run is None:
            if await self._hold(job_id):  # no run has it: its record is stopped here
                try:
                    job = await self._store_stop(job_id, status)
                finally:
                    await self._let_go(job_id)
                await self._settle_record(job)
                return
            if time.monotonic() > deadline:
                raise SharedStateUnavailable(
                    f"The node running job {job_id} did not stop it within {STOP_ELSEWHERE_SECONDS:g} s; try again"
                )
            await self._ask_holder(job_id, reason)  # in a cluster, another node runs it
            if (await self.get(job_id)).status not in RUNNABLE:
                return
            run = self._runs.get(job_id)
        self._signal(run, reason)
        await asyncio.gather(*([run.task] if run.task else []), return_exceptions=True)
        if (await self.get(job_id)).status in RUNNABLE:  # the run could not store its stop
            try:
                await self._store_stop(job_id, status)
            except OutOfSpace as exc:
                raise OutOfSpace(
                    f"Job {job_id} stopped, but its new state ({status}) could not be stored: {exc}. "
                    f"It would resume at the next start: ask again once there is room"
                ) from exc

    async def _store_stop(self, job_id: str, status: str) -> JobRecord:
        paused_at = time.time() if status == PAUSED else None
        return await self._db("update", job_id, status=status, current_chunk=None, processing_paused_at=paused_at)

    async def _run(self, run: _Run, record: JobRecord, chunks: list[ChunkRecord], progress: Progress) -> None:
        assert self._slots is not None
        output = ChunkFileOutput(self._db, self.root, record, chunks, self.check_quota, shared=bool(self.config.redis_url))
        try:
            async with self._slots:
                engine = self._engine(record)
                # Background work waits for a model that is loading as queued, behind
                # interactive requests that wait as initializing; a failed load is the
                # pipeline's to report.
                slot = self.core.engines.slots.get(engine)
                if slot is not None and slot.running:
                    with contextlib.suppress(EngineUnavailable):
                        await slot.wait_loaded()
                voice = self.core.planner.resolve_voice(record.voice, engine) if slot is not None else None
                if voice is None:
                    message = (
                        f"Generation failed: engine {engine!r} is not configured any more (see ENGINES)"
                        if slot is None
                        else f"Generation failed: voice {record.voice!r} is not available any more"
                    )
                    await output.failed(message)
                    progress.finish("error", "Failed", error_message=message)
                    return
                result: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
                result.add_done_callback(lambda done: done.cancelled() or done.exception())
                run.job = Job(
                    request_id=record.job_id,
                    text=record.text,
                    voice=voice,
                    params=SynthesisParams(**record.synthesis),
                    output=output,
                    progress=progress,
                    result=result,
                    priority="background",
                    chunks=[c.text for c in chunks],
                    engine=engine,
                    keep_alive=record.parameters.get("keep_alive"),
                )
                if run.reason is not None:
                    run.job.request_cancel(run.reason)
                await self.core.run_job(run.job)
        except asyncio.CancelledError:
            # Stopped while it waited for a slot: the pipeline never had it.
            if run.reason in (None, "shutdown"):
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            await record_stop(output, record.job_id, run.reason)
            if run.reason == "pause":
                progress.pause()
            else:
                progress.finish("cancelled", "Cancelled")
        finally:
            if self._runs.get(record.job_id) is run:
                del self._runs[record.job_id]
                await self._let_go(record.job_id)

    # -- the cluster -------------------------------------------------------------

    async def _hold(self, job_id: str) -> bool:
        """In a cluster, take the job's lease (False: another node holds it); on one node
        this node always holds its jobs."""
        return not self.config.redis_url or await self._db("claim", job_id, self.node)

    async def _take(self, job_id: str) -> None:
        """Hold the job before running it here."""
        if not await self._hold(job_id):
            raise JobConflict(f"Job {job_id} is running on another node")

    async def _let_go(self, job_id: str) -> None:
        """Give up the job's lease, so another node may take it at once (best effort: it
        lapses by itself)."""
        if self.config.redis_url:
            try:
                await self._db("release", job_id, self.node)
            except SharedStateUnavailable as exc:
                log.warning("long-text job %s: its lease lapses by itself (%s)", job_id, exc)

    async def _ask_holder(self, job_id: str, reason: StopReason) -> None:
        """Ask the node that runs the job to stop it, through the event log; return once it
        has (its stop event came), or after a lease renewal's time, to look again."""
        stopped = asyncio.get_running_loop().create_future()

        def watch(event: Event) -> None:
            if event.type == "status" and event.data.get("request_id") == job_id and not stopped.done():
                if event.data.get("status") in TERMINAL_STATUSES or event.data.get("status") == PAUSED:
                    stopped.set_result(None)

        self.core.bus.add_listener(watch)
        try:
            self.core.bus.publish("long_text", {"job_id": job_id, "stop": reason})
            await asyncio.wait([stopped], timeout=LEASE_RENEW_SECONDS)
        finally:
            self.core.bus.remove_listener(watch)

    def _asked_elsewhere(self, event: Event) -> None:
        """Another node was asked to stop or delete a job: this node stops its run of it,
        or removes its copies of the job's files."""
        if event.type != "long_text" or event.data.get("node") == self.node:
            return
        job_id = event.data["job_id"]
        if event.data.get("deleted"):
            task = asyncio.get_running_loop().create_task(asyncio.to_thread(files.remove_job, self.root, job_id))
            self._removals.add(task)
            task.add_done_callback(self._removals.discard)
        elif (run := self._runs.get(job_id)) is not None:
            self._signal(run, event.data["stop"])

    async def _share_local_jobs(self) -> None:
        """The jobs this node kept in a database of its own (before REDIS_URL) go into the
        cluster's store with their files, held meanwhile so no node runs one half copied;
        then the database is set aside. Turning the cluster on loses no job: one held by a
        lease while not in the cluster yet (its copy was cut off, and this node started
        again before the lease lapsed) keeps the database for the lease keeper's next look."""
        if not await asyncio.to_thread(self._db_path.exists):
            return
        try:
            local = await asyncio.to_thread(JobStore, self._db_path)
        except STORE_AWAY as exc:
            log.warning("long-text jobs of this node's database wait to join the cluster: %s", exc)
            return
        waiting: list[str] = []
        try:
            ids = await asyncio.to_thread(local.ids_with_status, set(JOB_STATUSES))
            for job_id in ids:
                job, chunks = await asyncio.to_thread(local.get, job_id), await asyncio.to_thread(local.chunks, job_id)
                if job is None:
                    continue
                if not await self._hold(job_id):
                    if await self._db("get", job_id) is None:
                        waiting.append(job_id)
                    continue
                try:
                    if await self._db("add", job, chunks):
                        names = [files.chunk_name(c.index) for c in chunks if c.done]
                        if job.output_path:
                            names.append(job.output_path)
                        for name in names:
                            path = files.job_dir(self.root, job_id) / name
                            if await asyncio.to_thread(path.is_file):
                                await self._db("put_file", job_id, name, await asyncio.to_thread(path.read_bytes))
                finally:
                    await self._let_go(job_id)
        finally:
            await asyncio.to_thread(local.close)
        if waiting:
            log.warning("long-text jobs %s of this node's database wait for a lease to lapse before they join the cluster", ", ".join(waiting))
            return
        aside = await asyncio.to_thread(set_aside, self._db_path, "shared")
        log.info("long-text: %d jobs of this node's database are the cluster's now (Redis); the database is kept as %s", len(ids), aside)

    async def _keep_leases(self) -> None:
        """Renew this node's leases (a run whose job another node took stops here), and take
        the jobs no node holds while this node has a free long-text slot."""
        while True:
            try:
                for job_id in await self._db("renew", list(self._runs), self.node):
                    if (run := self._runs.get(job_id)) is not None:
                        log.warning("long-text job %s: another node took it over; its run here stops", job_id)
                        self._signal(run, "shutdown")
                await self._share_local_jobs()  # what the start could not share, if anything
                await self._take_orphans()
            except SharedStateUnavailable as exc:
                log.warning("long-text leases: %s", exc)
            except Exception:
                log.exception("long-text leases failed")
            await asyncio.sleep(LEASE_RENEW_SECONDS)

    async def _take_orphans(self) -> None:
        room = self.config.max_concurrent_jobs - len(self._runs)
        for job_id in await self._db("orphans") if room > 0 else []:
            if room <= 0:
                return
            if job_id in self._runs or not await self._hold(job_id):
                continue
            job = await self._db("get", job_id)
            if job is None or job.status not in RUNNABLE:
                await self._let_go(job_id)
                continue
            log.info("long-text job %s taken over at chunk %d of %d", job_id, job.completed_chunks + 1, job.total_chunks)
            await self._launch(job)
            room -= 1
