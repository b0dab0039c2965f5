"""Long-text jobs (chatterbox-tts-api's /audio/speech/long routes, with and without /v1).

POST /audio/speech/long answers at once with the job id and its plan; the job runs in the
background (see longtext.manager) and is polled, streamed (SSE), paused, resumed,
cancelled, retried, renamed, downloaded (with Range) and deleted through the routes below.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from aiohttp_sse import sse_response

from .. import audio
from ..errors import ApiError
from ..exceptions import Conflict, InvalidInput, NotFound, OutOfSpace, QueueFull, TooManyStreams, Unavailable
from ..longtext.config import LongTextConfig
from ..longtext.manager import LongTextManager
from ..longtext.store import (
    COMPLETED,
    FINISHED,
    JOB_STATUSES,
    PAUSED,
    RUNNABLE,
    ChunkRecord,
    JobRecord,
)
from ..pipeline import preview
from ..schemas.long_text import (
    BulkRequest,
    BulkResult,
    ChunkView,
    HistoryStats,
    JobAction,
    JobCancelledOrDeleted,
    JobCreated,
    JobDeleted,
    JobDetails,
    JobEnded,
    JobHistoryCleared,
    JobList,
    JobListItem,
    JobMetadata,
    JobProgress,
    JobProgressEvent,
    JobSnapshotEvent,
    JobView,
    PerformanceMetrics,
    RetryRequest,
    UpdateRequest,
)
from ..schemas.speech import LongTextRequest
from ..state import CORE
from ..tracker import TERMINAL_STATUSES
from .bodies import parse, read_json_object, read_optional_json
from .files import FileDownload
from .params import bool_param, int_param, query_bool, query_int
from .routing import Events, Json, Param, Reply, api_route, event_data, json_model, with_v1

LONG_TEXT = web.AppKey("long_text", LongTextManager)
routes = web.RouteTableDef()
TAG = "long-text"
# Every route here reads the jobs' store: a Redis out of reach (REDIS_URL), or a database that
# cannot be opened now (another process holds it locked; a full disk), is a 503 or a 507.
STORE_REFUSALS = (Unavailable, OutOfSpace)
JOB_ID = {"job_id": "A long-text job id, as POST /audio/speech/long returned it"}


def _listing(default_limit: int) -> tuple[Param, ...]:
    """The query of a job list, as _job_list reads it."""
    return (
        Param("status", {"enum": list(JOB_STATUSES)}, "Only jobs in this status"),
        int_param("limit", default_limit, 1, 100, "Jobs per page"),
        int_param("offset", 0, 0, 1_000_000_000, "Jobs to skip"),
    )


def _max_length(app: web.Application) -> int:
    return app[LONG_TEXT].config.max_length


# -- views ----------------------------------------------------------------------


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


def _manager(request: web.Request) -> LongTextManager:
    return request.app[LONG_TEXT]


async def _job(request: web.Request) -> JobRecord:
    return await _manager(request).get(request.match_info["job_id"])


def _live(request: web.Request, job: JobRecord) -> tuple[float, int | None]:
    """(overall progress, estimated remaining seconds) from the stored counts and the live record."""
    if job.status == COMPLETED:
        return 100.0, 0
    stored = round(min(99.9, 100.0 * job.completed_chunks / max(job.total_chunks, 1)), 1)
    record = request.app[CORE].tracker.find(job.job_id)
    if record is None or record.status in TERMINAL_STATUSES or job.status in FINISHED or job.status == PAUSED:
        return stored, None
    progress = record.progress_view(time.time())
    eta = progress.get("estimated_completion")
    remaining = None if eta is None else max(0, int(round(eta - time.time())))
    return max(stored, float(progress.get("progress_percentage") or 0.0)), remaining


def _chunk_view(chunk: ChunkRecord) -> ChunkView:
    return ChunkView(
        index=chunk.index,
        text=chunk.text,
        text_preview=chunk.text[:50],
        character_count=len(chunk.text),
        status="completed" if chunk.done else ("processing" if chunk.started_at and not chunk.error else "pending"),
        audio_file=f"chunks/{chunk.index:05d}.npy" if chunk.done else None,
        duration_ms=chunk.duration_ms,
        processing_started_at=_iso(chunk.started_at),
        processing_completed_at=_iso(chunk.completed_at),
        error=chunk.error,
    )


def _download_url(job: JobRecord) -> str | None:
    return f"/audio/speech/long/{job.job_id}/download" if job.status == COMPLETED else None


def _metadata(job: JobRecord) -> JobMetadata:
    return JobMetadata(
        job_id=job.job_id,
        created_at=_iso(job.created_at),
        updated_at=_iso(job.updated_at),
        status=job.status,
        text_length=job.text_length,
        total_chunks=job.total_chunks,
        completed_chunks=job.completed_chunks,
        current_chunk=job.current_chunk,
        voice=job.voice,
        parameters=job.parameters,
        processing_started_at=_iso(job.processing_started_at),
        processing_paused_at=_iso(job.processing_paused_at),
        processing_completed_at=_iso(job.processing_completed_at),
        total_processing_time_ms=job.total_processing_time_ms,
        output_format=job.output_format,
        output_path=job.output_path,
        output_size_bytes=job.output_size_bytes,
        output_duration_seconds=job.output_duration_seconds,
        error=job.error,
        user_session_id=job.session_id,
        completion_timestamp=_iso(job.processing_completed_at) if job.status == COMPLETED else None,
        audio_file_size=job.output_size_bytes,
        total_duration_seconds=job.output_duration_seconds,
        retry_count=job.retry_count,
        silence_padding_ms=job.silence_padding_ms,
        display_name=job.display_name,
        tags=job.tags,
        last_accessed=_iso(job.last_accessed),
    )


def _job_view(request: web.Request, job: JobRecord) -> JobView:
    overall, remaining = _live(request, job)
    return JobView(
        job_id=job.job_id,
        status=job.status,
        progress=JobProgress(
            job_id=job.job_id,
            overall_progress=overall,
            current_chunk=job.current_chunk,
            completed_chunks=job.completed_chunks,
            total_chunks=job.total_chunks,
            estimated_remaining_seconds=remaining,
            status=job.status,
            error=job.error,
        ),
        metadata=_metadata(job),
        created_at=_iso(job.created_at),
        updated_at=_iso(job.updated_at),
        download_url=_download_url(job),
        can_pause=job.status in RUNNABLE,
        can_resume=job.status == PAUSED,
        can_cancel=job.status not in FINISHED,
    )


def _list_item(request: web.Request, job: JobRecord) -> JobListItem:
    overall, remaining = _live(request, job)
    return JobListItem(
        job_id=job.job_id,
        status=job.status,
        text_preview=preview(job.text),
        text_length=job.text_length,
        progress_percentage=overall,
        created_at=_iso(job.created_at),
        completed_at=_iso(job.processing_completed_at) if job.status == COMPLETED else None,
        download_url=_download_url(job),
        can_resume=job.status == PAUSED,
        voice=job.voice,
        estimated_remaining_seconds=remaining,
        total_duration_seconds=job.output_duration_seconds,
        audio_file_size=job.output_size_bytes,
        retry_count=job.retry_count,
        is_archived=job.is_archived,
        display_name=job.display_name,
        tags=job.tags,
        last_accessed=_iso(job.last_accessed),
        parameters=job.parameters,
        total_chunks=job.total_chunks,
        completed_chunks=job.completed_chunks,
    )


def _action(job: JobRecord, message: str) -> JobAction:
    return JobAction(success=True, message=message, status=job.status, job_id=job.job_id)


def _created(request: web.Request, job: JobRecord, message: str) -> JobCreated:
    spc = request.app[CORE].tracker.seconds_per_char
    remaining = job.text_length * (1 - job.completed_chunks / max(job.total_chunks, 1))
    return JobCreated(
        job_id=job.job_id,
        status=job.status,
        message=message,
        estimated_processing_time_seconds=None if spc is None else int(round(remaining * spc)),
        total_chunks=job.total_chunks,
        status_url=f"/audio/speech/long/{job.job_id}",
        sse_url=f"/audio/speech/long/{job.job_id}/sse",
    )


# -- routes ---------------------------------------------------------------------
# Fixed paths go before /{job_id}, so "history" and "bulk" are never taken for job ids.


@api_route(
    routes, "GET", *with_v1("/audio/speech/long-history/stats"),
    operation_id="longTextHistoryStats", summary="Statistics over all long-text jobs", tag=TAG,
    responses={200: HistoryStats}, errors=STORE_REFUSALS,
)
async def history_stats(request: web.Request) -> web.Response:
    return json_model(HistoryStats.model_validate(await _manager(request).stats()))


async def _job_list(request: web.Request, default_limit: int) -> web.Response:
    status = request.query.get("status") or None
    if status is not None and status not in JOB_STATUSES:
        raise InvalidInput(f"status must be one of {', '.join(JOB_STATUSES)}, got {status!r}", param="status")
    limit = query_int(request, "limit", default_limit, 1, 100)
    offset = query_int(request, "offset", 0, 0, 1_000_000_000)
    manager = _manager(request)
    jobs, matching = await manager.page(status, limit, offset)
    counts = await manager.counts()
    return json_model(
        JobList(
            jobs=[_list_item(request, j) for j in jobs],
            total_jobs=sum(counts.values()),
            matching_jobs=matching,
            active_jobs=sum(counts.get(s, 0) for s in RUNNABLE),
            completed_jobs=counts.get(COMPLETED, 0),
            limit=limit,
            offset=offset,
        )
    )


@api_route(
    routes, "GET", *with_v1("/audio/speech/long-history"),
    operation_id="listLongTextHistory", summary="Long-text job history, newest first", tag=TAG,
    responses={200: JobList}, errors=(InvalidInput, *STORE_REFUSALS), params=_listing(50),
)
async def history(request: web.Request) -> web.Response:
    return await _job_list(request, 50)


@api_route(
    routes, "DELETE", *with_v1("/audio/speech/long/history"),
    operation_id="clearLongTextHistory", summary="Delete every finished long-text job and its audio", tag=TAG,
    responses={200: JobHistoryCleared}, errors=(InvalidInput, *STORE_REFUSALS), params=(bool_param("confirm", "Must be true"),),
)
async def clear_history(request: web.Request) -> web.Response:
    if not query_bool(request, "confirm"):
        raise InvalidInput("History clearing requires confirmation (confirm=true)", param="confirm")
    cleared = await _manager(request).clear_history()
    return json_model(JobHistoryCleared(message=f"Cleared {cleared} jobs from history", cleared_count=cleared, failed_count=0))


@api_route(
    routes, "POST", *with_v1("/audio/speech/long/bulk"),
    operation_id="bulkLongTextAction", summary="Apply one action to several long-text jobs", tag=TAG,
    body=BulkRequest, responses={200: BulkResult}, errors=(InvalidInput, *STORE_REFUSALS),
)
async def bulk(request: web.Request) -> web.Response:
    body = parse(BulkRequest, await read_json_object(request))
    if not body.confirm:
        raise InvalidInput("Bulk operations require confirmation (confirm: true)", param="confirm")
    manager = _manager(request)
    action = {
        "delete": manager.delete, "retry": manager.retry, "cancel": manager.cancel, "pause": manager.pause, "resume": manager.resume,
    }[body.action]
    failed: list[str] = []
    for job_id in body.job_ids:
        try:
            await action(job_id)
        except (NotFound, Conflict):
            failed.append(job_id)
    total = len(body.job_ids)
    done = total - len(failed)
    return json_model(
        BulkResult(
            success_count=done,
            failed_count=len(failed),
            total_count=total,
            failed_jobs=failed,
            message=f"Bulk {body.action}: {done}/{total} successful",
        )
    )


@api_route(
    routes, "POST", *with_v1("/audio/speech/long"),
    operation_id="createLongTextJob", summary="Submit a long text to be spoken in the background", tag=TAG,
    body=Json(LongTextRequest, input_limit=_max_length),
    responses={200: JobCreated},
    errors=(InvalidInput, NotFound, QueueFull, *STORE_REFUSALS),
)
async def create_job(request: web.Request) -> web.Response:
    core = request.app[CORE]
    manager = _manager(request)
    body = parse(LongTextRequest, await read_json_object(request))
    config = manager.config
    plan = await asyncio.to_thread(core.planner.long_text, body, config.max_length, config.silence_padding_ms)
    job = await manager.create(plan, session_id=body.session_id, display_name=body.display_name)
    return json_model(_created(request, job, "Job submitted for processing"))


@api_route(
    routes, "GET", *with_v1("/audio/speech/long"),
    operation_id="listLongTextJobs", summary="List long-text jobs, newest first", tag=TAG,
    responses={200: JobList}, errors=(InvalidInput, *STORE_REFUSALS), params=_listing(20),
)
async def list_jobs(request: web.Request) -> web.Response:
    return await _job_list(request, 20)


@api_route(
    routes, "GET", *with_v1("/audio/speech/long/{job_id}"),
    operation_id="getLongTextJob", summary="A long-text job's status and progress", tag=TAG,
    responses={200: JobView}, errors=(NotFound, *STORE_REFUSALS), path_params=JOB_ID,
)
async def job_status(request: web.Request) -> web.Response:
    return json_model(_job_view(request, await _job(request)))


@api_route(
    routes, "GET", *with_v1("/audio/speech/long/{job_id}/details"),
    operation_id="getLongTextJobDetails", summary="A long-text job with every chunk's state", tag=TAG,
    responses={200: JobDetails}, errors=(NotFound, *STORE_REFUSALS), path_params=JOB_ID,
)
async def job_details(request: web.Request) -> web.Response:
    job = await _job(request)
    manager = _manager(request)
    chunks = await manager.chunks(job.job_id)
    await manager.touch(job.job_id)
    done = [c for c in chunks if c.done]
    return json_model(
        JobDetails(
            metadata=_metadata(job),
            chunks=[_chunk_view(c) for c in chunks],
            input_text=job.text,
            error_log=[job.error] if job.error else [],
            performance_metrics=PerformanceMetrics(
                total_processing_time_ms=job.total_processing_time_ms,
                avg_chunk_time_ms=job.total_processing_time_ms / len(done) if done else 0,
                success_rate=len(done) / len(chunks) if chunks else 0,
            ),
        )
    )


@api_route(
    routes, "GET", *with_v1("/audio/speech/long/{job_id}/download"),
    operation_id="downloadLongTextJob", summary="The finished audio (Range requests supported)", tag=TAG,
    responses={
        200: Reply("The audio in the job's response_format", media=tuple(sorted(set(audio.CONTENT_TYPES.values())))),
        206: Reply("The requested byte range"),
    },
    errors=(NotFound, Conflict, 416, 500, *STORE_REFUSALS),
    path_params=JOB_ID,
)
async def download(request: web.Request) -> web.StreamResponse:
    job = await _job(request)
    if job.status != COMPLETED:
        raise Conflict(f"Job is not completed (status: {job.status})", code="job_not_completed")
    manager = _manager(request)
    path = await manager.output_file(job)
    if path is None:
        raise ApiError(500, "Job completed but its audio file is missing", code="output_missing")
    await manager.touch(job.job_id)
    return FileDownload(
        path,
        headers={
            "Content-Type": audio.CONTENT_TYPES[job.output_format],
            "Content-Disposition": f'attachment; filename="long_text_{job.job_id}.{job.output_format}"',
        },
    )


async def _act(request: web.Request, verb: str) -> JobRecord:
    return await getattr(_manager(request), verb)(request.match_info["job_id"])


@api_route(
    routes, "PUT", *with_v1("/audio/speech/long/{job_id}/pause"),
    operation_id="pauseLongTextJob", summary="Pause a pending or running job", tag=TAG,
    responses={200: Reply("The job, paused", JobAction)}, errors=(NotFound, Conflict, *STORE_REFUSALS), path_params=JOB_ID,
)
async def pause(request: web.Request) -> web.Response:
    job = await _act(request, "pause")
    return json_model(_action(job, f"Job {job.job_id} paused successfully"))


@api_route(
    routes, "PUT", *with_v1("/audio/speech/long/{job_id}/resume"),
    operation_id="resumeLongTextJob", summary="Resume a paused job", tag=TAG,
    responses={200: Reply("The job, pending again", JobAction)}, errors=(NotFound, Conflict, QueueFull, *STORE_REFUSALS), path_params=JOB_ID,
)
async def resume(request: web.Request) -> web.Response:
    job = await _act(request, "resume")
    return json_model(_action(job, f"Job {job.job_id} resumed successfully"))


@api_route(
    routes, "POST", *with_v1("/audio/speech/long/{job_id}/retry"),
    operation_id="retryLongTextJob",
    summary="Continue a failed or cancelled job from its last finished chunk",
    tag=TAG,
    body=Json(RetryRequest, required=False),
    responses={200: JobCreated},
    errors=(InvalidInput, NotFound, Conflict, QueueFull, *STORE_REFUSALS),
    path_params=JOB_ID,
)
async def retry(request: web.Request) -> web.Response:
    body = parse(RetryRequest, await read_optional_json(request))
    if not body.preserve_chunks:
        raise InvalidInput("preserve_chunks=false is not supported: a retry continues from the last finished chunk", param="preserve_chunks")
    job = await _act(request, "retry")
    return json_model(_created(request, job, f"Job resumed from chunk {job.completed_chunks + 1} (retry #{job.retry_count})"))


@api_route(
    routes, "DELETE", *with_v1("/audio/speech/long/{job_id}"),
    operation_id="cancelLongTextJob",
    summary="Cancel a job (action=cancel) or remove it and its files (action=delete)",
    tag=TAG,
    responses={200: JobCancelledOrDeleted},
    errors=(InvalidInput, NotFound, Conflict, *STORE_REFUSALS),
    params=(Param("action", {"enum": ["cancel", "delete"], "default": "cancel"}, "cancel or delete"),),
    path_params=JOB_ID,
)
async def cancel_or_delete(request: web.Request) -> web.Response:
    """action=cancel (default): stop the job and keep it (retry can continue it);
    action=delete: stop it if it runs, then remove its record and files."""
    action = request.query.get("action", "cancel")
    if action == "cancel":
        job = await _act(request, "cancel")
        return json_model(_action(job, f"Job {job.job_id} cancelled successfully"))
    if action == "delete":
        job = await _job(request)
        await _manager(request).delete(job.job_id)
        return json_model(JobDeleted(success=True, message=f"Job {job.job_id} deleted successfully", job_id=job.job_id))
    raise InvalidInput(f"action must be cancel or delete, got {action!r}", param="action")


@api_route(
    routes, "PATCH", *with_v1("/audio/speech/long/{job_id}"),
    operation_id="updateLongTextJob", summary="Rename or tag a job", tag=TAG,
    body=UpdateRequest, responses={200: Reply("The job's status", JobAction)}, errors=(NotFound, *STORE_REFUSALS), path_params=JOB_ID,
)
async def update(request: web.Request) -> web.Response:
    body = parse(UpdateRequest, await read_json_object(request))
    await _job(request)
    tags = None if body.tags is None else [t.strip() for t in body.tags]
    job = await _manager(request).update_metadata(
        request.match_info["job_id"], display_name=body.display_name, tags=tags, is_archived=body.is_archived
    )
    return json_model(_action(job, "Job metadata updated successfully"))


def _sse_data(job_id: str, data: dict[str, Any]) -> JobProgressEvent:
    stage = data.get("status")
    return JobProgressEvent(
        job_id=job_id,
        status="pending" if stage == "queued" else "processing",
        stage=stage,
        current_step=data.get("current_step"),
        progress=data.get("progress_percentage"),
        current_chunk=data.get("current_chunk"),
        total_chunks=data.get("total_chunks"),
        estimated_completion=data.get("estimated_completion"),
    )


@api_route(
    routes, "GET", *with_v1("/audio/speech/long/{job_id}/sse"),
    operation_id="streamLongTextJob", summary="A job's progress as Server-Sent Events", tag=TAG,
    responses={
        200: Reply(
            "progress events, then completed, error, cancelled or paused",
            events=Events(
                {
                    "progress": (JobSnapshotEvent, JobProgressEvent),
                    **{name: JobEnded for name in ("completed", "error", "cancelled", "paused", "status")},
                }
            ),
        )
    },
    errors=(NotFound, TooManyStreams, *STORE_REFUSALS),
    path_params=JOB_ID,
)
async def job_sse(request: web.Request) -> web.StreamResponse:
    """``progress`` events while the job runs, then one ``completed``, ``error``, ``cancelled``
    or ``paused`` event when it stops; a job that is not running gets its final event at once."""
    core = request.app[CORE]
    job = await _job(request)
    subscription = core.bus.subscribe()
    try:
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        async with sse_response(request, headers=headers, ping_interval=core.settings.sse_ping_interval) as sse:
            view = _job_view(request, job)
            first = JobSnapshotEvent(
                job_id=job.job_id,
                status=job.status,
                progress=view.progress.overall_progress,
                current_chunk=job.current_chunk,
                total_chunks=job.total_chunks,
            )
            await sse.send(event_data(first), event="progress")
            running = _manager(request).is_running(job)
            while running and (event := await subscription.get()) is not None:
                if event.type not in ("status", "progress") or event.data.get("request_id") != job.job_id:
                    continue
                if event.data.get("status") in TERMINAL_STATUSES:
                    break
                await sse.send(event_data(_sse_data(job.job_id, event.data)), event="progress", id=str(event.id))
            job = await _job(request)
            final = JobEnded(job_id=job.job_id, status=job.status, message=job.error or f"Job {job.status}", download_url=_download_url(job))
            name = {"completed": "completed", "failed": "error", "cancelled": "cancelled", "paused": "paused"}.get(job.status, "status")
            await sse.send(event_data(final), event=name)
        return sse
    except ConnectionResetError:
        return web.Response()
    finally:
        core.bus.unsubscribe(subscription)


# -- wiring ---------------------------------------------------------------------


def setup(app: web.Application, config: LongTextConfig | None = None) -> None:
    """Add the routes and the job runner to an app built by create_app."""
    app.router.add_routes(routes)
    config = config or LongTextConfig.from_settings(app[CORE].settings)
    app[LONG_TEXT] = LongTextManager(app[CORE], config)
    app.cleanup_ctx.append(_run_long_text)


async def _run_long_text(app: web.Application) -> AsyncIterator[None]:
    manager = app[LONG_TEXT]
    await manager.start()
    yield
    await manager.stop()
