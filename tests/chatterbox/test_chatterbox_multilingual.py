"""ChatterboxMultilingualTTS through the server: its languages, and language_id per request."""

from __future__ import annotations

import pytest
from chatterbox_support.harness import SAMPLES_PER_TOKEN, RequestEvents, core_of, decode_wav, s3gen_tokens, spying, streamed_and_whole

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def test_languages_are_the_models_own(multilingual):
    from chatterbox.mtl_tts import SUPPORTED_LANGUAGES

    body = await (await multilingual.get("/languages")).json()
    assert body["engine"] == "chatterbox-multilingual"
    assert body["multilingual"] is True
    codes = [language["code"] for language in body["languages"]]
    assert codes == sorted(SUPPORTED_LANGUAGES)
    assert body["count"] == len(SUPPORTED_LANGUAGES) == 23
    assert {"en", "fr", "de", "ja", "zh"} <= set(codes)
    assert {"code": "fr", "name": "French"} in body["languages"]
    health = await (await multilingual.get("/health")).json()
    assert (health["engine"]["name"], health["engine"]["state"], health["device"]) == ("chatterbox-multilingual", "ready", "cpu")
    assert health["engine"]["max_batch_size"] == 1  # its token loop follows one sequence


async def test_french_request_speaks_with_language_id_fr(multilingual, every_progress_event):
    model = core_of(multilingual).engine.model
    watch = RequestEvents(multilingual)
    watch.watch("multilingual-fr-01")
    with spying(model, "generate") as generate, spying(model.s3gen, "inference") as s3gen:
        response = await multilingual.post(
            "/v1/audio/speech",
            json={"input": "Bonjour tout le monde.", "language": "fr"},
            headers={"X-Request-ID": "multilingual-fr-01"},
        )
        body = await response.read()
    assert response.status == 200, body[:300]
    rate, channels, frames = decode_wav(body)
    assert (rate, channels) == (24_000, 1)
    [call] = generate.calls
    assert call.args == ("Bonjour tout le monde.",)
    assert call.kwargs["language_id"] == "fr"
    [vocoded] = s3gen.calls
    assert frames == s3gen_tokens(vocoded) * SAMPLES_PER_TOKEN > 0
    progress = watch.of("multilingual-fr-01", "progress")
    assert len(progress) > 5 and {p["status"] for p in progress} == {"generating_audio"}  # token by token
    record = await (await multilingual.get("/status/requests/multilingual-fr-01")).json()
    assert record["status"] == "completed" and record["parameters"]["language"] == "fr"


@pytest.mark.parametrize("language", ["xx", "klingon"])
async def test_unknown_language_is_a_400(multilingual, language):
    with spying(core_of(multilingual).engine.model, "generate") as generate:
        response = await multilingual.post("/v1/audio/speech", json={"input": "Hallo.", "language": language})
        assert response.status == 400
        assert (await response.json())["error"]["param"] == "language"
    assert generate.calls == []


def _forward_hooks(module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


async def test_requests_leave_no_hooks_on_the_model(multilingual):
    """A server runs for days: each request must leave the model as it found it.

    ChatterboxMultilingualTTS.generate builds an AlignmentStreamAnalyzer that registers
    forward hooks on three attention layers and never removes them, so every later token
    runs (and every later request adds) hooks that copy attention to the CPU for analyzers
    long gone, and each keeps its analyzer alive.
    """
    tfmr = core_of(multilingual).engine.model.t3.tfmr
    before = _forward_hooks(tfmr)
    response = await multilingual.post("/v1/audio/speech", json={"input": "Guten Tag.", "language": "de"})
    assert response.status == 200, await response.text()
    assert _forward_hooks(tfmr) == before


async def test_a_seeded_french_chunk_streams_in_windows_the_same_tokens_it_speaks_whole(multilingual):
    tokens, windows, whole_audio, streamed_audio = await streamed_and_whole(
        multilingual, {"input": "Bonjour tout le monde, comment allez-vous?", "language": "fr", "seed": 5}
    )
    assert len(windows) >= 2  # a window while T3 sampled, then the rest
    assert windows[-1] == tokens
    assert len(streamed_audio) == len(whole_audio) == len(tokens) * SAMPLES_PER_TOKEN * 2
