"""POST /v1/audio/speech (aliases /audio/speech, /tts) and cancellation of a request.

The body is OpenAI's, plus Chatterbox's knobs. Everything is validated here, before the
queue: bad input never reaches the engine and never shows up in the statistics.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import re
import time
import uuid
from typing import Annotated, Any, Literal

from aiohttp import web
from aiohttp_sse import sse_response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .. import audio, voices
from ..engines.base import Cancelled, EngineError, SynthesisParams
from ..core import Core, SpeechJob
from ..errors import ApiError, bad_request, error_body, not_found
from ..state import CORE
from ..text import normalize
from ..worker import EngineUnavailable, Job, QueueFull, ShuttingDown
from .params import aliased

routes = web.RouteTableDef()

REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{7,63}$")


class SpeechRequest(BaseModel):
    """OpenAI's speech body plus Chatterbox's parameters; unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore", strict=True)

    input: str
    model: Annotated[str, Field(max_length=200)] | None = None
    voice: Annotated[str, Field(min_length=1, max_length=200)] = "alloy"
    response_format: str = "wav"
    speed: Annotated[float, Field(ge=0.25, le=4.0)] = 1.0
    instructions: Annotated[str, Field(max_length=4096)] | None = None
    stream_format: Literal["audio", "sse"] | None = None
    exaggeration: Annotated[float, Field(ge=0.25, le=2.0)] | None = None
    cfg_weight: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    temperature: Annotated[float, Field(ge=0.05, le=5.0)] | None = None
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)] | None = None


def _validation_error(exc: ValidationError) -> ApiError:
    first = exc.errors()[0]
    location = ".".join(str(part) for part in first["loc"]) or None
    message = first["msg"]
    if first["type"] == "missing":
        message = "Field required"
    return bad_request(f"{location}: {message}" if location else message, param=location)


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object, or a 415/400/413 that says what is wrong with it."""
    if request.content_type != "application/json":
        raise ApiError(415, f"Content-Type must be application/json, got {request.content_type!r}")
    raw = await request.read()
    try:
        body = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise bad_request(f"Request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise bad_request("Request body must be a JSON object")
    return body


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


def request_id_from(request: web.Request, core: Core) -> str:
    """The client's X-Request-ID when it is well formed and unused, else a fresh one."""
    chosen = request.headers.get("X-Request-ID")
    if chosen is None:
        return uuid.uuid4().hex[:12]
    if not REQUEST_ID_PATTERN.match(chosen):
        raise bad_request(
            "X-Request-ID must be 8 to 64 characters of letters, digits, '.', '_' or '-'", param="X-Request-ID"
        )
    if core.tracker.find(chosen) is not None:
        raise ApiError(409, f"Request id {chosen!r} is already in use", param="X-Request-ID", code="duplicate_request_id")
    return chosen


def plan_speech(body: SpeechRequest, core: Core) -> SpeechJob:
    """Check the request against the settings and the engine; the job the pipeline will run."""
    settings, engine = core.settings, core.engine
    if not normalize(body.input):
        raise bad_request("input must contain text to speak", param="input")
    if len(body.input) > settings.max_total_length:
        raise bad_request(
            f"input is {len(body.input)} characters; the limit is {settings.max_total_length}",
            param="input",
            code="input_too_long",
        )
    if body.response_format not in audio.FORMATS:
        raise bad_request(
            f"response_format {body.response_format!r} is not supported; use one of {', '.join(audio.FORMATS)}",
            param="response_format",
        )
    voice = voices.resolve(body.voice, core.default_voice_path)
    if voice is None:
        raise not_found(f"Voice {body.voice!r} not found", param="voice")
    params = SynthesisParams(
        exaggeration=settings.exaggeration if body.exaggeration is None else body.exaggeration,
        cfg_weight=settings.cfg_weight if body.cfg_weight is None else body.cfg_weight,
        temperature=settings.temperature if body.temperature is None else body.temperature,
        speed=body.speed,
        seed=body.seed,
    )
    view = {
        "exaggeration": params.exaggeration,
        "cfg_weight": params.cfg_weight,
        "temperature": params.temperature,
        "speed": params.speed,
        "seed": params.seed,
        "voice": body.voice,
        "response_format": body.response_format,
    }
    return SpeechJob(body.input, voice, params, body.response_format, view)


def retry_after(core: Core) -> str:
    """Seconds until the queue should have room: the head's estimated completion."""
    queue = core.tracker.queue_view()["requests"]
    eta = queue[0]["estimated_completion"] if queue else None
    return str(max(1, math.ceil(eta - time.time())) if eta else 1)


@aliased(routes, "POST", "/v1/audio/speech", "/audio/speech", "/tts")
async def create_speech(request: web.Request) -> web.StreamResponse:
    """The whole file, or a stream when ``stream_format`` asks for one."""
    return await speak(request, default_stream_format=None)


@aliased(routes, "POST", "/v1/audio/speech/stream", "/audio/speech/stream", "/tts/stream")
async def create_speech_stream(request: web.Request) -> web.StreamResponse:
    """Audio streamed as each chunk is generated (chatterbox-tts-api's streaming route)."""
    return await speak(request, default_stream_format="audio")


async def speak(request: web.Request, default_stream_format: str | None) -> web.StreamResponse:
    core = request.app[CORE]
    raw = await read_json_object(request)
    try:
        body = SpeechRequest.model_validate(raw)
    except ValidationError as exc:
        raise _validation_error(exc) from None
    speech = plan_speech(body, core)
    stream_format = body.stream_format or default_stream_format
    if core.worker.load_error is not None:
        raise ApiError(503, core.worker.load_error, code="engine_unavailable")
    request_id = request_id_from(request, core)
    try:
        job = core.submit(request_id, speech, streamed=stream_format is not None)
    except QueueFull:
        raise ApiError(
            429,
            f"The queue is full ({core.worker.queue.maxsize} requests waiting); try again later",
            code="queue_full",
            headers={"Retry-After": retry_after(core)},
        ) from None
    except ShuttingDown:
        raise ApiError(503, "The server is shutting down", code="shutting_down") from None
    send = {None: send_file, "audio": send_audio_stream, "sse": send_sse_stream}[stream_format]
    try:
        return await send(request, job)
    except (asyncio.CancelledError, ConnectionResetError):
        # The client went away: its request stops too, and frees the engine.
        job.result.cancel()
        core.cancel(request_id)
        raise


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
