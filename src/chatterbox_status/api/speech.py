"""The speech routes: whole files, streamed audio, OpenAI's SSE events, and cancellation.

POST /v1/audio/speech (aliases /audio/speech, /tts), POST /v1/audio/speech/stream
(aliases /audio/speech/stream, /tts/stream) and DELETE /v1/audio/speech/{request_id}.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web
from aiohttp_sse import sse_response

from .. import audio, voices
from ..core import Core, SpeechJob
from ..engines.base import Cancelled, EngineError, Voice
from ..errors import ApiError, bad_request, error_body, not_found
from ..state import CORE
from ..worker import EngineUnavailable, Job, QueueFull, ShuttingDown
from .forms import read_form
from .params import aliased
from .speech_request import (
    SPEECH_FORM_FIELDS,
    parse_speech,
    parse_speech_form,
    plan_speech,
    read_json_object,
    request_id_from,
    retry_after,
)

routes = web.RouteTableDef()


@aliased(routes, "POST", "/v1/audio/speech", "/audio/speech", "/tts")
async def create_speech(request: web.Request) -> web.StreamResponse:
    """The whole file, or a stream when ``stream_format`` asks for one."""
    return await speak(request, default_stream_format=None)


@aliased(routes, "POST", "/v1/audio/speech/stream", "/audio/speech/stream", "/tts/stream")
async def create_speech_stream(request: web.Request) -> web.StreamResponse:
    """Audio streamed as each chunk is generated (chatterbox-tts-api's streaming route)."""
    return await speak(request, default_stream_format="audio")


@aliased(routes, "POST", "/v1/audio/speech/upload", "/audio/speech/upload", "/tts/upload")
async def create_speech_upload(request: web.Request) -> web.StreamResponse:
    """The speech fields as a multipart form, with an optional ``voice_file`` to clone once."""
    return await speak_form(request, default_stream_format=None)


@aliased(routes, "POST", "/v1/audio/speech/stream/upload", "/audio/speech/stream/upload", "/tts/stream/upload")
async def create_speech_stream_upload(request: web.Request) -> web.StreamResponse:
    """The upload form, streamed as each chunk is generated."""
    return await speak_form(request, default_stream_format="audio")


async def speak_form(request: web.Request, default_stream_format: str | None) -> web.StreamResponse:
    """A form request; its voice clip lives in a temporary file exactly as long as the request."""
    core = request.app[CORE]
    form = await read_form(request, SPEECH_FORM_FIELDS, "voice_file", voices.MAX_UPLOAD_BYTES)
    speech = plan_speech(parse_speech_form(form.fields), core, default_stream_format)
    if form.data is None:
        return await run_speech(request, core, speech)
    if not core.engine.supports_cloning:
        raise bad_request(
            f"Engine {core.engine.name} cannot clone voices, so it cannot use voice_file",
            param="voice_file",
            code="cloning_unsupported",
        )
    try:
        clip = await voices.inspect_upload(form.data, form.filename)
    except voices.InvalidAudio as exc:
        raise bad_request(str(exc), param="voice_file", code=exc.code) from None
    path = await asyncio.to_thread(_temporary_clip, form.data, clip.extension)
    speech = dataclasses.replace(speech, voice=Voice(source="upload", path=str(path)))
    return await run_speech(request, core, speech, temporary_files=[path])


def _temporary_clip(data: bytes, extension: str) -> Path:
    """The uploaded clip in a file of its own (blocking: run it off the loop)."""
    handle, name = tempfile.mkstemp(prefix="chatterbox-status-voice-", suffix=f".{extension}")
    with os.fdopen(handle, "wb") as out:
        out.write(data)
    return Path(name)


async def speak(request: web.Request, default_stream_format: str | None) -> web.StreamResponse:
    core = request.app[CORE]
    speech = plan_speech(parse_speech(await read_json_object(request)), core, default_stream_format)
    return await run_speech(request, core, speech)


async def run_speech(
    request: web.Request, core: Core, speech: SpeechJob, temporary_files: Sequence[Path] = ()
) -> web.StreamResponse:
    """Queue the job and answer with its audio; the job owns ``temporary_files`` once queued."""
    try:
        job = queue_job(request, core, speech, temporary_files)
    except BaseException:
        for path in temporary_files:
            path.unlink(missing_ok=True)
        raise
    send = {None: send_file, "audio": send_audio_stream, "sse": send_sse_stream}[speech.stream_format]
    try:
        return await send(request, job)
    except (asyncio.CancelledError, ConnectionResetError):
        # The client went away: its request stops too, and frees the engine.
        job.result.cancel()
        core.cancel(job.request_id)
        raise


def queue_job(request: web.Request, core: Core, speech: SpeechJob, temporary_files: Sequence[Path]) -> Job:
    if core.worker.load_error is not None:
        raise ApiError(503, core.worker.load_error, code="engine_unavailable")
    try:
        return core.submit(request_id_from(request, core), speech, list(temporary_files))
    except QueueFull:
        raise ApiError(
            429,
            f"The queue is full ({core.worker.queue.maxsize} requests waiting); try again later",
            code="queue_full",
            headers={"Retry-After": retry_after(core)},
        ) from None
    except ShuttingDown:
        raise ApiError(503, "The server is shutting down", code="shutting_down") from None


def _job_error(job: Job, exc: BaseException) -> ApiError:
    headers = {"X-Request-ID": job.request_id}
    if isinstance(exc, Cancelled):
        return ApiError(409, f"Request {job.request_id} was cancelled", code="cancelled", headers=headers)
    if isinstance(exc, EngineUnavailable):
        return ApiError(503, str(exc), code="engine_unavailable", headers=headers)
    return ApiError(500, str(exc), code="generation_failed", headers=headers)


async def send_file(request: web.Request, job: Job) -> web.Response:
    try:
        data = await job.result
    except (Cancelled, EngineUnavailable, EngineError) as exc:
        raise _job_error(job, exc) from None
    return web.Response(
        body=data,
        content_type=audio.CONTENT_TYPES[job.response_format],
        headers={
            "X-Request-ID": job.request_id,
            "Content-Disposition": f'attachment; filename="speech.{job.response_format}"',
        },
    )


async def send_audio_stream(request: web.Request, job: Job) -> web.StreamResponse:
    """Chunked audio as it is encoded; a failure aborts the transfer, so it cannot pass for whole."""
    assert job.stream is not None
    response = web.StreamResponse(
        headers={
            "Content-Type": audio.CONTENT_TYPES[job.response_format],
            "X-Request-ID": job.request_id,
            "Content-Disposition": f'attachment; filename="speech.{job.response_format}"',
        }
    )
    response.enable_chunked_encoding()
    await response.prepare(request)
    while (data := await job.stream.get()) is not None:
        await response.write(data)
    try:
        await job.result
    except (Cancelled, EngineUnavailable, EngineError):
        if request.transport is not None:
            request.transport.abort()
        return response
    await response.write_eof()
    return response


async def send_sse_stream(request: web.Request, job: Job) -> web.StreamResponse:
    """OpenAI's speech events: ``speech.audio.delta`` per piece, then ``speech.audio.done``."""
    assert job.stream is not None
    async with sse_response(
        request, headers={"X-Request-ID": job.request_id, "Cache-Control": "no-cache"}, allow_all_methods=True
    ) as sse:
        while (data := await job.stream.get()) is not None:
            delta = {"type": "speech.audio.delta", "audio": base64.b64encode(data).decode("ascii")}
            await sse.send(json.dumps(delta), event="speech.audio.delta")
        try:
            await job.result
        except (Cancelled, EngineUnavailable, EngineError) as exc:
            error = _job_error(job, exc)
            body = error_body(error.status, error.message, code=error.code)
            await sse.send(json.dumps({"type": "error", **body}), event="error")
        else:
            characters = len(job.text)
            usage = {"input_tokens": characters, "output_tokens": 0, "total_tokens": characters}
            await sse.send(json.dumps({"type": "speech.audio.done", "usage": usage}), event="speech.audio.done")
    return sse


@aliased(routes, "DELETE", "/v1/audio/speech/{request_id}", "/audio/speech/{request_id}", "/tts/{request_id}")
async def cancel_speech(request: web.Request) -> web.Response:
    core = request.app[CORE]
    request_id = request.match_info["request_id"]
    if not core.cancel(request_id):
        record = core.tracker.find(request_id)
        if record is None:
            raise not_found(f"Request {request_id!r} not found", param="request_id")
        raise ApiError(409, f"Request {request_id} already ended as {record.status}", code="already_finished")
    return web.json_response({"request_id": request_id, "cancelled": True, "status": core.tracker.find(request_id).status})
