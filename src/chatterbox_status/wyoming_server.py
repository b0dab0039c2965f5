"""Home Assistant's Wyoming protocol beside HTTP: a front door like ``api/``.

It knows the protocol (through the ``wyoming`` package) and nothing of engines: each
utterance is planned by ``core.planner`` and queued with ``core.submit`` as a streamed
``pcm`` job, so it shares the queue, the events and the status API with HTTP requests,
and its audio goes out as each chunk is generated. A client that hangs up cancels it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

from pydantic import ValidationError
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Attribution, Describe, Info, TtsProgram, TtsVoice
from wyoming.server import AsyncEventHandler, AsyncTcpServer
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeStopped, SynthesizeVoice

from . import __version__
from .core import Core
from .errors import kind_of
from .exceptions import Refusal
from .pipeline import Job
from .schemas import first_problem
from .schemas.speech import SpeechRequest
from .text import complete_sentences, split_by_strategy

log = logging.getLogger(__name__)

PROGRAM = "chatterbox-status"
ATTRIBUTION = Attribution(name="Resemble AI (Chatterbox), chatterbox-status", url="https://github.com/resemble-ai/chatterbox")
# 16-bit mono PCM, as the "pcm" response format gives it.
SAMPLE_WIDTH = 2
CHANNELS = 1
# Audio events of about this many samples, as wyoming-piper sends them.
SAMPLES_PER_EVENT = 1024


def describe(core: Core) -> Info:
    """This server's TTS program: the default voice in every language the engine speaks,
    then each library voice (usable when the engine clones voices)."""
    voices = [
        TtsVoice(
            name="default",
            attribution=ATTRIBUTION,
            installed=True,
            description=f"The default voice of engine {core.engine.name}",
            version=None,
            languages=list(core.engine.languages),
        )
    ]
    for entry in core.voices.voices():
        voices.append(
            TtsVoice(
                name=entry.name,
                attribution=ATTRIBUTION,
                installed=core.engine.supports_cloning,
                description=f"Library voice {entry.name}",
                version=None,
                languages=[entry.language],
            )
        )
    program = TtsProgram(
        name=PROGRAM,
        attribution=ATTRIBUTION,
        installed=True,
        description=f"Chatterbox TTS server, engine {core.engine.name}",
        version=__version__,
        voices=voices,
        supports_synthesize_streaming=True,
    )
    return Info(tts=[program])


def _refusal_event(exc: Exception) -> Event:
    if isinstance(exc, Refusal):
        return Error(text=exc.message, code=exc.code or kind_of(exc).type).event()
    if isinstance(exc, ValidationError):
        return Error(text=first_problem(exc)[1], code="invalid_request_error").event()
    return Error(text=str(exc) or type(exc).__name__, code="server_error").event()


class Utterance:
    """One answer to a client: its jobs spoken in order, their audio sent as it comes,
    between one audio-start and one audio-stop (then synthesize-stopped, when streamed)."""

    def __init__(self, handler: WyomingHandler, voice: SynthesizeVoice | None, streamed: bool) -> None:
        self.handler = handler
        self.core = handler.core
        self.voice = voice
        self.streamed = streamed
        self.jobs: list[Job] = []
        self.aborted = False
        self._pending: asyncio.Queue[Job | None] = asyncio.Queue()
        self.task = asyncio.create_task(self._send())

    def say(self, text: str) -> None:
        """Plan and queue ``text``; a refusal (bad voice, full queue) raises here."""
        assert not self.aborted
        name = self.voice.name if self.voice is not None and self.voice.name else "default"
        language = self.voice.language if self.voice is not None and not self.voice.name else None
        body = SpeechRequest.model_validate(
            {"input": text, "voice": name, "language": self._language(language), "response_format": "pcm"}
        )
        speech = self.core.planner.speech(body, self.core.settings.max_total_length, default_stream_format="audio")
        job = self.core.submit(f"wyoming-{os.urandom(6).hex()}", speech)
        self.jobs.append(job)
        self._pending.put_nowait(job)

    def _language(self, language: str | None) -> str | None:
        """Home Assistant sends en_US or en-US; the engine's languages are codes such as en."""
        if language is None:
            return None
        code = language.replace("_", "-").lower()
        return code if code in self.core.engine.languages else code.partition("-")[0]

    def close(self) -> None:
        """No more text: the answer ends once the queued jobs have spoken."""
        self._pending.put_nowait(None)

    def abort(self) -> None:
        """The client is gone or the answer was refused: nothing more is sent."""
        self.aborted = True
        self.task.cancel()
        self._cancel_jobs()

    def _cancel_jobs(self) -> None:
        """Unfinished jobs end cancelled, as an HTTP request's do when its client leaves."""
        for job in self.jobs:
            if not job.result.done():
                job.result.cancel()
                self.core.cancel(job.request_id)

    async def _send(self) -> None:
        write = self.handler.write_event
        started = False
        try:
            while (job := await self._pending.get()) is not None:
                assert job.stream is not None
                while (pcm := await job.stream.get()) is not None:
                    if not started:
                        await write(self._start().event())
                        started = True
                    for piece in self._pieces(pcm):
                        await write(piece.event())
                await job.result
            if not started:
                await write(self._start().event())
            await write(AudioStop().event())
            if self.streamed:
                await write(SynthesizeStopped().event())
        except Refusal as exc:  # a job failed or was cancelled: the rest would not make sense
            self._cancel_jobs()
            with contextlib.suppress(ConnectionError):
                await write(_refusal_event(exc))
        except ConnectionError:  # the client is gone
            self._cancel_jobs()

    def _start(self) -> AudioStart:
        return AudioStart(rate=self.core.engine.sample_rate, width=SAMPLE_WIDTH, channels=CHANNELS)

    def _pieces(self, pcm: bytes) -> list[AudioChunk]:
        rate = self.core.engine.sample_rate
        size = SAMPLES_PER_EVENT * SAMPLE_WIDTH * CHANNELS
        return [
            AudioChunk(rate=rate, width=SAMPLE_WIDTH, channels=CHANNELS, audio=pcm[offset : offset + size])
            for offset in range(0, len(pcm), size)
        ]


class WyomingHandler(AsyncEventHandler):
    """One client connection. Events are read while audio is sent, so a hang-up is seen
    at once and cancels the request."""

    def __init__(self, core: Core, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super().__init__(reader, writer)
        self.core = core
        self.current: Utterance | None = None
        self.text = ""  # streamed text not yet a whole sentence
        self.streaming = False

    async def handle_event(self, event: Event) -> bool:
        if Describe.is_type(event.type):
            await self.write_event(describe(self.core).event())
        elif Synthesize.is_type(event.type):
            # During a stream, Home Assistant also sends the whole text for older servers.
            if not self.streaming:
                synthesize = Synthesize.from_event(event)
                utterance = await self._begin(synthesize.voice, streamed=False)
                if await self._say(utterance, synthesize.text):
                    utterance.close()
        elif SynthesizeStart.is_type(event.type):
            self.current = await self._begin(SynthesizeStart.from_event(event).voice, streamed=True)
            self.streaming = True
            self.text = ""
        elif SynthesizeChunk.is_type(event.type) and self.streaming:
            sentences, self.text = complete_sentences(self.text + SynthesizeChunk.from_event(event).text)
            if sentences and self.current is not None and not self.current.aborted:
                await self._say(self.current, sentences)
            limit = self.core.settings.max_total_length
            if len(self.text) > limit and self.current is not None:
                # No sentence end in MAX_TOTAL_LENGTH characters: speak what came, in pieces
                # the limit allows, rather than hold (and split again at every chunk) a text
                # that grows without bound. The last piece waits for more words.
                gap = " " if self.text[-1:].isspace() else ""  # the next chunk starts a new word
                *full, last = split_by_strategy(self.text, limit, "word")
                self.text = last + gap
                for piece in full:
                    if self.current.aborted or not await self._say(self.current, piece):
                        break
        elif SynthesizeStop.is_type(event.type) and self.streaming:
            self.streaming = False
            if self.current is not None and not self.current.aborted:
                if not self.text.strip() or await self._say(self.current, self.text):
                    self.current.close()
        return True

    async def _begin(self, voice: SynthesizeVoice | None, streamed: bool) -> Utterance:
        """A new answer, after the one before it has been sent."""
        if self.current is not None:
            await asyncio.wait([self.current.task])
        self.current = Utterance(self, voice, streamed)
        return self.current

    async def _say(self, utterance: Utterance, text: str) -> bool:
        """Queue text; a refusal ends the answer with a Wyoming error event."""
        try:
            utterance.say(text)
        except (Refusal, ValidationError) as exc:
            utterance.abort()
            await self.write_event(_refusal_event(exc))
            return False
        return True

    async def disconnect(self) -> None:
        if self.current is not None:
            self.current.abort()


class WyomingServer:
    """The TCP server, started and stopped with the app."""

    def __init__(self, core: Core, host: str, port: int) -> None:
        self.core = core
        self.server = AsyncTcpServer(host, port)

    async def start(self) -> None:
        await self.server.start(lambda reader, writer: WyomingHandler(self.core, reader, writer))
        log.info("Wyoming protocol on tcp://%s:%d", self.server.host, self.server.port)

    async def stop(self) -> None:
        await self.server.stop()
