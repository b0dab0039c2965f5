"""Audio as it arrives over HTTP: the WAV header read byte by byte, the samples against a reference.

``wave`` and PyAV read a WAV whatever its byte rate and block align say, but players use
them to time and seek the audio, so the fields are checked by hand. The samples are compared
with an independent PCM16 reference (tests/helpers.py) of exactly what the scripted engine
spoke, so a wrong byte order or scale shows in every format that carries raw PCM.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io

import av
import numpy as np
import pytest
from helpers import pcm16_reference, wav_fields

from chatterbox_status.engine_pool import WARM_UP_TEXT

HIBARI_RATE = 24_000
TEXT = "Every byte on the wire counts."


def assert_mono_16_bit(fields: dict[str, int], rate: int) -> None:
    assert (fields["fmt_size"], fields["format"], fields["channels"]) == (16, 1, 1), fields
    assert fields["sample_rate"] == rate, fields
    assert fields["byte_rate"] == 2 * rate, fields  # samples per second x 2 bytes
    assert (fields["block_align"], fields["bits_per_sample"]) == (2, 16), fields


@pytest.mark.parametrize("path", ["/v1/audio/speech", "/v1/audio/speech/stream"], ids=["file", "stream"])
async def test_the_embedded_voice_sends_a_wav_header_players_can_trust(make_client, path):
    client = await make_client()
    response = await client.post(path, json={"input": "The header tells a player how to play this."})
    assert response.status == 200
    assert response.headers["Content-Type"] == "audio/wav"
    data = await response.read()
    fields, pcm = wav_fields(data)
    assert_mono_16_bit(fields, HIBARI_RATE)
    assert fields["data_offset"] == 44
    if path.endswith("/stream"):  # its length was not known when the header went out
        assert fields["riff_size"] == fields["data_size"] == 0xFFFFFFFF
    else:
        assert (fields["riff_size"], fields["data_size"]) == (len(data) - 8, len(data) - 44)
    assert len(pcm) % 2 == 0
    samples = np.frombuffer(pcm, dtype="<i2")
    assert len(samples) / HIBARI_RATE > 0.5  # about two seconds of speech
    assert np.abs(samples.astype(np.int32)).max() > 1000  # and it is not silence


@pytest.mark.parametrize(
    "path, response_format",
    [
        ("/v1/audio/speech", "pcm"),
        ("/v1/audio/speech/stream", "pcm"),
        ("/v1/audio/speech", "wav"),
        ("/v1/audio/speech/stream", "wav"),
    ],
)
async def test_the_samples_on_the_wire_are_exactly_what_the_engine_spoke(make_client, scripted, path, response_format):
    client = await make_client(engine=scripted)
    response = await client.post(path, json={"input": TEXT, "response_format": response_format})
    assert response.status == 200
    data = await response.read()
    spoken = scripted.calls[-1]
    assert spoken == TEXT  # one chunk, as sent
    expected = pcm16_reference(scripted.tone(spoken))
    if response_format == "wav":
        fields, data = wav_fields(data)
        assert_mono_16_bit(fields, scripted.sample_rate)
    assert data == expected


async def test_a_chunk_streamed_in_windows_reaches_the_wire_whole_and_in_order(make_client, make_scripted):
    """An engine that hands each chunk out in windows (its next chunk's windows may come
    before this one's end is added): the streamed bytes are every chunk's samples in order,
    with the pause between chunks, the same bytes as a whole file."""
    engine = make_scripted(streams=True)
    client = await make_client(engine=engine, max_chunk_length=40)
    text = "The first sentence is short. A second one follows it. And a third ends the text."
    streamed = await client.post("/v1/audio/speech/stream", json={"input": text, "response_format": "pcm", "streaming_chunk_size": 50})
    assert streamed.status == 200
    pieces = []
    async for piece in streamed.content.iter_any():
        pieces.append(piece)
    spoken = [call for call in engine.calls if call != WARM_UP_TEXT]
    assert len(spoken) == 3
    gap = np.zeros(int(round(0.2 * engine.sample_rate)), dtype=np.float32)  # the pause between chunks
    expected = np.concatenate([part for n, chunk in enumerate(spoken) for part in ([gap] if n else []) + [engine.tone(chunk)]])
    assert b"".join(pieces) == pcm16_reference(expected)
    whole = await client.post("/v1/audio/speech", json={"input": text, "response_format": "pcm"})
    assert await whole.read() == pcm16_reference(expected)  # a whole file takes no windows


async def test_a_window_reaches_the_client_while_its_chunk_is_still_being_spoken(make_client, make_scripted):
    """A streaming engine's first window goes out at once, not when its chunk ends: the
    client reads it while the engine is held in the middle of the chunk."""
    engine = make_scripted(streams=True)
    client = await make_client(engine=engine)
    engine.hold()
    request = asyncio.ensure_future(client.post("/v1/audio/speech/stream", json={"input": TEXT, "response_format": "pcm"}))
    assert await asyncio.to_thread(engine.wait_started) == TEXT  # its first window handed out, the rest held
    response = await asyncio.wait_for(request, 10)
    assert response.status == 200
    tone = engine.tone(TEXT)
    first_window = pcm16_reference(tone[: len(tone) // 3])
    assert await asyncio.wait_for(response.content.readexactly(len(first_window)), 10) == first_window
    engine.release()
    assert first_window + await response.read() == pcm16_reference(tone)


async def test_a_streamed_flac_decodes_to_exactly_what_the_engine_spoke(make_client, scripted):
    """FLAC is lossless and its encoder holds back a block until the stream is flushed: the
    streamed file, to its last byte, decodes to every sample spoken."""
    client = await make_client(engine=scripted)
    response = await client.post("/v1/audio/speech/stream", json={"input": TEXT, "response_format": "flac"})
    assert response.status == 200
    with av.open(io.BytesIO(await response.read())) as container:
        decoded = np.concatenate([frame.to_ndarray().reshape(-1) for frame in container.decode(audio=0)])
    assert decoded.astype("<i2").tobytes() == pcm16_reference(scripted.tone(TEXT))


async def test_the_next_chunks_first_window_reaches_the_client_while_that_chunk_is_still_spoken(make_client, make_scripted):
    """The engine starts the second chunk, and hands out its first window, before the
    pipeline has moved on to it: that window still goes out at once, after the first chunk
    and the pause."""
    engine = make_scripted(streams=True)
    client = await make_client(engine=engine, max_chunk_length=50)
    engine.hold()
    first, second = "The first sentence is short.", "A second one follows it."
    body = {"input": f"{first} {second}", "response_format": "pcm", "streaming_chunk_size": 50}
    request = asyncio.ensure_future(client.post("/v1/audio/speech/stream", json=body))
    assert await asyncio.to_thread(engine.wait_started) == first
    engine.release()
    assert await asyncio.to_thread(engine.wait_started) == second  # its first window handed out, the rest held
    response = await asyncio.wait_for(request, 10)
    gap = np.zeros(int(round(0.2 * engine.sample_rate)), dtype=np.float32)
    tone = engine.tone(second)
    so_far = pcm16_reference(np.concatenate([engine.tone(first), gap, tone[: len(tone) // 3]]))
    assert await asyncio.wait_for(response.content.readexactly(len(so_far)), 10) == so_far
    engine.release()
    assert so_far + await response.read() == pcm16_reference(np.concatenate([engine.tone(first), gap, tone]))


@pytest.mark.parametrize("speed", [0.5, 2.0, 4.0, 0.25])
async def test_speeds_in_the_engines_range_are_its_own_and_the_others_time_stretched(make_client, make_scripted, speed):
    """An engine that speaks 0.5x to 2x itself: at those speeds (the ends included) the wire
    carries exactly its samples at that speed; beyond them it speaks at 1x and the server
    stretches its audio to 1/speed of the length (within 10%: the filter rounds on short audio)."""
    engine = make_scripted()
    engine.speed_range = (0.5, 2.0)
    client = await make_client(engine=engine)
    response = await client.post("/v1/audio/speech", json={"input": TEXT, "response_format": "pcm", "speed": speed})
    assert response.status == 200
    data = await response.read()
    if 0.5 <= speed <= 2.0:
        assert data == pcm16_reference(engine.tone(TEXT, speed))
    else:
        at_one = len(engine.tone(TEXT, 1.0))
        assert abs(len(data) // 2 - at_one / speed) < 0.1 * at_one / speed, (len(data) // 2, at_one / speed)


async def test_an_engine_without_tempo_control_is_time_stretched_at_any_speed_but_one(make_client, make_scripted):
    """Chatterbox has no tempo control (speed_range None): its audio is stretched by the server."""
    engine = make_scripted()
    engine.speed_range = None
    spoken_at = []
    synthesize = engine.synthesize

    def at_its_own_tempo(text, voice, params, progress, cancel, on_audio=None):
        spoken_at.append(params.speed)
        return synthesize(text, voice, dataclasses.replace(params, speed=1.0), progress, cancel, on_audio)

    engine.synthesize = at_its_own_tempo
    client = await make_client(engine=engine)
    at_one = len(engine.tone(TEXT, 1.0))
    for speed in (1.0, 1.5):
        response = await client.post("/v1/audio/speech", json={"input": TEXT, "response_format": "pcm", "speed": speed})
        assert response.status == 200
        samples = len(await response.read()) // 2
        assert abs(samples - at_one / speed) < 0.1 * at_one / speed, (speed, samples, at_one / speed)
    assert spoken_at[-2:] == [1.0, 1.0]  # the engine is never asked for a tempo it cannot make
