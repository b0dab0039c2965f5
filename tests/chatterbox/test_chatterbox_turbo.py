"""ChatterboxTurboTTS through the server: paralinguistic tags reach the model intact."""

from __future__ import annotations

import pytest
from chatterbox_support.harness import (
    SAMPLES_PER_TOKEN,
    TURBO_TOKEN_CAP,
    RequestEvents,
    core_of,
    decode_wav,
    s3gen_tokens,
    spying,
    streamed_and_whole,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

TAGGED = "Well [laugh] that was funny."


async def test_paralinguistic_tag_reaches_turbo_intact(turbo, every_progress_event):
    client = turbo
    model = core_of(client).engine.model
    watch = RequestEvents(client)
    watch.watch("turbo-tagged-01")
    with spying(model, "generate") as generate, spying(model.s3gen, "inference") as s3gen:
        response = await client.post(
            "/v1/audio/speech", json={"input": TAGGED, "temperature": 0.7}, headers={"X-Request-ID": "turbo-tagged-01"}
        )
        body = await response.read()
    assert response.status == 200, body[:300]
    rate, channels, frames = decode_wav(body)
    assert (rate, channels) == (24_000, 1)
    [call] = generate.calls
    assert call.args == (TAGGED,)
    # Turbo has no guidance, exaggeration or min_p: all off, so it does not warn either.
    assert {name: call.kwargs[name] for name in ("cfg_weight", "exaggeration", "min_p")} == {
        "cfg_weight": 0.0,
        "exaggeration": 0.0,
        "min_p": 0.0,
    }
    assert call.kwargs["temperature"] == 0.7
    [vocoded] = s3gen.calls
    assert s3gen_tokens(vocoded) <= TURBO_TOKEN_CAP + 1 + 3  # capped tokens, then 3 of silence
    assert frames == s3gen_tokens(vocoded) * SAMPLES_PER_TOKEN

    health = await (await client.get("/health")).json()
    assert (health["engine"]["name"], health["engine"]["state"], health["device"]) == ("chatterbox-turbo", "ready", "cpu")
    assert health["engine"]["max_batch_size"] == 4  # MAX_BATCH_SIZE=0 on a CPU
    progress = watch.of("turbo-tagged-01", "progress")
    assert len(progress) > 5 and {p["status"] for p in progress} == {"generating_audio"}  # token by token
    record = await (await client.get("/status/requests/turbo-tagged-01")).json()
    assert record["status"] == "completed" and record["text_preview"] == TAGGED


async def test_a_seeded_turbo_chunk_streams_in_windows_the_same_tokens_it_speaks_whole(turbo):
    """Turbo's loop embeds each token too, so its chunks stream in windows; the last window's
    tokens end with the silence ChatterboxTurboTTS.generate appends, as the whole pass's do."""
    tokens, windows, whole_audio, streamed_audio = await streamed_and_whole(turbo, {"input": TAGGED, "seed": 9})
    assert len(windows) >= 2  # a window while T3 sampled, then the rest
    assert windows[-1] == tokens and tokens[-3:] == [4299] * 3
    assert len(streamed_audio) == len(whole_audio) == len(tokens) * SAMPLES_PER_TOKEN * 2
