"""Streamed speech: audio as it is generated, OpenAI's SSE events, and cancellation by disconnect."""

from __future__ import annotations

import asyncio
import base64
import json

import aiohttp
import numpy as np
import pytest
from conftest import core_of, decode_wav, record_events
from doubles import ScriptedEngine
from helpers import LIFECYCLE

from chatterbox_status.pipeline import STREAM_BUFFER_BYTES, AudioStream, StreamedOutput

# Sentences shorter than the first streamed chunk's cap, so streamed and whole plans agree.
TEXT = "The tide is coming in. Gulls circle over the pier. A small boat heads for home."


def wav_frames(data: bytes) -> bytes:
    """The PCM payload of a WAV file, whether its header gives sizes or says 'unknown'."""
    marker = data.index(b"data") + 8
    return data[marker:]


def terminal_waiter(client, request_id: str) -> asyncio.Future:
    """A future resolved with the request's terminal status, from the bus itself."""
    done = asyncio.get_running_loop().create_future()

    def listen(event) -> None:
        data = event.data
        if data.get("request_id") == request_id and data.get("status") in ("completed", "error", "cancelled"):
            if not done.done():
                done.set_result(data["status"])

    core_of(client).bus.add_listener(listen)
    return done


@pytest.mark.parametrize("path", ["/v1/audio/speech/stream", "/audio/speech/stream", "/tts/stream"])
async def test_streamed_wav_has_the_same_samples_as_the_whole_file(make_client, path):
    client = await make_client(max_chunk_length=80)
    whole = await client.post("/v1/audio/speech", json={"input": TEXT, "seed": 7})
    streamed = await client.post(path, json={"input": TEXT, "seed": 7})
    assert streamed.status == 200
    assert streamed.headers.get("Transfer-Encoding") == "chunked"
    assert "Content-Length" not in streamed.headers
    assert streamed.headers["X-Request-ID"]
    whole_pcm, streamed_pcm = wav_frames(await whole.read()), wav_frames(await streamed.read())
    assert len(streamed_pcm) == len(whole_pcm)
    assert streamed_pcm == whole_pcm


@pytest.mark.parametrize("response_format", ["pcm", "flac", "mp3"])
async def test_stream_format_audio_on_the_speech_route_streams_each_format(make_client, response_format):
    client = await make_client(max_chunk_length=80)
    body = {"input": TEXT, "seed": 3, "response_format": response_format}
    whole = await (await client.post("/v1/audio/speech", json=body)).read()
    response = await client.post("/v1/audio/speech", json={**body, "stream_format": "audio"})
    assert response.status == 200 and response.headers.get("Transfer-Encoding") == "chunked"
    streamed = await response.read()
    if response_format == "pcm":
        assert streamed == whole
    else:
        import av

        def duration(data: bytes) -> float:
            import io

            with av.open(io.BytesIO(data)) as container:
                return sum(frame.samples for frame in container.decode(audio=0)) / 24_000

        assert abs(duration(streamed) - duration(whole)) < 0.1


async def test_first_audio_arrives_while_later_chunks_are_still_generating(make_client, scripted):
    client = await make_client(engine=scripted)
    scripted.hold()
    text = "First sentence goes out early. Second sentence waits for release."
    response_task = asyncio.ensure_future(
        client.post(
            "/v1/audio/speech/stream", json={"input": text, "response_format": "pcm", "streaming_chunk_size": 50}
        )
    )
    assert await asyncio.to_thread(scripted.wait_started) == "First sentence goes out early."
    scripted.release()
    assert await asyncio.to_thread(scripted.wait_started) == "Second sentence waits for release."
    response = await asyncio.wait_for(response_task, 10)
    first = await asyncio.wait_for(response.content.readexactly(2 * 1000), 10)
    assert len(first) == 2000  # audio of the first chunk, while the second is held
    status = await (await client.get("/status/progress")).json()
    assert (status["status"], status["current_chunk"]) == ("generating_audio", 2)
    scripted.release()
    rest = await response.read()
    expected_samples = int(len(text.split(". ")[0] + ".") * scripted.seconds_per_char * scripted.sample_rate)
    assert len(first) + len(rest) > 2 * expected_samples


async def test_openai_sse_stream_carries_the_audio_then_done(make_client):
    client = await make_client(max_chunk_length=50)
    whole = await (await client.post("/v1/audio/speech", json={"input": TEXT, "seed": 5, "response_format": "pcm"})).read()
    response = await client.post(
        "/v1/audio/speech",
        json={"input": TEXT, "seed": 5, "response_format": "pcm", "stream_format": "sse", "streaming_chunk_size": 50},
    )
    assert response.status == 200
    assert response.content_type == "text/event-stream"
    events = parse_sse(await response.text())
    types = [e["event"] for e in events]
    assert types[-1] == "speech.audio.done"
    assert types[:-1] == ["speech.audio.delta"] * 2  # one per chunk, each sent as it was generated
    payloads = [json.loads(e["data"]) for e in events]
    audio = b"".join(base64.b64decode(p["audio"]) for p in payloads[:-1])
    assert audio == whole
    assert all(p["type"] == e["event"] for p, e in zip(payloads, events))
    assert payloads[-1]["usage"]["input_tokens"] == len(TEXT)


async def test_failure_mid_stream_is_an_error_event_not_a_silent_end(make_client):
    engine = ScriptedEngine(fail_on="Broken")
    client = await make_client(engine=engine)
    text = "This part works fine and carries on for a while. Broken part comes next."
    response = await client.post(
        "/v1/audio/speech",
        json={"input": text, "stream_format": "sse", "response_format": "pcm", "streaming_chunk_size": 50},
    )
    events = parse_sse(await response.text())
    assert [e["event"] for e in events] == ["speech.audio.delta", "error"]
    error = json.loads(events[-1]["data"])
    assert error["type"] == "error" and "scripted failure" in error["error"]["message"]


async def test_failure_mid_audio_stream_aborts_the_transfer(make_client):
    engine = ScriptedEngine(fail_on="Broken")
    client = await make_client(engine=engine)
    response = await client.post(
        "/v1/audio/speech/stream",
        json={"input": "This part works fine and carries on for a while. Broken part comes next.", "streaming_chunk_size": 50},
    )
    assert response.status == 200  # headers went out with the first audio
    with pytest.raises(aiohttp.ClientPayloadError):
        await response.read()


def parse_sse(text: str) -> list[dict]:
    """Events as {event, data} from a complete SSE body (enough for OpenAI's simple events)."""
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields: dict[str, list[str]] = {}
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            fields.setdefault(name, []).append(value[1:] if value.startswith(" ") else value)
        if "data" in fields:
            events.append({"event": fields.get("event", ["message"])[-1], "data": "\n".join(fields["data"])})
    return events


FIRST_PART = "The first part of the story is told here."
SECOND_PART = "The second part of the story follows on."


@pytest.mark.parametrize("streamed", [False, True], ids=["whole-file", "audio-stream"])
async def test_client_disconnect_cancels_its_request_and_frees_the_engine(make_client, scripted, streamed):
    client = await make_client(engine=scripted, max_chunk_length=50)
    scripted.hold()
    path = "/v1/audio/speech/stream" if streamed else "/v1/audio/speech"
    ended = terminal_waiter(client, "leaving-client-1")
    body = {"input": f"{FIRST_PART} {SECOND_PART} Third part ends the tale.", "streaming_chunk_size": 50}
    request = asyncio.ensure_future(client.post(path, json=body, headers={"X-Request-ID": "leaving-client-1"}))
    await asyncio.to_thread(scripted.wait_started)
    if streamed:
        (await request).close()  # the listener hangs up after the headers
    else:
        request.cancel()  # the client gives up before any answer
        with pytest.raises(asyncio.CancelledError):
            await request
    assert await asyncio.wait_for(ended, 10) == "cancelled"
    # The chunk in flight stopped at its cancellation check; the second chunk never ran.
    assert scripted.calls[2:] == [FIRST_PART]

    scripted.release(5)
    after = await client.post("/v1/audio/speech", json={"input": "Next one."})
    assert after.status == 200
    stats = await (await client.get("/status/statistics")).json()
    assert (stats["cancelled_requests"], stats["completed_requests"]) == (1, 1)


async def test_a_streamed_request_is_followed_to_its_end_and_its_record_holds_the_audio_sent(make_client, make_scripted):
    """Its statuses are a whole file's but for joining (each chunk went out already), its
    finalizing step is the stream's own at 97.5%, and its record's audio duration is that of
    every sample sent: each chunk's windows and the pause between the chunks."""
    engine = make_scripted(streams=True)
    client = await make_client(engine=engine, max_chunk_length=50)
    events = record_events(client)
    body = {"input": f"{FIRST_PART} {SECOND_PART}", "response_format": "pcm", "streaming_chunk_size": 50}
    response = await client.post("/v1/audio/speech/stream", json=body, headers={"X-Request-ID": "streamed-1"})
    assert response.status == 200
    pcm = await response.read()
    mine = [e.data for e in events if e.data["request_id"] == "streamed-1"]
    statuses = [d["status"] for d in mine]
    assert [s for n, s in enumerate(statuses) if n == 0 or statuses[n - 1] != s] == [s for s in LIFECYCLE if s != "concatenating"]
    [finalizing] = [d for d in mine if d["status"] == "finalizing"]
    assert (finalizing["current_step"], finalizing["progress_percentage"]) == ("Finishing the audio stream", 97.5)
    record = await (await client.get("/status/requests/streamed-1")).json()
    assert record["progress"]["total_chunks"] == 2
    assert record["audio_duration_seconds"] == round(len(pcm) / 2 / engine.sample_rate, 3)


async def test_a_listener_hanging_up_in_the_middle_of_a_windowed_chunk_cancels_its_request(make_client, make_scripted):
    """The engine streams its chunk in windows and has handed out the first one when the
    client leaves: the request still ends cancelled, and the engine serves the next one."""
    engine = make_scripted(streams=True)
    client = await make_client(engine=engine, max_chunk_length=50)
    engine.hold()
    ended = terminal_waiter(client, "leaving-client-2")
    body = {"input": f"{FIRST_PART} {SECOND_PART}", "response_format": "pcm", "streaming_chunk_size": 50}
    request = asyncio.ensure_future(client.post("/v1/audio/speech/stream", json=body, headers={"X-Request-ID": "leaving-client-2"}))
    assert await asyncio.to_thread(engine.wait_started) == FIRST_PART
    response = await asyncio.wait_for(request, 10)
    assert len(await asyncio.wait_for(response.content.readexactly(1000), 10)) == 1000  # the first window's start
    response.close()
    assert await asyncio.wait_for(ended, 10) == "cancelled"
    engine.release(5)
    after = await client.post("/v1/audio/speech", json={"input": "Next one."})
    assert after.status == 200
    stats = await (await client.get("/status/statistics")).json()
    assert (stats["cancelled_requests"], stats["completed_requests"]) == (1, 1)


async def test_shutdown_mid_request_ends_it_cleanly(make_client, scripted):
    client = await make_client(engine=scripted, shutdown_timeout=0.2)
    scripted.hold()
    ended = terminal_waiter(client, "shutdown-victim")
    request = asyncio.ensure_future(
        client.post("/v1/audio/speech", json={"input": "Never finished."}, headers={"X-Request-ID": "shutdown-victim"})
    )
    await asyncio.to_thread(scripted.wait_started)
    await core_of(client).shutdown()
    assert await asyncio.wait_for(ended, 10) == "cancelled"
    response = await asyncio.wait_for(request, 10)
    assert response.status == 409
    refused = await client.post("/v1/audio/speech", json={"input": "Too late."})
    assert refused.status == 503
    assert (await refused.json())["error"]["code"] == "shutting_down"
    stats = await (await client.get("/status/statistics")).json()
    assert (stats["total_requests"], stats["cancelled_requests"]) == (1, 1)


async def test_whole_file_response_unchanged_by_streaming_support(make_client):
    client = await make_client()
    response = await client.post("/v1/audio/speech", json={"input": TEXT})
    assert response.headers["Content-Length"] == str(len(await response.read()))
    assert decode_wav(await response.read())[0] == 24_000


@pytest.mark.parametrize(
    "field,value",
    [
        ("streaming_chunk_size", 49),
        ("streaming_chunk_size", 501),
        ("streaming_chunk_size", "100"),
        ("streaming_strategy", "semantic"),
        ("streaming_quality", "ultra"),
    ],
)
async def test_out_of_range_streaming_knobs_are_400s(make_client, scripted, field, value):
    client = await make_client(engine=scripted)
    response = await client.post("/v1/audio/speech/stream", json={"input": "Hello.", field: value})
    assert response.status == 400
    assert (await response.json())["error"]["param"] == field


@pytest.mark.parametrize(
    "knobs,expected_chunks",
    [
        ({"streaming_chunk_size": 50}, 3),
        ({"streaming_chunk_size": 500}, 2),  # the first chunk is still kept short
        ({"streaming_quality": "fast"}, 2),
        ({"streaming_chunk_size": 50, "streaming_strategy": "word"}, 3),
    ],
)
async def test_streaming_knobs_shape_the_chunks(make_client, scripted, knobs, expected_chunks):
    client = await make_client(engine=scripted)
    text = "A first sentence to start with here. " * 2 + "And one more sentence at the end of it all."
    response = await client.post("/v1/audio/speech/stream", json={"input": text, **knobs})
    assert response.status == 200
    await response.read()
    spoken = scripted.calls[2:]
    assert len(spoken) == expected_chunks
    assert " ".join(spoken).split() == text.split()


# -- the stream's end, when the request ends early ---------------------------------------------
# Below HTTP: whether a window's encoding is still under way when its chunk ends early is a
# matter of microseconds from outside, and the bound a client must exceed to make a window's
# sending fail is tens of megabytes. Driven directly, the output meets both at will.


async def ended_early_with_a_window(limit: int = STREAM_BUFFER_BYTES) -> tuple[AudioStream, StreamedOutput, np.ndarray]:
    """A streamed pcm output whose engine has just handed out a window of its first chunk:
    the window's sending is scheduled, not yet done."""
    stream = AudioStream(limit)
    output = StreamedOutput("pcm", stream)
    await output.start(16_000, ["The only chunk."])
    await output.chunk_started(0)
    window = np.linspace(-0.5, 0.5, 1600, dtype=np.float32)
    output.window(0, window)
    return stream, output, window


async def read_to_the_end(stream: AudioStream) -> bytes:
    pieces = []
    while (piece := await stream.get()) is not None:
        pieces.append(piece)
    return b"".join(pieces)


@pytest.mark.parametrize("end", ["cancel", "pause", "failed"])
async def test_a_window_handed_out_just_before_a_stream_stops_reaches_its_client_before_the_end(end):
    """The engine hands out a window, then its chunk ends early (cancelled, paused or failed):
    the window's audio goes out before the stream's end, not after it where nobody reads."""
    stream, output, window = await ended_early_with_a_window()
    if end == "failed":
        await output.failed("Generation failed: the model broke")
    else:
        await output.stopped(end)
    stream.end()  # as the job's end does, once the pipeline is done with it
    received = np.frombuffer(await read_to_the_end(stream), dtype="<i2")
    assert len(received) == len(window)
    assert np.abs(received / 32767 - window).max() < 1e-4


@pytest.mark.parametrize("end", ["cancel", "failed"])
async def test_a_stream_past_its_bound_that_then_ends_another_way_ends_quietly(end):
    """A window whose sending found the client too far behind (past the stream's bound), then
    the chunk ended another way: recording that end does not fail on the window's refusal,
    so the request is stopped or failed as usual, with nothing in the log."""
    stream, output, _ = await ended_early_with_a_window(limit=100)  # the window is 3200 bytes
    if end == "failed":
        await output.failed("Generation failed: the model broke")
    else:
        await output.stopped(end)
    stream.end()
    assert await read_to_the_end(stream) == b""
