"""ChatterboxTTS (English) through the server: audio, token progress, cancellation, seeds,
cloned voices and the sampling knobs, on one tiny checkpoint loaded once for the module."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from pathlib import Path

import aiohttp
import pytest
from chatterbox_support.harness import (
    SAMPLES_PER_TOKEN,
    RequestEvents,
    core_of,
    decode_wav,
    engine_timeline,
    running,
    s3gen_tokens,
    sha256_of,
    spying,
    streamed_and_whole,
)

from chatterbox_status.engines.chatterbox import NO_GUIDANCE, TOKEN_SHARE
from chatterbox_status.pipeline import GENERATION_SHARE

pytestmark = pytest.mark.asyncio(loop_scope="module")

TEXT = "Hello there, this is the tiny model speaking."
# The checkpoint's shaped weights stop after 20 speech tokens (tiny_model.build_checkpoint).
NATURAL_STOP = 20
TIMEOUT = 120


async def test_speech_is_24khz_mono_wav_of_the_tokens_with_token_progress(english, every_progress_event):
    client = english
    engine = core_of(client).engine
    watch = RequestEvents(client)
    request_id = "english-speech-01"
    watch.watch(request_id)

    with engine_timeline(engine) as (timeline, s3gen):
        response = await client.post("/v1/audio/speech", json={"input": TEXT}, headers={"X-Request-ID": request_id})
        body = await response.read()
    assert response.status == 200, body[:300]
    assert response.content_type == "audio/wav"
    rate, channels, frames = decode_wav(body)
    assert (rate, channels) == (24_000, 1)
    [vocoded] = s3gen.calls
    tokens = s3gen_tokens(vocoded)
    assert NATURAL_STOP - 2 <= tokens <= NATURAL_STOP + 1
    assert frames == tokens * SAMPLES_PER_TOKEN

    # The engine reported progress token by token while T3 ran, then 1.0 once S3Gen was done.
    by_token = timeline[: timeline.index(("s3gen",))]
    fractions = [fraction for _, fraction in by_token]
    assert by_token == [("progress", f) for f in fractions]
    assert 5 < len(fractions) <= tokens + 1
    assert fractions == sorted(set(fractions)) and fractions[-1] < TOKEN_SHARE
    assert timeline[timeline.index(("s3gen",)) + 1 :] == [("progress", 1.0)]

    # On the bus, progress events arrive while the chunk is generating, and only then.
    events = watch.events[request_id]
    kinds = [(e.type, e.data["status"]) for e in events]
    start = kinds.index(("status", "generating_audio"))
    end = kinds.index(("status", "concatenating"))
    # Every event between the chunk's start and the joining is a progress event, and vice versa.
    assert [i for i, k in enumerate(kinds) if k[0] == "progress"] == list(range(start + 1, end))
    progress = watch.of(request_id, "progress")
    assert {p["status"] for p in progress} == {"generating_audio"}
    percentages = [p["progress_percentage"] for p in progress]
    assert percentages == sorted(set(percentages)), percentages  # strictly increasing
    assert len([p for p in percentages if p < GENERATION_SHARE]) > 5, percentages
    assert percentages[-1] == GENERATION_SHARE  # the chunk's end (1.0), before joining and encoding

    health = await (await client.get("/health")).json()
    assert health["status"] == "healthy" and health["model_loaded"] is True
    assert health["device"] == "cpu"
    assert (health["engine"]["name"], health["engine"]["device"]) == ("chatterbox", "cpu")
    assert health["engine"]["sample_rate"] == 24_000 and health["engine"]["state"] == "ready"
    assert health["engine"]["max_batch_size"] == 4  # MAX_BATCH_SIZE=0 on a CPU

    record = await (await client.get(f"/status/requests/{request_id}")).json()
    assert record["status"] == "completed"
    assert record["engine"] == "chatterbox"
    assert record["progress"]["progress_percentage"] == 100.0
    assert record["audio_duration_seconds"] == round(frames / 24_000, 3)


async def test_cancel_mid_chunk_stops_at_the_next_token_before_s3gen(english, every_progress_event):
    client = english
    engine = core_of(client).engine
    watch = RequestEvents(client)
    request_id = "english-cancel-01"
    watch.watch(request_id)

    # Hold the engine thread right after the first speech token's progress went out, until
    # the DELETE has been answered: the cancel lands mid-chunk whatever the CPU's speed.
    deleted = threading.Event()
    held = []

    def hold_after_first_token(module, args, kwargs):
        if running(client, request_id) and kwargs["inputs_embeds"].shape[1] == 1 and not held:
            held.append(True)
            deleted.wait(TIMEOUT)

    hook = engine.model.t3.tfmr.register_forward_pre_hook(hold_after_first_token, with_kwargs=True)
    request = None
    try:
        with engine_timeline(engine) as (timeline, s3gen):
            request = asyncio.ensure_future(
                client.post("/v1/audio/speech", json={"input": TEXT}, headers={"X-Request-ID": request_id})
            )
            first = await asyncio.wait_for(watch.first_progress(request_id), TIMEOUT)
            assert first.data["status"] == "generating_audio"
            cancel = await client.delete(f"/v1/audio/speech/{request_id}")
            deleted.set()
            assert cancel.status == 200
            assert (await cancel.json())["cancelled"] is True
            response = await asyncio.wait_for(request, TIMEOUT)
            assert await asyncio.wait_for(watch.ended(request_id), TIMEOUT) == "cancelled"
    finally:
        deleted.set()
        hook.remove()
        if request is not None and not request.done():
            request.cancel()  # a failed test leaves no request behind for the next one

    assert response.status == 409
    assert (await response.json())["error"]["code"] == "cancelled"
    assert held == [True]
    # One token ran after the cancel; the next token's check stopped the chunk, so a full
    # chunk's ~20 token progress reports never came and S3Gen never ran.
    assert [kind for kind, *_ in timeline] == ["progress"]
    assert len(watch.of(request_id, "progress")) == 1
    assert s3gen.calls == []
    record = await (await client.get(f"/status/requests/{request_id}")).json()
    assert record["status"] == "cancelled"

    after = await client.post("/v1/audio/speech", json={"input": "And now the next one."})
    assert after.status == 200
    assert decode_wav(await after.read())[2] > 0
    record = await (await client.get(f"/status/requests/{after.headers['X-Request-ID']}")).json()
    assert record["status"] == "completed"


async def test_cancel_during_s3gen_stops_at_the_next_flow_step_before_the_vocoder(english):
    client = english
    engine = core_of(client).engine
    s3gen = engine.model.s3gen
    watch = RequestEvents(client)
    request_id = "english-cancel-02"
    watch.watch(request_id)
    loop = asyncio.get_running_loop()
    flowing = loop.create_future()
    deleted = threading.Event()

    def hold_first_flow_step(*args, **kwargs):
        # Runs before the estimator (and the engine's check wrapped around it) on the
        # first flow-matching step: tell the test, then wait for its DELETE to be answered.
        if running(client, request_id) and not held:
            held.append(True)
            loop.call_soon_threadsafe(flowing.set_result, None)
            deleted.wait(TIMEOUT)

    held = []
    request = None
    try:
        with (
            engine_timeline(engine) as (timeline, _),
            spying(s3gen.flow.decoder.estimator, "forward", capture=hold_first_flow_step) as steps,
            spying(s3gen.mel2wav, "inference") as vocoder,
        ):
            request = asyncio.ensure_future(
                client.post("/v1/audio/speech", json={"input": TEXT}, headers={"X-Request-ID": request_id})
            )
            await asyncio.wait_for(flowing, TIMEOUT)
            cancel = await client.delete(f"/v1/audio/speech/{request_id}")
            deleted.set()
            assert cancel.status == 200
            response = await asyncio.wait_for(request, TIMEOUT)
            assert await asyncio.wait_for(watch.ended(request_id), TIMEOUT) == "cancelled"
    finally:
        deleted.set()
        if request is not None and not request.done():
            request.cancel()

    assert response.status == 409
    assert (await response.json())["error"]["code"] == "cancelled"
    # The step that was held is where the engine's check stopped it: no step after it, no vocoder.
    assert len(steps.calls) == 1
    assert vocoder.calls == []
    # The token loop ran to its end, S3Gen started, and the chunk never reported 1.0.
    assert timeline[-1] == ("s3gen",) and len(timeline) > 5
    assert watch.of(request_id, "progress")[-1]["progress_percentage"] < GENERATION_SHARE


async def test_same_seed_gives_identical_pcm_and_another_seed_differs(english):
    client = english

    async def pcm(seed: int) -> bytes:
        response = await client.post("/v1/audio/speech", json={"input": TEXT, "seed": seed, "response_format": "pcm"})
        assert response.status == 200
        return await response.read()

    first, again, other = await pcm(7), await pcm(7), await pcm(8)
    assert first and len(first) % (2 * SAMPLES_PER_TOKEN) == 0  # 16-bit samples, whole tokens
    assert first == again
    assert other != first


def _speech_form(voice: bytes, **fields) -> aiohttp.FormData:
    form = aiohttp.FormData()
    for name, value in fields.items():
        form.add_field(name, str(value))
    form.add_field("voice_file", voice, filename="reference.wav", content_type="audio/wav")
    return form


async def test_reference_voice_is_prepared_once_and_cached_by_content(english, reference_wav):
    client = english
    engine = core_of(client).engine
    model = engine.model
    key = hashlib.sha256(reference_wav).hexdigest()
    before = set(engine.conditionals)
    assert key not in before

    def prepared_file(wav_fpath, *args, **kwargs):
        return wav_fpath, sha256_of(wav_fpath)

    with (
        spying(model, "prepare_conditionals", capture=prepared_file) as prepare,
        spying(model, "generate", capture=lambda *a, **k: model.conds) as generate,
    ):
        response = await client.post(
            "/v1/audio/speech/upload", data=_speech_form(reference_wav, input=TEXT, exaggeration=0.5)
        )
        assert response.status == 200, await response.text()
        assert decode_wav(await response.read())[2] > 0
        [prepared] = prepare.calls
        path, digest = prepared.seen
        assert digest == key  # the uploaded clip, byte for byte
        assert not Path(path).exists()  # the upload lived as long as its request
        assert set(engine.conditionals) - before == {key}
        assert len(engine.conditionals) == len(before) + 1
        cloned = engine.conditionals[key]
        assert generate.calls[-1].seen is cloned
        assert cloned is not engine._builtin

        # The same clip with another exaggeration: no new preparation, the new emotion is used.
        response = await client.post(
            "/v1/audio/speech/upload", data=_speech_form(reference_wav, input=TEXT, exaggeration=0.9)
        )
        assert response.status == 200, await response.text()
        assert len(prepare.calls) == 1
        assert len(engine.conditionals) == len(before) + 1
        assert generate.calls[-1].seen is cloned
        assert generate.calls[-1].kwargs["exaggeration"] == 0.9
        assert cloned.t3.emotion_adv.flatten().tolist() == pytest.approx([0.9])

        # The same clip kept in the voice library and named in a JSON request: same cache entry.
        form = aiohttp.FormData()
        form.add_field("voice_name", "narrator")
        form.add_field("voice_file", reference_wav, filename="narrator.wav", content_type="audio/wav")
        added = await client.post("/v1/voices", data=form)
        assert added.status == 201, await added.text()
        assert (await added.json())["voice"]["sha256"] == key
        response = await client.post("/v1/audio/speech", json={"input": TEXT, "voice": "narrator"})
        assert response.status == 200, await response.text()
        assert len(prepare.calls) == 1
        assert len(engine.conditionals) == len(before) + 1
        assert generate.calls[-1].seen is cloned
    record = await (await client.get(f"/status/requests/{response.headers['X-Request-ID']}")).json()
    assert record["voice_source"] == "library:narrator"


async def test_cfg_weight_zero_and_sampling_knobs_reach_the_model(english):
    client = english
    model = core_of(client).engine.model
    body = {"input": TEXT, "cfg_weight": 0, "repetition_penalty": 1.5, "min_p": 0.1, "top_p": 0.9, "temperature": 0.7}
    with spying(model, "generate") as generate:
        response = await client.post("/v1/audio/speech", json=body)
        assert response.status == 200, await response.text()
    assert decode_wav(await response.read())[2] > 0
    [call] = generate.calls
    # ChatterboxTTS crashes on cfg_weight=0 itself, so "no guidance" is a negligible weight.
    assert call.kwargs["cfg_weight"] == NO_GUIDANCE and 0 < NO_GUIDANCE < 1e-3
    sampling = {name: call.kwargs[name] for name in ("repetition_penalty", "min_p", "top_p", "temperature")}
    assert sampling == {"repetition_penalty": 1.5, "min_p": 0.1, "top_p": 0.9, "temperature": 0.7}


@pytest.mark.parametrize(
    "field,value",
    [
        ("repetition_penalty", 0.5),
        ("repetition_penalty", 3.5),
        ("min_p", -0.1),
        ("min_p", 1.5),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("temperature", 0.0),
        ("cfg_weight", 1.5),
        ("exaggeration", 2.5),
        ("seed", -1),
        ("language", "fr"),  # the English model speaks English only
    ],
)
async def test_out_of_range_knobs_are_400s_that_never_reach_the_model(english, field, value):
    client = english
    with spying(core_of(client).engine.model, "generate") as generate:
        response = await client.post("/v1/audio/speech", json={"input": TEXT, field: value})
        assert response.status == 400
        assert (await response.json())["error"]["param"] == field
    assert generate.calls == []


async def test_a_seeded_chunk_streams_in_windows_the_same_tokens_it_speaks_whole(english):
    """Streamed, the chunk's tokens are vocoded window by window; the vocoding draws its
    noise apart from T3's sampling, so the same seed gives the same tokens, and the windows
    add up to the samples of the whole chunk."""
    tokens, windows, whole_audio, streamed_audio = await streamed_and_whole(english, {"input": TEXT, "seed": 11}, TIMEOUT)
    assert len(windows) >= 2  # a window while T3 sampled, then the rest
    assert windows[-1] == tokens
    assert len(streamed_audio) == len(whole_audio) == len(tokens) * SAMPLES_PER_TOKEN * 2


async def test_only_a_gpu_streams_within_a_chunk():
    """On a CPU, S3Gen's fixed cost a pass outweighs what windows save: chunks stream whole."""
    from chatterbox_status.engines.chatterbox import CLASSES, kind_streams

    for kind in CLASSES:
        assert kind_streams(kind, "cuda") and kind_streams(kind, "cuda:1") and kind_streams(kind, "mps")
        assert not kind_streams(kind, "cpu")
