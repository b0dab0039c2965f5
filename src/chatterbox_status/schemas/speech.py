"""The speech bodies: OpenAI's fields, Chatterbox's parameters and chatterbox-tts-api's
streaming and long-text knobs."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator

from ..audio import FORMATS
from ..config import parse_duration
from ..text import STRATEGIES
from . import Body
from .errors import ErrorDetail
from .status import Count, RecordStatus

ResponseFormat = Literal[FORMATS]  # type: ignore[valid-type]
ChunkingStrategy = Literal[STRATEGIES]  # type: ignore[valid-type]
Quality = Literal["fast", "balanced", "high"]


_VOICE_NAME_SCHEMA = {"type": "string", "minLength": 1, "maxLength": 200}
# A voice's name; OpenAI's object form {"id": NAME} is read as the name.
VoiceName = Annotated[
    str,
    Field(min_length=1, max_length=200),
    WithJsonSchema(
        {
            "anyOf": [
                _VOICE_NAME_SCHEMA,
                {"type": "object", "properties": {"id": _VOICE_NAME_SCHEMA}, "required": ["id"]},
            ]
        }
    ),
]


class SpeechRequest(BaseModel):
    """OpenAI's speech body plus Chatterbox's parameters; unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore", strict=True)

    input: str = Field(description="The text to speak")
    model: Annotated[str, Field(max_length=200)] | None = Field(
        None,
        description="The engine that speaks: an engine name (chatterbox, chatterbox-turbo, chatterbox-multilingual, hibari) "
        "or a name MODEL_ALIASES maps to one; OpenAI's tts-1, tts-1-hd and gpt-4o-mini-tts choose the default engine "
        "unless mapped. Absent: the default engine. Unknown: a 400 listing the known names (see /v1/models)",
    )
    keep_alive: float | Annotated[str, Field(max_length=32)] | None = Field(
        None,
        description="How long the engine stays loaded after this request, as ollama takes it: seconds, or 30s, 5m, 1h; "
        "0 unloads it at once, a negative value keeps it for ever. Absent: as it is (MODEL_KEEP_ALIVE to begin with)",
    )
    voice: VoiceName = Field(
        "alloy",
        description="An OpenAI voice name or 'default' (the default voice), or a voice of the library (404 if unknown); "
        'as a string or, as OpenAI also takes it, an object {"id": NAME}',
    )
    response_format: ResponseFormat | None = Field(
        None, description="Audio format; DEFAULT_RESPONSE_FORMAT when absent"
    )
    speed: Annotated[float, Field(ge=0.25, le=4.0)] = 1.0
    instructions: Annotated[str, Field(max_length=4096)] | None = Field(None, description="Accepted, not used")
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
    streaming_strategy: ChunkingStrategy | None = None
    streaming_quality: Quality | None = None

    @field_validator("keep_alive")
    @classmethod
    def _duration(cls, value: float | str | None) -> float | str | None:
        if value is not None:
            parse_duration(value)  # raises ValueError: a 400 naming the field
        return value

    @field_validator("voice", mode="before")
    @classmethod
    def _voice_object(cls, value: Any) -> Any:
        """OpenAI's {"id": NAME} means NAME; anything else is checked as a name."""
        if isinstance(value, dict) and isinstance(value.get("id"), str):
            return value["id"]
        return value


class LongTextRequest(SpeechRequest):
    """The speech fields plus chatterbox-tts-api's long-text ones."""

    response_format: ResponseFormat = "mp3"
    session_id: Annotated[str, Field(max_length=200)] | None = None
    chunking_strategy: ChunkingStrategy | None = None
    quality_preset: Quality | None = None
    chunk_size: Annotated[int, Field(ge=20, le=1000)] | None = None
    silence_padding_ms: Annotated[int, Field(ge=0, le=10_000)] | None = None
    display_name: Annotated[str, Field(max_length=200)] | None = None


# -- responses ----------------------------------------------------------------------------


class SpeechCancelled(Body):
    """The request is cancelled; its speech call answers 409."""

    request_id: str
    cancelled: Literal[True]
    status: RecordStatus


class AudioDelta(Body):
    type: Literal["speech.audio.delta"]
    audio: str = Field(description="The next piece of the encoded audio", json_schema_extra={"contentEncoding": "base64"})


class Usage(Body):
    input_tokens: Count = Field(description="Input characters")
    output_tokens: Count
    total_tokens: Count


class AudioDone(Body):
    type: Literal["speech.audio.done"]
    usage: Usage


class SpeechFailed(Body):
    """Generation failed midway: the error body, as the whole-file call would answer."""

    type: Literal["error"]
    error: ErrorDetail
