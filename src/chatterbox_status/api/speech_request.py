"""The speech request: parsing, validation and planning, shared by every speech route.

Everything is checked here, before the queue: bad input never reaches the engine and
never shows up in the statistics.
"""

from __future__ import annotations

import json
import math
import re
import time
import uuid
from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .. import audio
from ..core import Core, SpeechJob
from ..engines.base import SynthesisParams
from ..errors import ApiError, bad_request, not_found
from ..text import STRATEGIES, Chunking, normalize

# A streamed response's first chunk is at most this long, so its first audio comes early.
FIRST_STREAMED_CHUNK_LENGTH = 100
# streaming_quality without streaming_chunk_size: shorter chunks start sooner, longer ones
# give the model more context.
QUALITY_CHUNK_SIZES = {"fast": 100, "balanced": 200, "high": 300}
REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{7,63}$")


class SpeechRequest(BaseModel):
    """OpenAI's speech body plus Chatterbox's parameters; unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore", strict=True)

    input: str
    model: Annotated[str, Field(max_length=200)] | None = None
    voice: Annotated[str, Field(min_length=1, max_length=200)] = "alloy"
    response_format: str | None = None
    speed: Annotated[float, Field(ge=0.25, le=4.0)] = 1.0
    instructions: Annotated[str, Field(max_length=4096)] | None = None
    stream_format: Literal["audio", "sse"] | None = None
    exaggeration: Annotated[float, Field(ge=0.25, le=2.0)] | None = None
    cfg_weight: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    temperature: Annotated[float, Field(ge=0.05, le=5.0)] | None = None
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)] | None = None
    repetition_penalty: Annotated[float, Field(ge=1.0, le=3.0)] | None = None
    min_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    # The multilingual engine's language_id, as /languages lists them.
    language: Annotated[str, Field(min_length=2, max_length=8)] | None = None
    # chatterbox-tts-api's streaming knobs; they shape the chunks of streamed responses.
    streaming_chunk_size: Annotated[int, Field(ge=50, le=500)] | None = None
    streaming_strategy: Literal[STRATEGIES] | None = None
    streaming_quality: Literal["fast", "balanced", "high"] | None = None


def _validation_error(exc: ValidationError) -> ApiError:
    first = exc.errors()[0]
    location = ".".join(str(part) for part in first["loc"]) or None
    message = first["msg"]
    if first["type"] == "missing":
        message = "Field required"
    return bad_request(f"{location}: {message}" if location else message, param=location)


SPEECH_FORM_FIELDS = frozenset(SpeechRequest.model_fields)


def parse_speech(raw: dict[str, Any]) -> SpeechRequest:
    """A JSON body: types must be JSON's own (no "0.5" for a number)."""
    try:
        return SpeechRequest.model_validate(raw)
    except ValidationError as exc:
        raise _validation_error(exc) from None


def parse_speech_form(fields: dict[str, str]) -> SpeechRequest:
    """A form: every value arrives as text, so numbers are parsed; empty fields mean unset."""
    try:
        return SpeechRequest.model_validate({k: v for k, v in fields.items() if v != ""}, strict=False)
    except ValidationError as exc:
        raise _validation_error(exc) from None


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object, or a 415/400/413 that says what is wrong with it."""
    if request.content_type != "application/json":
        raise ApiError(415, f"Content-Type must be application/json, got {request.content_type!r}")
    raw = await request.read()
    try:
        body = json.loads(raw, parse_constant=_reject_constant)
        # A lone surrogate escape ("\ud800") parses, but is no text: it could never be stored or spoken.
        json.dumps(body, ensure_ascii=False).encode()
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


def chunking_for(body: SpeechRequest, max_chunk_length: int, stream_format: str | None) -> Chunking:
    """Whole files use MAX_CHUNK_LENGTH and sentences; streams follow the streaming knobs
    and keep their first chunk short, so the first audio comes early."""
    if stream_format is None:
        return Chunking(max_chunk_length)
    size = body.streaming_chunk_size or QUALITY_CHUNK_SIZES[body.streaming_quality or "balanced"]
    return Chunking(size, body.streaming_strategy or "sentence", first_length=min(size, FIRST_STREAMED_CHUNK_LENGTH))


def plan_speech(body: SpeechRequest, core: Core, default_stream_format: str | None = None) -> SpeechJob:
    """Check the request against the settings and the engine; the job the pipeline will run."""
    settings = core.settings
    if not normalize(body.input):
        raise bad_request("input must contain text to speak", param="input")
    if len(body.input) > settings.max_total_length:
        raise bad_request(
            f"input is {len(body.input)} characters; the limit is {settings.max_total_length}",
            param="input",
            code="input_too_long",
        )
    response_format = body.response_format or settings.default_response_format
    if response_format not in audio.FORMATS:
        raise bad_request(
            f"response_format {response_format!r} is not supported; use one of {', '.join(audio.FORMATS)}",
            param="response_format",
        )
    if body.language is not None and body.language.lower() not in core.engine.languages:
        raise bad_request(
            f"language {body.language!r} is not one engine {core.engine.name} speaks; see /languages",
            param="language",
        )
    voice = core.resolve_voice(body.voice)
    if voice is None:
        if core.voices.get(body.voice) is not None:
            raise bad_request(
                f"Voice {body.voice!r} is a cloned voice, and engine {core.engine.name} cannot clone voices",
                param="voice",
                code="cloning_unsupported",
            )
        raise not_found(f"Voice {body.voice!r} not found", param="voice")
    params = SynthesisParams(
        exaggeration=settings.exaggeration if body.exaggeration is None else body.exaggeration,
        cfg_weight=settings.cfg_weight if body.cfg_weight is None else body.cfg_weight,
        temperature=settings.temperature if body.temperature is None else body.temperature,
        speed=body.speed,
        seed=body.seed,
        repetition_penalty=body.repetition_penalty,
        min_p=body.min_p,
        top_p=body.top_p,
        language=body.language.lower() if body.language else None,
    )
    view = {
        "exaggeration": params.exaggeration,
        "cfg_weight": params.cfg_weight,
        "temperature": params.temperature,
        "speed": params.speed,
        "seed": params.seed,
        **{name: value for name in ("repetition_penalty", "min_p", "top_p", "language") if (value := getattr(params, name))},
        "voice": body.voice,
        "response_format": response_format,
    }
    stream_format = body.stream_format or default_stream_format
    chunking = chunking_for(body, settings.max_chunk_length, stream_format)
    return SpeechJob(body.input, voice, params, response_format, view, chunking, stream_format)


def retry_after(core: Core) -> str:
    """Seconds until the queue should have room: the head's estimated completion."""
    queue = core.tracker.queue_view()["requests"]
    eta = queue[0]["estimated_completion"] if queue else None
    return str(max(1, math.ceil(eta - time.time())) if eta else 1)


