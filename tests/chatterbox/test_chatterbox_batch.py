"""Concurrent requests stepped together through the real ChatterboxTTS (MAX_BATCH_SIZE).

With a seed, a chunk batched with others must sample the very speech tokens it samples
alone (the library's own ``generate``), with its own sampling parameters, stopping on its
own step, and a chunk cancelled mid-batch must leave the others' tokens untouched. The
tiny checkpoint normally stops every chunk after 20 tokens; here its stop token is made
likely at every step instead, so chunks stop at different steps.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading

import pytest
import pytest_asyncio
from chatterbox_support.harness import SAMPLES_PER_TOKEN, TinyChatterboxEngine, decode_wav, serve

from chatterbox_status.engines.base import ChunkRequest, SynthesisParams, Voice
from chatterbox_status.exceptions import Cancelled
from chatterbox_status.supervisor import EngineFacts, EngineProcess, EngineSpec

pytestmark = pytest.mark.asyncio(loop_scope="module")

STOP_TOKEN = 6562
# The weight on the constant channel 0 (32 at every speech position, tiny_model) that gives
# the stop token a logit of about 4: a chance of a few percent a step against 6561 tokens.
LIKELY_STOP_WEIGHT = 0.12
TIMEOUT = 300
REQUESTS = [
    ("Hello there.", SynthesisParams(exaggeration=0.5, cfg_weight=0.5, temperature=0.8, seed=100)),
    ("A somewhat longer sentence to speak now.", SynthesisParams(exaggeration=0.7, cfg_weight=0.3, temperature=0.6, seed=101)),
    ("Hi!", SynthesisParams(exaggeration=0.5, cfg_weight=0.5, temperature=1.0, seed=102, repetition_penalty=1.5, top_p=0.9)),
    ("Testing one two three four five six.", SynthesisParams(exaggeration=0.4, cfg_weight=0.6, temperature=0.8, seed=103, min_p=0.1)),
]


@pytest.fixture(scope="module")
def engine(checkpoint):
    loaded = TinyChatterboxEngine("chatterbox", checkpoint("chatterbox"), max_batch_size=4)
    loaded.load(lambda fraction: None)
    return loaded


@contextlib.contextmanager
def likely_stop(engine):
    head = engine.model.t3.speech_head.weight
    before = float(head[STOP_TOKEN, 0])
    with engine._torch.no_grad():
        head[STOP_TOKEN, 0] = LIKELY_STOP_WEIGHT
    try:
        yield
    finally:
        with engine._torch.no_grad():
            head[STOP_TOKEN, 0] = before


@contextlib.contextmanager
def vocoder_double(engine):
    """S3Gen (full-size, tens of seconds a chunk on two cores) replaced by silence of the
    length it would make, recording the speech tokens it is given: these tests are about
    T3's tokens; the server test below vocodes for real."""
    torch, s3gen = engine._torch, engine.model.s3gen
    given: list[list[int]] = []

    def inference(speech_tokens, ref_dict, **_):
        tokens = speech_tokens.reshape(-1).tolist()
        given.append(tokens)
        return torch.zeros(1, len(tokens) * SAMPLES_PER_TOKEN), None

    s3gen.inference = inference
    try:
        yield given
    finally:
        del s3gen.inference


def alone(engine, text: str, params: SynthesisParams) -> tuple[list[int], int]:
    """The tokens and the samples of ``text`` through the library's own ``generate``."""
    with vocoder_double(engine) as given:
        samples = engine.synthesize(text, Voice(), params, lambda fraction: None, threading.Event())
    [tokens] = given
    return tokens, len(samples)


def batched(engine, requests, cancel_after: dict[int, int] | None = None, streamed: dict | None = None) -> tuple[list, list[list[float]]]:
    """Every request's reply from one ``synthesize_batch``, and the fractions each reported;
    request n is cancelled once it reported ``cancel_after[n]`` token fractions, and streamed
    when ``streamed`` has a list for it (its windows are appended there)."""
    replies: list = [None] * len(requests)
    fractions: list[list[float]] = [[] for _ in requests]
    cancels = [threading.Event() for _ in requests]

    def progress(n: int, fraction: float) -> None:
        fractions[n].append(fraction)
        if cancel_after and len(fractions[n]) == cancel_after.get(n):
            cancels[n].set()

    def reply(n: int, result) -> None:
        assert replies[n] is None, "a chunk was replied to twice"
        replies[n] = result

    streamed = streamed or {}
    chunks = [
        ChunkRequest(
            text, Voice(), params, lambda f, n=n: progress(n, f), cancels[n], lambda r, n=n: reply(n, r),
            streamed[n].append if n in streamed else None,
        )
        for n, (text, params) in enumerate(requests)
    ]
    engine.synthesize_batch(chunks)
    return replies, fractions


def test_a_batched_chunk_samples_the_tokens_it_samples_alone_with_its_own_parameters(engine):
    with likely_stop(engine):
        expected = [alone(engine, text, params) for text, params in REQUESTS]
        with vocoder_double(engine) as got:
            replies, fractions = batched(engine, REQUESTS)
    lengths = {len(tokens) for tokens, _ in expected}
    assert len(lengths) > 1, "the chunks should stop at different steps"
    for (tokens, samples), reply, reported in zip(expected, replies, fractions):
        assert tokens in got  # vocoded as it finished: in the order the chunks stopped
        assert len(reply) == samples == len(tokens) * SAMPLES_PER_TOKEN
        assert reported == sorted(reported) and reported[-1] == 1.0  # its own token progress, then done
    assert [len(t) for t in got] == sorted(len(t) for t, _ in expected)  # the first to stop is vocoded first


def test_a_chunk_cancelled_mid_batch_stops_there_and_the_others_keep_their_tokens(engine):
    with likely_stop(engine):
        requests = [(text, dataclasses.replace(params, seed=params.seed + 50)) for text, params in REQUESTS[:3]]
        expected = [alone(engine, text, params)[0] for text, params in requests]
        longest = max(range(len(requests)), key=lambda n: len(expected[n]))
        assert len(expected[longest]) > 4
        with vocoder_double(engine) as got:
            replies, fractions = batched(engine, requests, cancel_after={longest: 3})
    assert isinstance(replies[longest], Cancelled)
    assert len(fractions[longest]) == 3  # it stopped at the next token
    others = [n for n in range(len(requests)) if n != longest]
    assert sorted(got) == sorted(expected[n] for n in others)
    for n in others:
        assert len(replies[n]) == len(expected[n]) * SAMPLES_PER_TOKEN


def test_a_streamed_chunk_in_a_batch_speaks_in_windows_that_add_up_to_its_tokens(engine):
    requests = REQUESTS[:2]
    expected = [alone(engine, text, params)[0] for text, params in requests]
    windows: list = []
    with vocoder_double(engine) as got:
        replies, _ = batched(engine, requests, streamed={0: windows})
    assert windows and all(len(window) for window in windows)  # heard before the chunk ended
    assert sum(len(window) for window in windows) + len(replies[0]) == len(expected[0]) * SAMPLES_PER_TOKEN
    assert got == [expected[1]] and len(replies[1]) == len(expected[1]) * SAMPLES_PER_TOKEN


TURBO_REQUESTS = [
    ("Hello there.", SynthesisParams(exaggeration=0.0, cfg_weight=0.0, temperature=0.8, seed=200)),
    ("A somewhat longer sentence to speak now.", SynthesisParams(exaggeration=0.0, cfg_weight=0.0, temperature=0.5, seed=201, top_p=0.8)),
    ("Hi!", SynthesisParams(exaggeration=0.0, cfg_weight=0.0, temperature=1.0, seed=202, repetition_penalty=1.6)),
]


def test_turbo_chunks_batched_sample_the_tokens_they_sample_alone(checkpoint):
    engine = TinyChatterboxEngine("chatterbox-turbo", checkpoint("chatterbox-turbo"), max_batch_size=4)
    engine.load(lambda fraction: None)
    assert engine.max_batch_size == 4
    expected = [alone(engine, text, params) for text, params in TURBO_REQUESTS]
    with vocoder_double(engine) as got:
        replies, fractions = batched(engine, TURBO_REQUESTS)
    assert sorted(got) == sorted(tokens for tokens, _ in expected)  # its own prompt and sampling each
    for (_, samples), reply, reported in zip(expected, replies, fractions):
        assert len(reply) == samples
        assert reported[-1] == 1.0


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def batching_server(checkpoint, tmp_path_factory):
    kwargs = {"kind": "chatterbox", "checkpoint_dir": str(checkpoint("chatterbox")), "max_batch_size": 4}
    spec = EngineSpec("chatterbox_support.harness:TinyChatterboxEngine", kwargs)
    host = EngineProcess(spec, EngineFacts("chatterbox", 24_000, "auto", True, {"en": "English"}, None), threads=1)
    async with serve(host, tmp_path_factory.mktemp("batching")) as client:
        yield client


async def test_concurrent_requests_share_batches_in_the_engine_process_and_each_gets_its_audio(batching_server):
    client = batching_server
    names = [f"batched-request-{n}" for n in range(4)]
    texts = ["Hello there.", "A second request.", "And a third one here.", "The fourth and last."]
    responses = await asyncio.wait_for(
        asyncio.gather(*(
            client.post("/v1/audio/speech", json={"input": text, "seed": n}, headers={"X-Request-ID": name})
            for n, (name, text) in enumerate(zip(names, texts))
        )),
        TIMEOUT,
    )
    for response in responses:
        assert response.status == 200, await response.text()
        rate, _, frames = decode_wav(await response.read())
        assert rate == 24_000 and frames > 0 and frames % SAMPLES_PER_TOKEN == 0
    records = {name: await (await client.get(f"/status/requests/{name}")).json() for name in names}
    partners = {name: record.get("batched_with", []) for name, record in records.items()}
    # The first chunk to reach the engine may run alone; the others wait for it, together.
    assert sum(1 for shared in partners.values() if shared) >= 2, partners
    for name, shared in partners.items():
        assert all(name in partners[other] for other in shared), partners  # both sides say so
    stats = await (await client.get("/status/statistics")).json()
    assert stats["completed_requests"] == 4
