"""What OpenAI-compatible clients send that trips servers: OpenAI's voice object, and
Open WebUI's body without response_format."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest
from conftest import assert_error_shape, decode_wav

# Open WebUI's speech proxy posts the chat's text with its configured voice and model, and
# no response_format; it stores the answer as <hash>.mp3 and serves it as audio/mpeg.
OPEN_WEBUI_BODY = {"input": "Here is the weather for today.", "voice": "alloy", "model": "tts-1"}


async def test_voice_as_openai_object_speaks_like_the_name(make_client):
    client = await make_client()
    spoken = {}
    for voice in ("nova", {"id": "nova"}):
        response = await client.post("/v1/audio/speech", json={"input": "Hello there.", "voice": voice, "seed": 7})
        assert response.status == 200, await response.text()
        spoken[str(voice)] = await response.read()
    assert spoken["nova"] == spoken[str({"id": "nova"})]


@pytest.mark.parametrize(
    ("voice", "status"), [({"id": "nobody"}, 404), ({"name": "nova"}, 400), ({"id": ""}, 400), (["nova"], 400)]
)
async def test_a_bad_voice_object_is_a_clear_error(make_client, scripted, voice, status):
    client = await make_client(engine=scripted)
    response = await client.post("/v1/audio/speech", json={"input": "Hello there.", "voice": voice})
    assert response.status == status
    assert_error_shape(await response.json(), param="voice")


async def test_open_webui_body_gets_wav_by_default(make_client):
    client = await make_client()
    response = await client.post("/v1/audio/speech", json=OPEN_WEBUI_BODY)
    assert response.status == 200 and response.content_type == "audio/wav"
    rate, channels, frames = decode_wav(await response.read())
    assert channels == 1 and 1.0 < frames / rate < 10.0


async def test_default_response_format_mp3_matches_what_open_webui_labels_it(make_client):
    client = await make_client(default_response_format="mp3")
    response = await client.post("/v1/audio/speech", json=OPEN_WEBUI_BODY)
    assert response.status == 200 and response.content_type == "audio/mpeg"
    with av.open(io.BytesIO(await response.read())) as container:
        assert container.format.name == "mp3"
        samples = np.concatenate([frame.to_ndarray().reshape(-1) for frame in container.decode(audio=0)])
    assert float(np.abs(samples).max()) > 0.05  # speech, not silence


async def test_openapi_documents_the_voice_object_and_the_usable_voices(make_client, scripted):
    client = await make_client(engine=scripted)
    doc = await (await client.get("/openapi.json")).json()
    schemas = doc["components"]["schemas"]
    voice = schemas["SpeechRequest"]["properties"]["voice"]
    assert [option["type"] for option in voice["anyOf"]] == ["string", "object"]
    assert voice["anyOf"][1]["required"] == ["id"]
    listing = doc["paths"]["/v1/audio/voices"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert listing == {"$ref": "#/components/schemas/VoiceList"}
    assert {"voices", "count", "available_voices", "available_names"} <= set(schemas["VoiceList"]["properties"])
    assert set(schemas["UsableVoice"]["required"]) == {"id", "name", "source", "languages"}
    assert "id" in schemas["Voice"]["required"]
