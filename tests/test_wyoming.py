"""Home Assistant's Wyoming protocol, driven by the wyoming package's own client over TCP.

The embedded voice (hibari) speaks in most tests; a scripted engine, held between chunks,
shows what must happen while a request is still generating.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys

import aiohttp
import numpy as np
import pytest
from conftest import core_of
from helpers import clean_environ, free_port, start_serve, stop, wait_healthy, wav_tone
from wyoming.audio import AudioChunk, AudioStart
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Describe, Info
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeStopped, SynthesizeVoice

TEXT = "The kettle is on. Tea will be ready in five minutes."
# Long enough for several chunks: a streamed job's first chunk is at most 100 characters.
LONG_TEXT = (
    "The kettle is on and the cups are out on the table by the window. "
    "Tea will be ready in about five minutes, so there is time to find the biscuits. "
    "The blue tin on the top shelf has the ginger ones, and the red tin has the rest. "
    "Bring both, because the neighbours are coming over this afternoon."
)


async def wyoming_client(make_client, **overrides):
    """An app with the Wyoming server on a free port, and a function that connects to it."""
    port = free_port()
    http = await make_client(wyoming_port=port, **overrides)

    def connect() -> AsyncTcpClient:
        return AsyncTcpClient("127.0.0.1", port)

    return http, connect


async def read_until(client: AsyncTcpClient, *types: str, timeout: float = 60) -> list[Event]:
    """Every event up to and including the first of one of ``types`` (or an error)."""
    events: list[Event] = []
    while True:
        event = await asyncio.wait_for(client.read_event(), timeout)
        assert event is not None, f"the server hung up after {[e.type for e in events]}"
        events.append(event)
        if event.type in types or Error.is_type(event.type):
            return events


def speech_of(events: list[Event]) -> tuple[AudioStart, np.ndarray]:
    """The audio-start and the samples of an answer, checking its events' order."""
    kinds = [e.type for e in events]
    assert kinds[0] == "audio-start" and "audio-stop" in kinds, kinds
    stop = kinds.index("audio-stop")
    assert set(kinds[1:stop]) == {"audio-chunk"}, kinds
    start = AudioStart.from_event(events[0])
    chunks = [AudioChunk.from_event(e) for e in events[1:stop]]
    assert all((c.rate, c.width, c.channels) == (start.rate, start.width, start.channels) for c in chunks)
    return start, np.frombuffer(b"".join(c.audio for c in chunks), dtype="<i2")


def assert_speech(start: AudioStart, samples: np.ndarray, text: str, rate: int) -> None:
    """Non-silent 16-bit mono at the engine's rate, about as long as the text needs."""
    assert (start.rate, start.width, start.channels) == (rate, 2, 1)
    seconds = len(samples) / rate
    assert 0.02 * len(text) < seconds < 0.2 * len(text), seconds
    rms = float(np.sqrt(np.mean((samples.astype(np.float64) / 32768) ** 2)))
    assert rms > 0.01, rms


def statuses(client) -> dict[str, list[str]]:
    """Each request's statuses in bus order, from now on."""
    seen: dict[str, list[str]] = {}

    def listen(event) -> None:
        if event.type == "status":
            seen.setdefault(event.data["request_id"], []).append(event.data["status"])

    core_of(client).bus.add_listener(listen)
    return seen


async def until_status(client, request_id: str, status: str, timeout: float = 30) -> None:
    """Wait (on bus events, no polling) until the request reaches ``status``."""
    core = core_of(client)
    reached = asyncio.Event()
    core.bus.add_listener(
        lambda e: reached.set() if e.data.get("request_id") == request_id and e.data.get("status") == status else None
    )
    record = core.tracker.find(request_id)
    if record is None or record.status != status:
        await asyncio.wait_for(reached.wait(), timeout)


async def test_describe_lists_the_program_its_voices_and_streaming(make_client):
    http, connect = await wyoming_client(make_client)
    form = aiohttp.FormData({"voice_name": "Narrator", "language": "fr"})
    form.add_field("voice_file", wav_tone(1.5), filename="narrator.wav")
    upload = await http.post("/voices", data=form)
    assert upload.status == 201
    async with connect() as client:
        await client.write_event(Describe().event())
        (event,) = await read_until(client, "info")
    info = Info.from_event(event)
    (program,) = info.tts
    assert program.name == "chatterbox-status" and program.installed
    assert program.supports_synthesize_streaming
    voices = {voice.name: voice for voice in program.voices}
    assert voices["default"].languages == ["en"] and voices["default"].installed
    # hibari cannot clone, so the library voice is listed but not usable here.
    assert voices["Narrator"].languages == ["fr"] and not voices["Narrator"].installed


async def test_synthesize_speaks_through_the_queue_and_the_status_api(make_client):
    http, connect = await wyoming_client(make_client)
    seen = statuses(http)
    async with connect() as client:
        await client.write_event(Synthesize(text=TEXT, voice=SynthesizeVoice(name="default")).event())
        events = await read_until(client, "audio-stop")
    start, samples = speech_of(events)
    assert_speech(start, samples, TEXT, core_of(http).engine.sample_rate)

    (request_id,) = seen
    assert request_id.startswith("wyoming-")
    await until_status(http, request_id, "completed")
    history = (await (await http.get("/status/history")).json())["request_history"]
    (record,) = [r for r in history if r["request_id"] == request_id]
    assert record["status"] == "completed" and record["voice_source"] == "default"
    assert record["text_length"] == len(TEXT) and record["parameters"]["response_format"] == "pcm"
    stats = await (await http.get("/status/statistics")).json()
    assert (stats["total_requests"], stats["completed_requests"]) == (1, 1)


async def test_the_language_asked_for_is_honoured(make_client):
    http, connect = await wyoming_client(make_client)
    async with connect() as client:
        await client.write_event(Synthesize(text=TEXT, voice=SynthesizeVoice(language="en_US")).event())
        start, samples = speech_of(await read_until(client, "audio-stop"))
        assert_speech(start, samples, TEXT, core_of(http).engine.sample_rate)
        await client.write_event(Synthesize(text=TEXT, voice=SynthesizeVoice(language="de")).event())
        (event,) = await read_until(client, "audio-stop")
    error = Error.from_event(event)
    assert "language 'de'" in error.text and error.code == "invalid_request_error"


async def test_a_long_text_sends_audio_while_it_is_still_generating(make_client):
    """Its first audio-chunk comes while the request is still generating_audio."""
    http, connect = await wyoming_client(make_client)
    seen = statuses(http)
    async with connect() as client:
        await client.write_event(Synthesize(text=LONG_TEXT).event())
        head = await read_until(client, "audio-chunk")
        (request_id,) = seen
        status_at_first_chunk = seen[request_id][-1]
        events = head + await read_until(client, "audio-stop")
    assert status_at_first_chunk == "generating_audio", seen
    start, samples = speech_of(events)
    assert_speech(start, samples, LONG_TEXT, core_of(http).engine.sample_rate)


async def test_first_audio_arrives_before_the_last_chunk_is_made(make_client, scripted):
    """With the engine held after its first chunk, that chunk's audio already reaches the client."""
    http, connect = await wyoming_client(make_client, engine=scripted)
    scripted.hold()
    async with connect() as client:
        await client.write_event(Synthesize(text=LONG_TEXT).event())
        first = await asyncio.to_thread(scripted.wait_started)
        scripted.release()
        head = await read_until(client, "audio-chunk")
        second = await asyncio.to_thread(scripted.wait_started)  # held: the rest is not made yet
        assert AudioStart.is_type(head[0].type) and AudioChunk.is_type(head[-1].type)
        scripted.release(10)
        events = head + await read_until(client, "audio-stop")
    _, samples = speech_of(events)
    assert first != second and len(samples) > len(scripted.tone(first))


async def test_the_streaming_form_speaks_from_the_first_sentence(make_client, scripted):
    """synthesize-start / chunks / stop: the first sentence is generated before the rest of
    the text has even been sent, and the answer ends with synthesize-stopped."""
    http, connect = await wyoming_client(make_client, engine=scripted)
    seen = statuses(http)
    async with connect() as client:
        await client.write_event(SynthesizeStart(voice=SynthesizeVoice(name="alloy")).event())
        for piece in ("The kettle ", "is on. Tea", " will be "):
            await client.write_event(SynthesizeChunk(text=piece).event())
        # Only the complete sentence is spoken so far; its audio comes while the LLM still writes.
        head = await read_until(client, "audio-chunk")
        assert scripted.calls[-1] == "The kettle is on."
        await client.write_event(SynthesizeChunk(text="ready soon.").event())
        # Home Assistant also sends the whole text for servers that do not stream: ignored.
        await client.write_event(Synthesize(text="The kettle is on. Tea will be ready soon.").event())
        await client.write_event(SynthesizeStop().event())
        events = head + await read_until(client, "synthesize-stopped")
    kinds = [e.type for e in events]
    assert kinds[-2:] == ["audio-stop", "synthesize-stopped"] and kinds.count("audio-start") == 1
    _, samples = speech_of(events[:-1])
    spoken = [call for call in scripted.calls if call in ("The kettle is on.", "Tea will be ready soon.")]
    assert spoken == ["The kettle is on.", "Tea will be ready soon."]
    expected = len(scripted.tone("The kettle is on.")) + len(scripted.tone("Tea will be ready soon."))
    assert len(samples) == expected
    assert all(rid.startswith("wyoming-") and states[-1] == "completed" for rid, states in seen.items())
    assert len(seen) == 2


async def test_a_streamed_text_with_no_sentence_end_is_spoken_at_the_length_limit(make_client, scripted):
    """A client that streams words and never ends a sentence is not held in memory without
    bound: at MAX_TOTAL_LENGTH characters what came is spoken, before synthesize-stop."""
    http, connect = await wyoming_client(make_client, engine=scripted, max_total_length=100)
    async with connect() as client:
        await client.write_event(SynthesizeStart().event())
        for _ in range(30):
            await client.write_event(SynthesizeChunk(text="words without end ").event())
        head = await read_until(client, "audio-chunk")  # before synthesize-stop was sent
        await client.write_event(SynthesizeStop().event())
        events = head + await read_until(client, "synthesize-stopped")
    assert not any(Error.is_type(e.type) for e in events)
    spoken = [call for call in scripted.calls if set(call.split()) <= {"words", "without", "end"}]
    assert len(spoken) >= 5 and all(len(call) <= 100 for call in spoken), scripted.calls
    assert " ".join(spoken).split() == ("words without end " * 30).split()


async def test_the_streaming_form_on_the_embedded_voice(make_client):
    http, connect = await wyoming_client(make_client)
    async with connect() as client:
        await client.write_event(SynthesizeStart().event())
        for word in TEXT.split(" "):
            await client.write_event(SynthesizeChunk(text=word + " ").event())
        await client.write_event(SynthesizeStop().event())
        events = await read_until(client, "synthesize-stopped")
    assert events[-1].type == SynthesizeStopped().event().type
    start, samples = speech_of(events[:-1])
    assert_speech(start, samples, TEXT, core_of(http).engine.sample_rate)


@pytest.mark.parametrize("streamed", [False, True])
async def test_an_unknown_voice_is_a_wyoming_error(make_client, streamed):
    http, connect = await wyoming_client(make_client)
    voice = SynthesizeVoice(name="nobody")
    async with connect() as client:
        if streamed:
            await client.write_event(SynthesizeStart(voice=voice).event())
            await client.write_event(SynthesizeChunk(text=TEXT).event())
        else:
            await client.write_event(Synthesize(text=TEXT, voice=voice).event())
        (event,) = await read_until(client, "audio-stop")
        error = Error.from_event(event)
        assert "'nobody' not found" in error.text and error.code == "not_found"
        if streamed:  # the stream ends as Home Assistant ends it; the error was its answer
            await client.write_event(SynthesizeStop().event())
        # The connection still serves the next request.
        await client.write_event(Synthesize(text=TEXT).event())
        start, samples = speech_of(await read_until(client, "audio-stop"))
    assert_speech(start, samples, TEXT, core_of(http).engine.sample_rate)
    stats = await (await http.get("/status/statistics")).json()
    assert stats["total_requests"] == 1  # refused before the queue, as on HTTP


async def test_a_client_that_hangs_up_cancels_its_request(make_client, scripted):
    http, connect = await wyoming_client(make_client, engine=scripted)
    seen = statuses(http)
    scripted.hold()
    client = connect()
    await client.connect()
    await client.write_event(Synthesize(text=LONG_TEXT).event())
    await asyncio.to_thread(scripted.wait_started)
    (request_id,) = seen
    await client.disconnect()
    await until_status(http, request_id, "cancelled")

    history = (await (await http.get("/status/history")).json())["request_history"]
    assert [r["status"] for r in history if r["request_id"] == request_id] == ["cancelled"]
    stats = await (await http.get("/status/statistics")).json()
    assert (stats["total_requests"], stats["cancelled_requests"], stats["completed_requests"]) == (1, 1, 0)


async def test_serve_with_the_flag_answers_wyoming_beside_http(tmp_path):
    """``serve --wyoming-port``, as a user starts it: the Wyoming port answers on HOST."""
    port, wyoming_port = free_port(), free_port()
    process, log_path = start_serve(tmp_path, port, "--wyoming-port", str(wyoming_port))
    try:
        await asyncio.to_thread(wait_healthy, f"http://127.0.0.1:{port}", process, log_path, 60)
        async with AsyncTcpClient("127.0.0.1", wyoming_port) as client:
            await client.write_event(Synthesize(text=TEXT).event())
            start, samples = speech_of(await read_until(client, "audio-stop"))
        assert_speech(start, samples, TEXT, start.rate)
    finally:
        stop(process)


def test_a_taken_wyoming_port_stops_serve_at_once(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        wyoming_port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "chatterbox_status", "serve", "--port", str(free_port()), "--wyoming-port", str(wyoming_port)],
            cwd=tmp_path,
            env=clean_environ(),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{wyoming_port}: address already in use" in result.stderr
