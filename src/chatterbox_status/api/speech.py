"""The speech routes: whole files, streamed audio, OpenAI's SSE events, and cancellation.

POST /v1/audio/speech (aliases /audio/speech, /tts), POST /v1/audio/speech/stream
(aliases /audio/speech/stream, /tts/stream) and DELETE /v1/audio/speech/{request_id}.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web
from aiohttp_sse import sse_response

from .. import audio, voices
from ..core import Core
from ..engines.base import Voice
from ..errors import error_body, from_refusal
from ..exceptions import Conflict, EngineError, InvalidInput, NotFound, QueueFull, Refusal, Unavailable
from ..pipeline import Job
from ..planning import SpeechJob
from ..schemas.speech import AudioDelta, AudioDone, SpeechCancelled, SpeechFailed, SpeechRequest, Usage
from ..state import CORE, SETTINGS
from .bodies import REQUEST_ID_PATTERN, parse, parse_form, read_json_object, request_id_from
from .forms import read_form
from .routing import Events, Form, Json, Param, Reply, api_route, event_data, json_model

routes = web.RouteTableDef()

SPEECH_DESCRIPTION = (
    "The whole audio file in the asked format, or, with `stream_format`, the audio as it is generated: "
    "`audio` sends the file with chunked transfer (a failure midway aborts the transfer), `sse` sends OpenAI's "
    "`speech.audio.delta` events (base64 audio) and a final `speech.audio.done` with `usage`, or an `error` event."
)
SPEECH_REPLY = Reply(
    SPEECH_DESCRIPTION,
    media=tuple(dict.fromkeys(audio.CONTENT_TYPES.values())),
    events=Events({"speech.audio.delta": AudioDelta, "speech.audio.done": AudioDone, "error": SpeechFailed}),
    headers={"X-Request-ID": "The id of the speech request"},
)
X_REQUEST_ID = Param(
    "X-Request-ID",
    {"type": "string", "pattern": REQUEST_ID_PATTERN.pattern},
    "The id this request should get (8-64 letters, digits, '.', '_', '-'), e.g. to watch it from its first "
    "moment; 409 if the id is in use. The server picks one when it is absent.",
    where="header",
)
# Every refusal a speech request may hear, as whole file or stream.
SPEECH_ERRORS = (InvalidInput, NotFound, Conflict, QueueFull, Unavailable)


def _input_limit(app: web.Application) -> int:
    return app[SETTINGS].max_total_length


SPEECH_JSON = Json(SpeechRequest, input_limit=_input_limit)
SPEECH_FORM = Form(
    SpeechRequest,
    "The speech fields as a form; `voice_file` (optional) is a clip to clone for this request only.",
    file=("voice_file", "A voice clip to clone (1-60 s)"),
    as_text=True,
    input_limit=_input_limit,
)
STREAMED = "`stream_format` defaults to `audio` here."


@api_route(
    routes, "POST", "/v1/audio/speech", "/audio/speech", "/tts",
    summary="Generate speech (OpenAI's speech API)",
    tag="speech",
    body=SPEECH_JSON,
    responses={200: SPEECH_REPLY},
    errors=(*SPEECH_ERRORS, EngineError),
    params=(X_REQUEST_ID,),
)
async def create_speech(request: web.Request) -> web.StreamResponse:
    """The whole file, or a stream when ``stream_format`` asks for one."""
    return await speak(request, default_stream_format=None)


@api_route(
    routes, "POST", "/v1/audio/speech/stream", "/audio/speech/stream", "/tts/stream",
    summary="Generate speech, streamed as it is generated",
    description=STREAMED,
    tag="speech",
    body=SPEECH_JSON,
    responses={200: SPEECH_REPLY},
    errors=SPEECH_ERRORS,
    params=(X_REQUEST_ID,),
)
async def create_speech_stream(request: web.Request) -> web.StreamResponse:
    """Audio streamed as each chunk is generated (chatterbox-tts-api's streaming route)."""
    return await speak(request, default_stream_format="audio")


@api_route(
    routes, "POST", "/v1/audio/speech/upload", "/audio/speech/upload", "/tts/upload",
    summary="Generate speech from a form, optionally cloning an uploaded voice clip",
    tag="speech",
    body=SPEECH_FORM,
    responses={200: SPEECH_REPLY},
    errors=(*SPEECH_ERRORS, EngineError),
    params=(X_REQUEST_ID,),
)
async def create_speech_upload(request: web.Request) -> web.StreamResponse:
    """The speech fields as a multipart form, with an optional ``voice_file`` to clone once."""
    return await speak_form(request, default_stream_format=None)


@api_route(
    routes, "POST", "/v1/audio/speech/stream/upload", "/audio/speech/stream/upload", "/tts/stream/upload",
    summary="The upload form, streamed as it is generated",
    description=STREAMED,
    tag="speech",
    body=SPEECH_FORM,
    responses={200: SPEECH_REPLY},
    errors=SPEECH_ERRORS,
    params=(X_REQUEST_ID,),
)
async def create_speech_stream_upload(request: web.Request) -> web.StreamResponse:
    """The upload form, streamed as each chunk is generated."""
    return await speak_form(request, default_stream_format="audio")


async def speak_form(request: web.Request, default_stream_format: str | None) -> web.StreamResponse:
    """A form request; its voice clip lives in a temporary file exactly as long as the request."""
    core = request.app[CORE]
    form = await read_form(request, frozenset(SpeechRequest.model_fields), "voice_file", voices.MAX_UPLOAD_BYTES)
    speech = _plan(core, parse_form(SpeechRequest, form.fields), default_stream_format)
    if form.data is None:
        return await run_speech(request, core, speech)
    engine = core.planner.engines[speech.engine]
    if not engine.supports_cloning:
        raise InvalidInput(
            f"Engine {engine.name} cannot clone voices, so it cannot use voice_file",
            param="voice_file",
            code="cloning_unsupported",
        )
    try:
        clip = await voices.inspect_upload(form.data, form.filename)
    except voices.InvalidAudio as exc:
        raise InvalidInput(str(exc), param="voice_file", code=exc.code) from None
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
    speech = _plan(core, parse(SpeechRequest, await read_json_object(request)), default_stream_format)
    return await run_speech(request, core, speech)


def _plan(core: Core, body: SpeechRequest, default_stream_format: str | None) -> SpeechJob:
    return core.planner.speech(body, core.settings.max_total_length, default_stream_format)


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
        return await send(request, job, speech.response_format)
    except (asyncio.CancelledError, ConnectionResetError):
        # The client went away: its request stops too, and frees the engine.
        job.result.cancel()
        core.cancel(job.request_id)
        raise


def queue_job(request: web.Request, core: Core, speech: SpeechJob, temporary_files: Sequence[Path]) -> Job:
    return core.submit(request_id_from(request, core), speech, list(temporary_files))


def _job_error(job: Job, exc: Refusal):
    return from_refusal(exc, headers={"X-Request-ID": job.request_id})


async def send_file(request: web.Request, job: Job, response_format: str) -> web.Response:
    try:
        data = await job.result
    except Refusal as exc:
        raise _job_error(job, exc) from None
    return web.Response(
        body=data,
        content_type=audio.CONTENT_TYPES[response_format],
        headers={
            "X-Request-ID": job.request_id,
            "Content-Disposition": f'attachment; filename="speech.{response_format}"',
        },
    )


async def send_audio_stream(request: web.Request, job: Job, response_format: str) -> web.StreamResponse:
    """Chunked audio as it is encoded; a failure aborts the transfer, so it cannot pass for whole."""
    assert job.stream is not None
    response = web.StreamResponse(
        headers={
            "Content-Type": audio.CONTENT_TYPES[response_format],
            "X-Request-ID": job.request_id,
            "Content-Disposition": f'attachment; filename="speech.{response_format}"',
        }
    )
    response.enable_chunked_encoding()
    await response.prepare(request)
    while (data := await job.stream.get()) is not None:
        await response.write(data)
    try:
        await job.result
    except Refusal:
        if request.transport is not None:
            request.transport.abort()
        return response
    await response.write_eof()
    return response


async def send_sse_stream(request: web.Request, job: Job, response_format: str) -> web.StreamResponse:
    """OpenAI's speech events: ``speech.audio.delta`` per piece, then ``speech.audio.done``."""
    assert job.stream is not None
    async with sse_response(
        request, headers={"X-Request-ID": job.request_id, "Cache-Control": "no-cache"}, allow_all_methods=True
    ) as sse:
        while (data := await job.stream.get()) is not None:
            delta = AudioDelta(type="speech.audio.delta", audio=base64.b64encode(data).decode("ascii"))
            await sse.send(event_data(delta), event="speech.audio.delta")
        try:
            await job.result
        except Refusal as exc:
            failed = SpeechFailed.model_validate({"type": "error", **error_body(_job_error(job, exc))})
            await sse.send(event_data(failed), event="error")
        else:
            characters = len(job.text)
            usage = Usage(input_tokens=characters, output_tokens=0, total_tokens=characters)
            done = AudioDone(type="speech.audio.done", usage=usage)
            await sse.send(event_data(done), event="speech.audio.done")
    return sse


@api_route(
    routes, "DELETE", "/v1/audio/speech/{request_id}", "/audio/speech/{request_id}", "/tts/{request_id}",
    summary="Cancel a queued or running speech request",
    tag="speech",
    responses={200: SpeechCancelled},
    errors=(NotFound, Conflict),
    path_params={"request_id": "The speech request's id"},
)
async def cancel_speech(request: web.Request) -> web.Response:
    core = request.app[CORE]
    request_id = request.match_info["request_id"]
    if not core.cancel(request_id):
        record = core.tracker.find(request_id)
        if record is None:
            raise NotFound(f"Request {request_id!r} not found", param="request_id")
        raise Conflict(f"Request {request_id} already ended as {record.status}", code="already_finished")
    record = core.tracker.find(request_id)
    assert record is not None  # cancelling keeps the record
    return json_model(SpeechCancelled(request_id=request_id, cancelled=True, status=record.status))
