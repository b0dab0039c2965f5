"""Long-text jobs (chatterbox-tts-api's /audio/speech/long routes, with and without /v1).

POST /audio/speech/long answers at once with the job id and its plan; the job runs in the
background (see longtext.manager) and is polled, streamed (SSE), paused, resumed,
cancelled, retried, renamed, downloaded (with Range) and deleted through the routes below.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from aiohttp import web
from aiohttp_sse import sse_response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .. import audio
from ..errors import ApiError, bad_request, not_found
from ..longtext.config import LongTextConfig
from ..longtext.manager import JobConflict, JobNotFound, LongTextManager, QuotaExceeded
from ..longtext.store import (
    COMPLETED,
    FAILED,
    FINISHED,
    JOB_STATUSES,
    PAUSED,
    RUNNABLE,
    ChunkRecord,
    JobRecord,
)
from ..pipeline import preview
from ..state import CORE
from ..text import STRATEGIES, Chunking, normalize
from ..tracker import TERMINAL_STATUSES
from .files import FileDownload
from .params import query_bool, query_int
from .speech_request import (
    SpeechRequest,
    _validation_error,
    plan_speech,
    read_json_object,
)

LONG_TEXT = web.AppKey("long_text", LongTextManager)
routes = web.RouteTableDef()
PREFIXES = ("", "/v1")
QUALITY_CHUNK_SIZES = {"fast": 200, "balanced": 280, "high": 350}


def route(method: str, path: str):
    def register(handler):
        for prefix in PREFIXES:
            routes.route(method, prefix + path)(handler)
        return handler

    return register


# -- bodies ---------------------------------------------------------------------


class LongTextRequest(SpeechRequest):
    """The speech fields plus chatterbox-tts-api's long-text ones."""

    response_format: str = "mp3"
    session_id: Annotated[str, Field(max_length=200)] | None = None
    chunking_strategy: Literal[STRATEGIES] | None = None
    quality_preset: Literal["fast", "balanced", "high"] | None = None
    chunk_size: Annotated[int, Field(ge=20, le=1000)] | None = None
    silence_padding_ms: Annotated[int, Field(ge=0, le=10_000)] | None = None
    display_name: Annotated[str, Field(max_length=200)] | None = None


class UpdateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    display_name: Annotated[str, Field(max_length=200)] | None = None
    tags: Annotated[list[Annotated[str, Field(max_length=50)]], Field(max_length=20)] | None = None
    is_archived: bool | None = None


class RetryRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    preserve_chunks: bool = True


class BulkRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    job_ids: Annotated[list[str], Field(min_length=1, max_length=100)]
    action: Literal["delete", "retry", "cancel", "pause", "resume"]
    confirm: bool


def _parse(model: type[BaseModel], raw: dict[str, Any]) -> Any:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise _validation_error(exc) from None


async def _optional_json(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    return await read_json_object(request)


# -- views ----------------------------------------------------------------------


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, timezone.utc).isoformat()


def _manager(request: web.Request) -> LongTextManager:
    return request.app[LONG_TEXT]


async def _job(request: web.Request) -> JobRecord:
    try:
        return await _manager(request).get(request.match_info["job_id"])
    except JobNotFound as exc:
        raise not_found(str(exc), param="job_id") from None


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


def _chunk_view(chunk: ChunkRecord) -> dict[str, Any]:
    return {
        "index": chunk.index,
        "text": chunk.text,
        "text_preview": chunk.text[:50],
        "character_count": len(chunk.text),
        "status": "completed" if chunk.done else ("processing" if chunk.started_at and not chunk.error else "pending"),
        "audio_file": f"chunks/{chunk.index:05d}.npy" if chunk.done else None,
        "duration_ms": chunk.duration_ms,
        "processing_started_at": _iso(chunk.started_at),
        "processing_completed_at": _iso(chunk.completed_at),
        "error": chunk.error,
    }


def _download_url(job: JobRecord) -> str | None:
    return f"/audio/speech/long/{job.job_id}/download" if job.status == COMPLETED else None


def _metadata(job: JobRecord) -> dict[str, Any]:
    return {
        "job_id": job.job_id,
        "created_at": _iso(job.created_at),
        "updated_at": _iso(job.updated_at),
        "status": job.status,
        "text_length": job.text_length,
        "total_chunks": job.total_chunks,
        "completed_chunks": job.completed_chunks,
        "current_chunk": job.current_chunk,
        "voice": job.voice,
        "parameters": job.parameters,
        "processing_started_at": _iso(job.processing_started_at),
        "processing_paused_at": _iso(job.processing_paused_at),
        "processing_completed_at": _iso(job.processing_completed_at),
        "total_processing_time_ms": job.total_processing_time_ms,
        "output_format": job.output_format,
        "output_path": job.output_path,
        "output_size_bytes": job.output_size_bytes,
        "output_duration_seconds": job.output_duration_seconds,
        "error": job.error,
        "user_session_id": job.session_id,
        "completion_timestamp": _iso(job.processing_completed_at) if job.status == COMPLETED else None,
        "audio_file_size": job.output_size_bytes,
        "total_duration_seconds": job.output_duration_seconds,
        "retry_count": job.retry_count,
        "silence_padding_ms": job.silence_padding_ms,
        "display_name": job.display_name,
        "tags": job.tags,
        "last_accessed": _iso(job.last_accessed),
    }


def _capabilities(job: JobRecord) -> dict[str, bool]:
    return {
        "can_pause": job.status in RUNNABLE,
        "can_resume": job.status == PAUSED,
        "can_cancel": job.status not in FINISHED,
    }


def _job_view(request: web.Request, job: JobRecord) -> dict[str, Any]:
    overall, remaining = _live(request, job)
    return {
        "job_id": job.job_id,
        "status": job.status,
        "progress": {
            "job_id": job.job_id,
            "overall_progress": overall,
            "current_chunk": job.current_chunk,
            "completed_chunks": job.completed_chunks,
            "total_chunks": job.total_chunks,
            "estimated_remaining_seconds": remaining,
            "status": job.status,
            "error": job.error,
        },
        "metadata": _metadata(job),
        "created_at": _iso(job.created_at),
        "updated_at": _iso(job.updated_at),
        "download_url": _download_url(job),
        **_capabilities(job),
    }


def _list_item(request: web.Request, job: JobRecord) -> dict[str, Any]:
    overall, remaining = _live(request, job)
    return {
        "job_id": job.job_id,
        "status": job.status,
        "text_preview": preview(job.text),
        "text_length": job.text_length,
        "progress_percentage": overall,
        "created_at": _iso(job.created_at),
        "completed_at": _iso(job.processing_completed_at) if job.status == COMPLETED else None,
        "download_url": _download_url(job),
        "can_resume": job.status == PAUSED,
        "voice": job.voice,
        "estimated_remaining_seconds": remaining,
        "total_duration_seconds": job.output_duration_seconds,
        "audio_file_size": job.output_size_bytes,
        "retry_count": job.retry_count,
        "is_archived": False,
        "display_name": job.display_name,
        "tags": job.tags,
        "last_accessed": _iso(job.last_accessed),
        "parameters": job.parameters,
        "total_chunks": job.total_chunks,
        "completed_chunks": job.completed_chunks,
    }


def _action(job: JobRecord, message: str) -> web.Response:
    return web.json_response({"success": True, "message": message, "status": job.status, "job_id": job.job_id})


def _created(request: web.Request, job: JobRecord, message: str) -> dict[str, Any]:
    spc = request.app[CORE].tracker.seconds_per_char
    remaining = job.text_length * (1 - job.completed_chunks / max(job.total_chunks, 1))
    return {
        "job_id": job.job_id,
        "status": job.status,
        "message": message,
        "estimated_processing_time_seconds": None if spc is None else int(round(remaining * spc)),
        "total_chunks": job.total_chunks,
        "status_url": f"/audio/speech/long/{job.job_id}",
        "sse_url": f"/audio/speech/long/{job.job_id}/sse",
    }


# -- routes ---------------------------------------------------------------------
# Fixed paths go before /{job_id}, so "history" and "bulk" are never taken for job ids.


@route("GET", "/audio/speech/long-history/stats")
async def history_stats(request: web.Request) -> web.Response:
    jobs = await _manager(request).all_jobs()
    completed = [j for j in jobs if j.status == COMPLETED]
    failed = [j for j in jobs if j.status == FAILED]
    voices: dict[str, int] = {}
    months: dict[str, int] = {}
    for job in jobs:
        voices[job.voice] = voices.get(job.voice, 0) + 1
        month = datetime.fromtimestamp(job.created_at, timezone.utc).strftime("%Y-%m")
        months[month] = months.get(month, 0) + 1
    ended = len(completed) + len(failed)
    return web.json_response(
        {
            "total_jobs": len(jobs),
            "completed_jobs": len(completed),
            "failed_jobs": len(failed),
            "total_audio_duration_seconds": round(sum(j.output_duration_seconds or 0.0 for j in completed), 3),
            "total_storage_bytes": sum(j.output_size_bytes or 0 for j in completed),
            "average_processing_time_seconds": round(
                sum(j.total_processing_time_ms for j in completed) / 1000 / len(completed), 3
            )
            if completed
            else 0.0,
            "success_rate_percentage": round(100.0 * len(completed) / ended, 1) if ended else 0.0,
            "most_used_voice": max(voices, key=voices.get) if voices else None,
            "jobs_by_month": months,
        }
    )


async def _job_list(request: web.Request, default_limit: int) -> web.Response:
    status = request.query.get("status") or None
    if status is not None and status not in JOB_STATUSES:
        raise bad_request(f"status must be one of {', '.join(JOB_STATUSES)}, got {status!r}", param="status")
    limit = query_int(request, "limit", default_limit, 1, 100)
    offset = query_int(request, "offset", 0, 0, 1_000_000_000)
    manager = _manager(request)
    jobs, matching = await manager.list(status, limit, offset)
    counts = await manager.counts()
    return web.json_response(
        {
            "jobs": [_list_item(request, j) for j in jobs],
            "total_jobs": sum(counts.values()),
            "matching_jobs": matching,
            "active_jobs": sum(counts.get(s, 0) for s in RUNNABLE),
            "completed_jobs": counts.get(COMPLETED, 0),
            "limit": limit,
            "offset": offset,
        }
    )


@route("GET", "/audio/speech/long-history")
async def history(request: web.Request) -> web.Response:
    return await _job_list(request, 50)


@route("DELETE", "/audio/speech/long/history")
async def clear_history(request: web.Request) -> web.Response:
    if not query_bool(request, "confirm"):
        raise bad_request("History clearing requires confirmation (confirm=true)", param="confirm")
    cleared = await _manager(request).clear_history()
    return web.json_response({"message": f"Cleared {cleared} jobs from history", "cleared_count": cleared, "failed_count": 0})


@route("POST", "/audio/speech/long/bulk")
async def bulk(request: web.Request) -> web.Response:
    body = _parse(BulkRequest, await read_json_object(request))
    if not body.confirm:
        raise bad_request("Bulk operations require confirmation (confirm: true)", param="confirm")
    manager = _manager(request)
    action = {"delete": manager.delete, "retry": manager.retry, "cancel": manager.cancel, "pause": manager.pause, "resume": manager.resume}[body.action]
    failed: list[str] = []
    for job_id in body.job_ids:
        try:
            await action(job_id)
        except (JobNotFound, JobConflict):
            failed.append(job_id)
    total = len(body.job_ids)
    done = total - len(failed)
    return web.json_response(
        {
            "success_count": done,
            "failed_count": len(failed),
            "total_count": total,
            "failed_jobs": failed,
            "message": f"Bulk {body.action}: {done}/{total} successful",
        }
    )


@route("POST", "/audio/speech/long")
async def create_job(request: web.Request) -> web.Response:
    core = request.app[CORE]
    manager = _manager(request)
    body = _parse(LongTextRequest, await read_json_object(request))
    if body.stream_format is not None:
        raise bad_request("stream_format does not apply to long-text jobs", param="stream_format")
    if not normalize(body.input):
        raise bad_request("input must contain text to speak", param="input")
    limit = manager.config.max_length
    if len(body.input) > limit:
        raise bad_request(
            f"input is {len(body.input)} characters; the limit is {limit} (LONG_TEXT_MAX_LENGTH)",
            param="input",
            code="input_too_long",
        )
    # The speech checks (format, language, voice, parameters), with the long-text length limit.
    speech = plan_speech(body, _WithSettings(core, dataclasses.replace(core.settings, max_total_length=max(limit, 1))))
    if core.worker.load_error is not None:
        raise ApiError(503, core.worker.load_error, code="engine_unavailable")
    size = body.chunk_size or (QUALITY_CHUNK_SIZES[body.quality_preset] if body.quality_preset else core.settings.max_chunk_length)
    chunking = Chunking(size, body.chunking_strategy or "sentence")
    chunks = await asyncio.to_thread(lambda: chunking.plan(normalize(body.input)))  # up to 100k characters: off the loop
    padding = manager.config.silence_padding_ms if body.silence_padding_ms is None else body.silence_padding_ms
    parameters = {**speech.parameters_view, "chunk_size": size, "chunking_strategy": body.chunking_strategy or "sentence", "silence_padding_ms": padding}
    try:
        job = await manager.create(
            body.input, chunks, body.voice, parameters, speech.params, body.response_format, padding,
            session_id=body.session_id, display_name=body.display_name,
        )
    except QuotaExceeded as exc:
        raise ApiError(507, str(exc), code="disk_quota_exceeded") from None
    return web.json_response(_created(request, job, "Job submitted for processing"), status=200)


class _WithSettings:
    """The core as plan_speech sees it, with other settings."""

    def __init__(self, core: Any, settings: Any) -> None:
        self._core = core
        self.settings = settings

    def __getattr__(self, name: str) -> Any:
        return getattr(self._core, name)


@route("GET", "/audio/speech/long")
async def list_jobs(request: web.Request) -> web.Response:
    return await _job_list(request, 20)


@route("GET", "/audio/speech/long/{job_id}")
async def job_status(request: web.Request) -> web.Response:
    return web.json_response(_job_view(request, await _job(request)))


@route("GET", "/audio/speech/long/{job_id}/details")
async def job_details(request: web.Request) -> web.Response:
    job = await _job(request)
    manager = _manager(request)
    chunks = await manager.chunks(job.job_id)
    await manager.touch(job.job_id)
    done = [c for c in chunks if c.done]
    return web.json_response(
        {
            "metadata": _metadata(job),
            "chunks": [_chunk_view(c) for c in chunks],
            "input_text": job.text,
            "error_log": [job.error] if job.error else [],
            "performance_metrics": {
                "total_processing_time_ms": job.total_processing_time_ms,
                "avg_chunk_time_ms": job.total_processing_time_ms / len(done) if done else 0,
                "success_rate": len(done) / len(chunks) if chunks else 0,
            },
        }
    )


@route("GET", "/audio/speech/long/{job_id}/download")
async def download(request: web.Request) -> web.StreamResponse:
    job = await _job(request)
    if job.status != COMPLETED:
        raise ApiError(409, f"Job is not completed (status: {job.status})", code="job_not_completed")
    manager = _manager(request)
    path = manager.root / "jobs" / job.job_id / (job.output_path or "")
    if not job.output_path or not path.is_file():
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
    manager = _manager(request)
    job_id = request.match_info["job_id"]
    try:
        return await getattr(manager, verb)(job_id)
    except JobNotFound as exc:
        raise not_found(str(exc), param="job_id") from None
    except JobConflict as exc:
        raise ApiError(409, str(exc), code="invalid_job_state") from None


@route("PUT", "/audio/speech/long/{job_id}/pause")
async def pause(request: web.Request) -> web.Response:
    job = await _act(request, "pause")
    return _action(job, f"Job {job.job_id} paused successfully")


@route("PUT", "/audio/speech/long/{job_id}/resume")
async def resume(request: web.Request) -> web.Response:
    job = await _act(request, "resume")
    return _action(job, f"Job {job.job_id} resumed successfully")


@route("POST", "/audio/speech/long/{job_id}/retry")
async def retry(request: web.Request) -> web.Response:
    body = _parse(RetryRequest, await _optional_json(request))
    if not body.preserve_chunks:
        raise bad_request("preserve_chunks=false is not supported: a retry continues from the last finished chunk", param="preserve_chunks")
    job = await _act(request, "retry")
    return web.json_response(_created(request, job, f"Job resumed from chunk {job.completed_chunks + 1} (retry #{job.retry_count})"))


@route("DELETE", "/audio/speech/long/{job_id}")
async def cancel_or_delete(request: web.Request) -> web.Response:
    """action=cancel (default): stop the job and keep it (retry can continue it);
    action=delete: stop it if it runs, then remove its record and files."""
    action = request.query.get("action", "cancel")
    if action == "cancel":
        job = await _act(request, "cancel")
        return _action(job, f"Job {job.job_id} cancelled successfully")
    if action == "delete":
        job = await _job(request)
        await _manager(request).delete(job.job_id)
        return web.json_response({"success": True, "message": f"Job {job.job_id} deleted successfully", "job_id": job.job_id})
    raise bad_request(f"action must be cancel or delete, got {action!r}", param="action")


@route("PATCH", "/audio/speech/long/{job_id}")
async def update(request: web.Request) -> web.Response:
    body = _parse(UpdateRequest, await read_json_object(request))
    await _job(request)
    tags = None if body.tags is None else [t.strip() for t in body.tags]
    job = await _manager(request).update_metadata(request.match_info["job_id"], display_name=body.display_name, tags=tags)
    return _action(job, "Job metadata updated successfully")


def _sse_data(job_id: str, data: dict[str, Any]) -> dict[str, Any]:
    stage = data.get("status")
    return {
        "job_id": job_id,
        "status": "pending" if stage == "queued" else "processing",
        "stage": stage,
        "current_step": data.get("current_step"),
        "progress": data.get("progress_percentage"),
        "current_chunk": data.get("current_chunk"),
        "total_chunks": data.get("total_chunks"),
        "estimated_completion": data.get("estimated_completion"),
    }


@route("GET", "/audio/speech/long/{job_id}/sse")
async def job_sse(request: web.Request) -> web.StreamResponse:
    """``progress`` events while the job runs, then one ``completed``, ``error``, ``cancelled``
    or ``paused`` event when it stops; a job that is not running gets its final event at once."""
    core = request.app[CORE]
    job = await _job(request)
    subscription = core.bus.subscribe()
    try:
        async with sse_response(request, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}, ping_interval=core.settings.sse_ping_interval) as sse:
            view = _job_view(request, job)
            await sse.send(json.dumps({"job_id": job.job_id, "status": job.status, "progress": view["progress"]["overall_progress"], "current_chunk": job.current_chunk, "total_chunks": job.total_chunks}), event="progress")
            running = _manager(request).is_running(job.job_id)
            while running and (event := await subscription.get()) is not None:
                if event.type not in ("status", "progress") or event.data.get("request_id") != job.job_id:
                    continue
                if event.data.get("status") in TERMINAL_STATUSES:
                    break
                await sse.send(json.dumps(_sse_data(job.job_id, event.data)), event="progress", id=str(event.id))
            job = await _job(request)
            final = {"job_id": job.job_id, "status": job.status, "message": job.error or f"Job {job.status}", "download_url": _download_url(job)}
            name = {"completed": "completed", "failed": "error", "cancelled": "cancelled", "paused": "paused"}.get(job.status, "status")
            await sse.send(json.dumps(final), event=name)
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
