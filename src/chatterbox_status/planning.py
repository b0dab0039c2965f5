"""Request planning: a validated speech body becomes the job the pipeline runs.

Everything is checked here, before the queue, so bad input never reaches the engine and
never shows up in the statistics. Planning knows requests, voices and the engine's
abilities, not HTTP: the API, the ``say`` command and any other front door call it with
the limits that apply to them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import voices
from .config import Settings, parse_duration
from .engines import Catalog
from .engines.base import EngineDescription, SynthesisParams, Voice
from .exceptions import InvalidInput, NotFound
from .schemas.speech import LongTextRequest, SpeechRequest
from .text import Chunking, normalize
from .voices import VoiceLibrary

# A streamed response's first chunk is at most this long, so its first audio comes early.
FIRST_STREAMED_CHUNK_LENGTH = 100
# chatterbox-tts-api's streaming_quality without streaming_chunk_size: shorter chunks
# start sooner, longer ones give the model more context.
STREAMING_QUALITY_CHUNK_SIZES = {"fast": 100, "balanced": 200, "high": 300}
# chatterbox-tts-api's long-text quality_preset without chunk_size.
LONG_TEXT_QUALITY_CHUNK_SIZES = {"fast": 200, "balanced": 280, "high": 350}
# Seconds of speech a character of ordinary prose takes, for estimates (hibari: 0.06).
SPEECH_SECONDS_PER_CHAR = 0.06
# A job's silence between chunks may be as long as its speech, or this many seconds.
SILENCE_ALLOWANCE_SECONDS = 60.0


@dataclass(frozen=True)
class SpeechJob:
    """What a caller asks for, validated: the pipeline's input."""

    text: str  # as the client sent it: previews and lengths in the status API
    spoken: str  # normalised, what the engine speaks
    voice: Voice
    params: SynthesisParams
    response_format: str
    parameters_view: dict[str, Any]
    chunking: Chunking
    engine: str  # the engine the request's model chose
    # None for a whole file; "audio" or "sse" for a response streamed as chunks are made.
    stream_format: str | None = None
    # How long the engine stays loaded after this request (None: as it is).
    keep_alive: float | None = None


@dataclass(frozen=True)
class LongTextPlan:
    """A long-text job before it is stored: its speech plan and its chunks."""

    speech: SpeechJob
    chunks: list[str]
    silence_padding_ms: int

    @property
    def speech_seconds(self) -> float:
        """About how long its speech will be."""
        return len(self.speech.spoken) * SPEECH_SECONDS_PER_CHAR / self.speech.params.speed

    @property
    def silence_seconds(self) -> float:
        return max(len(self.chunks) - 1, 0) * self.silence_padding_ms / 1000.0

    @property
    def output_seconds(self) -> float:
        return self.speech_seconds + self.silence_seconds


class Planner:
    """Plans requests with the server's defaults, its voice library and its engines."""

    def __init__(
        self, settings: Settings, catalog: Catalog, engines: Mapping[str, EngineDescription], library: VoiceLibrary
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.engines = engines
        self.library = library

    @property
    def engine(self) -> EngineDescription:
        """The default engine."""
        return self.engines[self.catalog.default]

    def engine_for(self, model: str | None) -> str:
        """The engine a request's ``model`` chooses; an unknown name is a 400 that lists the known ones."""
        name = self.catalog.engine_for(model)
        if name is None:
            raise InvalidInput(
                f"model {model!r} is not one this server offers; known: {', '.join(self.catalog.model_names)} (see /v1/models)",
                param="model",
                code="model_not_found",
            )
        return name

    def resolve_voice(self, name: str, engine: str | None = None) -> Voice | None:
        """The voice a request names, or None. Engines that cannot clone speak with their
        own voice: VOICE_SAMPLE_PATH and a library default do not apply to them."""
        if not self.engines[engine or self.catalog.default].supports_cloning:
            return voices.resolve(name, None)
        return voices.resolve(name, self.settings.voice_sample_path, self.library)

    def voice(self, name: str, engine: str | None = None) -> Voice:
        voice = self.resolve_voice(name, engine)
        if voice is not None:
            return voice
        if self.library.get(name) is not None:
            raise InvalidInput(
                f"Voice {name!r} is a cloned voice, and engine {engine or self.catalog.default} cannot clone voices",
                param="voice",
                code="cloning_unsupported",
            )
        raise NotFound(f"Voice {name!r} not found", param="voice")

    def speech(self, body: SpeechRequest, max_length: int, default_stream_format: str | None = None) -> SpeechJob:
        """Check ``body`` against the limits and the engine its model chooses; ``max_length``
        counts the normalised text, which is what the engine speaks."""
        engine_name = self.engine_for(body.model)
        engine = self.engines[engine_name]
        spoken = spoken_text(body.input, max_length)
        settings = self.settings
        response_format = body.response_format or settings.default_response_format
        if body.language is not None and body.language.lower() not in engine.languages:
            raise InvalidInput(
                f"language {body.language!r} is not one engine {engine.name} speaks; see /languages",
                param="language",
            )
        keep_alive = None if body.keep_alive is None else parse_duration(body.keep_alive)
        voice = self.voice(body.voice, engine_name)
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
        chunking = streaming_chunking(body) if stream_format else Chunking(settings.max_chunk_length)
        return SpeechJob(body.input, spoken, voice, params, response_format, view, chunking, engine_name, stream_format, keep_alive)

    def long_text(self, body: LongTextRequest, max_length: int, default_padding_ms: int) -> LongTextPlan:
        """A long-text job's plan, chunks included (its store keeps them); blocking work
        for long inputs, so callers on the event loop run it in a thread."""
        if body.stream_format is not None:
            raise InvalidInput("stream_format does not apply to long-text jobs", param="stream_format")
        speech = self.speech(body, max_length)
        strategy = body.chunking_strategy or "sentence"
        size = body.chunk_size or (
            LONG_TEXT_QUALITY_CHUNK_SIZES[body.quality_preset] if body.quality_preset else self.settings.max_chunk_length
        )
        padding = default_padding_ms if body.silence_padding_ms is None else body.silence_padding_ms
        chunking = Chunking(size, strategy)
        speech = SpeechJob(
            speech.text,
            speech.spoken,
            speech.voice,
            speech.params,
            speech.response_format,
            {
                **speech.parameters_view,
                "chunk_size": size,
                "chunking_strategy": strategy,
                "silence_padding_ms": padding,
                # The job's store keeps these, for its runs after a restart.
                "engine": speech.engine,
                **({"keep_alive": speech.keep_alive} if speech.keep_alive is not None else {}),
            },
            chunking,
            speech.engine,
            keep_alive=speech.keep_alive,
        )
        plan = LongTextPlan(speech, chunking.plan(speech.spoken), padding)
        allowed = max(plan.speech_seconds, SILENCE_ALLOWANCE_SECONDS)
        if plan.silence_seconds > allowed:
            raise InvalidInput(
                f"{len(plan.chunks)} chunks with {padding} ms of silence between them would make {plan.silence_seconds:.0f} s "
                f"of silence around about {plan.speech_seconds:.0f} s of speech (at most {allowed:.0f} s); "
                "use a larger chunk_size or less silence_padding_ms",
                param="silence_padding_ms",
                code="output_too_long",
            )
        return plan


def spoken_text(text: str, max_length: int) -> str:
    """The normalised text, refused when it is empty, too long (as sent, or once
    normalised: NFKC may lengthen it), or not text at all."""
    if len(text) > max_length:
        raise InvalidInput(
            f"input is {len(text)} characters; the limit is {max_length}", param="input", code="input_too_long"
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput("input is not valid Unicode text (it holds a lone surrogate)", param="input") from None
    spoken = normalize(text)
    if not spoken:
        raise InvalidInput("input must contain text to speak", param="input")
    if len(spoken) > max_length:
        raise InvalidInput(
            f"input is {len(spoken)} characters once normalised; the limit is {max_length}",
            param="input",
            code="input_too_long",
        )
    return spoken


def streaming_chunking(body: SpeechRequest) -> Chunking:
    """Streams follow the streaming knobs and keep their first chunk short, so the first
    audio comes early."""
    size = body.streaming_chunk_size or STREAMING_QUALITY_CHUNK_SIZES[body.streaming_quality or "balanced"]
    return Chunking(size, body.streaming_strategy or "sentence", first_length=min(size, FIRST_STREAMED_CHUNK_LENGTH))
