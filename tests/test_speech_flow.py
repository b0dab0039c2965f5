"""A real generation on the embedded voice, followed through the bus and the status API."""

from __future__ import annotations

import time

from conftest import decode_wav, record_events
from helpers import LIFECYCLE

TEXT = (
    "The first sentence is short. The second sentence is a little longer than the first one. "
    "Here comes a third, and then a fourth sentence ends the paragraph."
)


async def test_hibari_request_goes_from_queued_to_completed_with_chunk_progress(make_client):
    client = await make_client(max_chunk_length=60)
    events = record_events(client)
    sent = time.time()
    response = await client.post("/v1/audio/speech", json={"input": TEXT, "voice": "alloy"})
    assert response.status == 200
    assert response.content_type == "audio/wav"
    request_id = response.headers["X-Request-ID"]
    rate, channels, frames = decode_wav(await response.read())
    assert (rate, channels) == (24_000, 1)
    assert frames / rate > 5.0  # four sentences of speech, not a blip

    mine = [e.data for e in events if e.data["request_id"] == request_id]
    statuses = [d["status"] for d in mine]
    transitions = [s for i, s in enumerate(statuses) if i == 0 or statuses[i - 1] != s]
    assert transitions == LIFECYCLE
    chunk_steps = [d["current_step"] for d in mine if d["status"] == "generating_audio"]
    total = mine[-1]["total_chunks"]
    assert total >= 3
    for n in range(1, total + 1):
        assert f"Generating audio for chunk {n}/{total}" in chunk_steps
    percentages = [d["progress_percentage"] for d in mine if "progress_percentage" in d]
    assert percentages == sorted(percentages)
    # Generation earns 95%, joining starts there and encoding at 97.5%.
    [joining] = [d for d in mine if d["status"] == "concatenating"]
    [encoding] = [d for d in mine if d["status"] == "finalizing"]
    assert (joining["current_step"], joining["progress_percentage"]) == (f"Combining {total} audio chunks", 95.0)
    assert (encoding["current_step"], encoding["progress_percentage"]) == ("Converting to wav", 97.5)
    assert percentages[-1] == 100.0 and percentages[-2] < 100.0

    record = await (await client.get(f"/status/requests/{request_id}")).json()
    assert record["status"] == "completed"
    assert record["progress"]["progress_percentage"] == 100.0
    # Once done, the estimated completion is the time it completed.
    assert sent <= record["progress"]["estimated_completion"] <= time.time()
    assert record["audio_duration_seconds"] == round(frames / rate, 3)


async def test_client_chosen_request_id_is_used_and_echoed(make_client):
    client = await make_client()
    response = await client.post(
        "/tts", json={"input": "Hello there."}, headers={"X-Request-ID": "my-own-id-0001"}
    )
    assert response.status == 200
    assert response.headers["X-Request-ID"] == "my-own-id-0001"
    history = await (await client.get("/status/history")).json()
    assert history["request_history"][0]["request_id"] == "my-own-id-0001"


async def test_speed_scales_duration_natively_and_by_time_stretch(make_client):
    """hibari changes tempo itself within 0.5-2x; beyond that the server time-stretches."""
    client = await make_client()
    text = "A steady sentence, spoken at several speeds."

    async def seconds(speed: float) -> float:
        response = await client.post("/v1/audio/speech", json={"input": text, "speed": speed, "seed": 1})
        assert response.status == 200
        rate, _, frames = decode_wav(await response.read())
        return frames / rate

    normal = await seconds(1.0)
    for speed in (0.5, 2.0, 0.25, 4.0):
        assert abs(await seconds(speed) - normal / speed) < 0.12 * normal / speed, speed


async def test_every_response_format_has_its_content_type(make_client):
    client = await make_client()
    expected = {
        "wav": "audio/wav",
        "pcm": "audio/pcm",
        "mp3": "audio/mpeg",
        "opus": "audio/ogg",
        "aac": "audio/aac",
        "flac": "audio/flac",
    }
    for response_format, content_type in expected.items():
        response = await client.post("/v1/audio/speech", json={"input": "Format check.", "response_format": response_format})
        assert response.status == 200
        assert response.content_type == content_type
        assert len(await response.read()) > 500


async def test_default_response_format_is_a_setting(make_client):
    client = await make_client(default_response_format="flac")
    response = await client.post("/v1/audio/speech", json={"input": "Which format am I?"})
    assert response.content_type == "audio/flac"
    explicit = await client.post("/v1/audio/speech", json={"input": "Asked for wav.", "response_format": "wav"})
    assert explicit.content_type == "audio/wav"
