"""POST /v1/audio/speech/upload: the speech fields as a form, with a one-off voice file."""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path

import aiohttp
import pytest
from conftest import core_of, decode_wav
from doubles import ScriptedEngine
from helpers import wav_tone


def form(voice_file: bytes | None = None, filename: str = "me.wav", **fields: str) -> aiohttp.FormData:
    data = aiohttp.FormData()
    for name, value in fields.items():
        data.add_field(name, value)
    if voice_file is not None:
        data.add_field("voice_file", voice_file, filename=filename, content_type="audio/wav")
    return data


@pytest.mark.parametrize("path", ["/v1/audio/speech/upload", "/audio/speech/upload", "/tts/upload"])
async def test_form_fields_are_parsed_and_unknown_ones_ignored(make_client, path):
    client = await make_client()
    response = await client.post(
        path,
        data=form(input="Hello from a form.", voice="alloy", response_format="mp3", speed="1.5",
                  exaggeration="0.7", cfg_weight="", temperature="0.9", session_id="frontend-session-42"),
    )
    assert response.status == 200, await response.text()
    assert response.content_type == "audio/mpeg"
    record = await (await client.get(f"/status/requests/{response.headers['X-Request-ID']}")).json()
    assert record["parameters"]["exaggeration"] == 0.7
    assert record["parameters"]["cfg_weight"] == 0.5  # empty field: the server default
    assert record["parameters"]["speed"] == 1.5


@pytest.mark.parametrize(
    "fields,param",
    [
        ({"voice": "alloy"}, "input"),
        ({"input": "Hi.", "speed": "fast"}, "speed"),
        ({"input": "Hi.", "exaggeration": "9"}, "exaggeration"),
        ({"input": "Hi.", "streaming_chunk_size": "10"}, "streaming_chunk_size"),
        ({"input": "Hi.", "voice": "nobody"}, "voice"),
    ],
)
async def test_bad_form_fields_are_400s_or_404s(make_client, scripted, fields, param):
    client = await make_client(engine=scripted)
    response = await client.post("/v1/audio/speech/upload", data=form(**fields))
    assert response.status in (400, 404)
    assert (await response.json())["error"]["param"] == param


async def test_json_body_on_the_upload_route_is_a_415(make_client, scripted):
    client = await make_client(engine=scripted)
    response = await client.post("/v1/audio/speech/upload", json={"input": "Hi."})
    assert response.status == 415


async def test_hibari_refuses_a_voice_file_because_it_cannot_clone(make_client):
    client = await make_client()
    response = await client.post("/v1/audio/speech/upload", data=form(wav_tone(), input="Clone me."))
    assert response.status == 400
    assert (await response.json())["error"]["code"] == "cloning_unsupported"


async def test_voice_file_that_is_not_audio_is_a_400_and_leaves_nothing(make_client, tmp_path):
    engine = ScriptedEngine(cloning=True)
    client = await make_client(engine=engine)
    response = await client.post(
        "/v1/audio/speech/upload", data=form(b"this is not audio at all" * 100, filename="x.wav", input="Hi.")
    )
    assert response.status == 400
    body = await response.json()
    assert body["error"]["param"] == "voice_file"
    assert body["error"]["code"] == "undecodable_audio"
    assert engine.voices[2:] == []  # nothing reached the engine


@pytest.mark.parametrize("stream_format", ["", "audio", "sse"])
async def test_uploaded_voice_is_used_for_every_chunk_then_removed(make_client, stream_format):
    engine = ScriptedEngine(cloning=True)
    client = await make_client(engine=engine, max_chunk_length=30)
    text = "First chunk is spoken here. Second chunk follows it. Third one ends."
    fields = {"input": text, "streaming_chunk_size": "50"}
    if stream_format:
        fields["stream_format"] = stream_format
    response = await client.post("/v1/audio/speech/upload", data=form(wav_tone(), **fields))
    assert response.status == 200
    await response.read()
    spoken = engine.voices[2:]  # after the two warm-up calls
    assert len(spoken) >= 2
    assert {(source, existed) for source, _, existed in spoken} == {("upload", True)}
    paths = {path for _, path, _ in spoken}
    assert len(paths) == 1
    assert not os.path.exists(paths.pop())  # removed once generation ended
    record = await (await client.get(f"/status/requests/{response.headers['X-Request-ID']}")).json()
    assert record["voice_source"] == "upload"


async def test_uploaded_voice_file_is_removed_when_its_queued_request_is_cancelled(make_client):
    engine = ScriptedEngine(cloning=True)
    client = await make_client(engine=engine)
    engine.hold()
    clips_before = set(Path(tempfile.gettempdir()).glob("chatterbox-status-voice-*"))
    first = asyncio.ensure_future(client.post("/v1/audio/speech", json={"input": "Holding the engine."}))
    await asyncio.to_thread(engine.wait_started)
    queued = asyncio.ensure_future(
        client.post("/v1/audio/speech/upload", data=form(wav_tone(), input="Waiting with a voice."),
                    headers={"X-Request-ID": "upload-in-queue"})
    )
    core = core_of(client)
    while core.tracker.find("upload-in-queue") is None:
        await asyncio.sleep(0)
    (path,) = set(Path(tempfile.gettempdir()).glob("chatterbox-status-voice-*")) - clips_before
    assert core.tracker.find("upload-in-queue").status == "queued"
    assert (await client.delete("/v1/audio/speech/upload-in-queue")).status == 200
    assert (await queued).status == 409
    assert not path.exists()
    engine.release()
    assert (await first).status == 200


async def test_library_voice_selects_its_clip_on_a_cloning_engine(make_client):
    engine = ScriptedEngine(cloning=True)
    client = await make_client(engine=engine)
    upload = aiohttp.FormData()
    upload.add_field("voice_name", "Narrator")
    upload.add_field("voice_file", wav_tone(), filename="narrator.wav", content_type="audio/wav")
    assert (await client.post("/v1/voices", data=upload)).status == 201
    response = await client.post("/v1/audio/speech", json={"input": "In a library voice.", "voice": "narrator"})
    assert response.status == 200
    source, path, existed = engine.voices[-1]
    assert source == "library:Narrator" and existed
    assert decode_wav(await response.read())[0] == engine.sample_rate


async def test_library_voice_on_hibari_is_a_clear_400(make_client):
    client = await make_client()
    upload = aiohttp.FormData()
    upload.add_field("voice_name", "Narrator")
    upload.add_field("voice_file", wav_tone(), filename="narrator.wav", content_type="audio/wav")
    assert (await client.post("/voices", data=upload)).status == 201
    response = await client.post("/v1/audio/speech", json={"input": "Hi.", "voice": "Narrator"})
    assert response.status == 400
    assert (await response.json())["error"]["code"] == "cloning_unsupported"


@pytest.mark.parametrize("path", ["/v1/audio/speech/stream/upload", "/audio/speech/stream/upload", "/tts/stream/upload"])
async def test_stream_upload_route_streams_the_form_request(make_client, path):
    client = await make_client()
    response = await client.post(path, data=form(input="Streamed from a form.", response_format="pcm"))
    assert response.status == 200
    assert response.headers.get("Transfer-Encoding") == "chunked"
    assert len(await response.read()) > 24_000  # half a second of 16-bit audio at least


@pytest.mark.parametrize("path", ["/endpoints", "/v1/endpoints", "/routes"])
async def test_endpoints_lists_every_path_with_its_methods(make_client, scripted, path):
    client = await make_client(engine=scripted)
    body = await (await client.get(path)).json()
    listed = {entry["path"]: entry["methods"] for entry in body["endpoints"]}
    assert listed["/v1/audio/speech"] == ["POST"]
    assert set(listed["/v1/voices/{voice_name}"]) == {"GET", "PUT", "DELETE"}
    assert "/status/stream" in listed and "/openapi.json" in listed
    assert body["count"] == len(listed)
