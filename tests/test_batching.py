"""Concurrent requests batched by an engine that can (MAX_BATCH_SIZE), seen over HTTP.

The engine is tests/doubles.py's BatchingEngine, built inside the real engine process: the
worker lets up to its ``max_batch_size`` requests run at once, the engine process hands the
chunks waiting for it to ``synthesize_batch`` together, and every request keeps its own
result, cancellation and status, with the requests it shares a batch with.
"""

from __future__ import annotations

import asyncio
import io
import wave

from conftest import core_of, record_events
from doubles import BatchingEngine, ScriptedEngine, ThreadHost, in_process_of_its_own
from test_engine_process import speak, watch
from test_faults import assert_statistics_add_up, terminal_counter

TONE = ScriptedEngine()
BOUND = 30  # seconds a wait may take: a test that would hang fails instead


def frames(wav: bytes) -> int:
    with wave.open(io.BytesIO(wav)) as audio:
        return audio.getnframes()


async def get_json(client, path: str) -> dict:
    """The JSON body of GET ``path``, within BOUND."""

    async def get() -> dict:
        return await (await client.get(path)).json()

    return await asyncio.wait_for(get(), BOUND)


def first_event(client, request_id: str, **fields) -> asyncio.Future:
    """Resolves with the first event of ``request_id`` that carries ``fields``."""
    seen: asyncio.Future = asyncio.get_running_loop().create_future()

    def listen(event) -> None:
        data = event.data
        if data.get("request_id") == request_id and all(data.get(k) == v for k, v in fields.items()) and not seen.done():
            seen.set_result(data)

    core_of(client).bus.add_listener(listen)
    return seen


def batched_with(client, request_id: str, others: list[str]) -> asyncio.Future:
    """Resolves once an event says ``request_id``'s chunk is stepped with ``others``'."""
    return first_event(client, request_id, batched_with=others)


def handed_to_the_engine(client, request_id: str) -> asyncio.Future:
    """Resolves once ``request_id``'s first chunk went to the engine (it may wait there)."""
    return first_event(client, request_id, status="generating_audio")


async def test_requests_that_wait_together_are_batched_and_each_gets_its_own_audio(make_client, tmp_path):
    gate, batch_gate = tmp_path / "gate", tmp_path / "batch-gate"
    batch_gate.touch()
    host = in_process_of_its_own(BatchingEngine, gate=str(gate), batch_gate=str(batch_gate), max_batch_size=3)
    client = await make_client(engine=host)
    health = await (await client.get("/health")).json()
    assert health["engine"]["max_batch_size"] == 3  # as the loaded engine says
    counts = terminal_counter(client)
    texts = {
        "first-one": "HOLD the engine with this one.",
        "second-one": "The second request is short.",
        "third-one": "The third request says a little more than that.",
        "fourth-one": "The fourth waits for room.",
    }
    started = [watch(client, "first-one", "generating_audio")] + [handed_to_the_engine(client, n) for n in ("second-one", "third-one")]
    first = speak(client, texts["first-one"], "first-one")
    await asyncio.wait_for(started[0], 30)
    together = [batched_with(client, "second-one", ["third-one"]), batched_with(client, "third-one", ["second-one"])]
    rest = {name: speak(client, texts[name], name) for name in ("second-one", "third-one", "fourth-one")}
    await asyncio.wait_for(asyncio.gather(*started[1:]), 30)  # three run at once: the batch's size

    status = await (await client.get("/status")).json()
    assert [entry["request_id"] for entry in status["queue"]["requests"]] == ["fourth-one"]
    gate.touch()
    await asyncio.wait_for(asyncio.gather(*together), 30)
    responses = {"first-one": await first, **{name: await call for name, call in rest.items()}}
    for name, response in responses.items():
        assert response.status == 200, await response.text()
        assert frames(await response.read()) == len(TONE.tone(texts[name])), name  # its own text's audio
    second = await (await client.get("/status/requests/second-one")).json()
    assert second["batched_with"] == ["third-one"]
    alone = await (await client.get("/status/requests/first-one")).json()
    assert "batched_with" not in alone
    assert counts == dict.fromkeys(texts, 1)
    stats = await assert_statistics_add_up(client)
    assert stats["completed_requests"] == 4


async def test_requests_waiting_for_the_model_start_together_once_it_loads(make_client, tmp_path):
    load_gate, gate, batch_gate = tmp_path / "load-gate", tmp_path / "gate", tmp_path / "batch-gate"
    host = in_process_of_its_own(BatchingEngine, gate=str(gate), batch_gate=str(batch_gate), load_gate=str(load_gate), max_batch_size=3)
    client = await make_client(engine=host, wait_loaded=False)
    health = await get_json(client, "/health")
    assert health["engine"]["max_batch_size"] == 1  # one at a time, until the loaded engine says more
    counts = terminal_counter(client)
    texts = {
        "early-one": "HOLD the engine with the first request.",
        "early-two": "HOLD it with the second one as well.",
        "early-three": "HOLD it with the third, which came last.",
    }
    waiting = first_event(client, "early-one", status="initializing", current_step="Waiting for the model to load")
    calls = {}
    for name, text in texts.items():  # in this order: each is queued before the next is sent
        queued = first_event(client, name, status="queued")
        calls[name] = speak(client, text, name)
        await asyncio.wait_for(queued, BOUND)
    await asyncio.wait_for(waiting, BOUND)  # the first runs, and waits for the model
    status = await get_json(client, "/status")
    assert (status["request_id"], status["status"]) == ("early-one", "initializing")
    assert [entry["request_id"] for entry in status["queue"]["requests"]] == ["early-two", "early-three"]

    handed = [handed_to_the_engine(client, name) for name in texts]
    load_gate.touch()
    # All three run at once: each is handed to the engine while every chunk is still held.
    await asyncio.wait_for(asyncio.gather(*handed), BOUND)
    status = await get_json(client, "/status")
    assert status["queue"]["requests"] == []
    health = await get_json(client, "/health")
    assert health["engine"]["max_batch_size"] == 3
    gate.touch()  # a chunk the engine took alone
    batch_gate.touch()  # chunks it took together
    for name, call in calls.items():
        response = await asyncio.wait_for(call, BOUND)
        body = await asyncio.wait_for(response.read(), BOUND)
        assert response.status == 200, body
        assert frames(body) == len(TONE.tone(texts[name])), name  # its own text's audio
    # Which of them one batch holds is the engine process's to see: it takes the chunks waiting
    # for it when it wakes, so the first may have reached it alone; the others reached it while
    # it held that one, and are stepped together next.
    records = {name: await get_json(client, f"/status/requests/{name}") for name in texts}
    batches = {frozenset([name, *records[name].get("batched_with", [])]) for name in texts}
    assert sorted(name for batch in batches for name in batch) == sorted(texts), records  # each in one batch, named alike by all
    assert len(batches) <= 2, batches
    assert counts == dict.fromkeys(texts, 1)
    stats = await asyncio.wait_for(assert_statistics_add_up(client), BOUND)
    assert stats["completed_requests"] == 3


async def test_a_request_cancelled_mid_batch_ends_alone_and_the_others_finish(make_client, tmp_path):
    gate, batch_gate = tmp_path / "gate", tmp_path / "batch-gate"
    host = in_process_of_its_own(BatchingEngine, gate=str(gate), batch_gate=str(batch_gate), max_batch_size=3)
    client = await make_client(engine=host)
    counts = terminal_counter(client)
    started = watch(client, "opener-one", "generating_audio")
    opener = speak(client, "HOLD the engine while two more queue.", "opener-one")
    await asyncio.wait_for(started, 30)
    waiting = [handed_to_the_engine(client, name) for name in ("quitter-one", "stayer-one")]
    working = [watch(client, name, "generating_audio") for name in ("quitter-one", "stayer-one")]  # in the batch
    together = batched_with(client, "quitter-one", ["stayer-one"])
    quitter = speak(client, "HOLD this one, then cancel it.", "quitter-one")
    stayer = speak(client, "This one stays to the end.", "stayer-one")
    await asyncio.wait_for(asyncio.gather(*waiting), 30)
    gate.touch()
    assert (await opener).status == 200
    await asyncio.wait_for(together, 30)
    await asyncio.wait_for(asyncio.gather(*working), 30)
    assert (await client.delete("/v1/audio/speech/quitter-one")).status == 200
    assert (await quitter).status == 409
    batch_gate.touch()
    response = await stayer
    assert response.status == 200
    assert frames(await response.read()) == len(TONE.tone("This one stays to the end."))
    assert counts == {"opener-one": 1, "quitter-one": 1, "stayer-one": 1}
    stats = await assert_statistics_add_up(client)
    assert (stats["completed_requests"], stats["cancelled_requests"]) == (2, 1)


class BatchReportingHost(ThreadHost):
    """Stands for an engine process that steps each chunk together with a chunk of another
    request (partner-request-N for its Nth chunk), and says so as soon as it takes the chunk:
    before the pipeline starts it, as for a chunk handed to the engine ahead."""

    def __init__(self, engine) -> None:
        super().__init__(engine)
        self.taken = 0

    def synthesize(self, text, voice, params, progress, cancel, on_audio=None, job="", on_batch=None, priority="interactive"):
        if on_batch is not None:  # not the warm-up's call
            self.taken += 1
            on_batch([job, f"partner-request-{self.taken}"])
        return super().synthesize(text, voice, params, progress, cancel, on_audio=on_audio, job=job)


async def test_a_chunk_known_to_be_batched_before_it_starts_says_so_as_it_starts(make_client):
    """The second chunk is handed to the engine (and batched) while the first is spoken: each
    chunk's events name its own partner, from the event that starts it on."""
    client = await make_client(engine=BatchReportingHost(ScriptedEngine()), max_chunk_length=40)
    events = record_events(client)
    text = "The first chunk of this request. And the second chunk of it."
    response = await client.post("/v1/audio/speech", json={"input": text}, headers={"X-Request-ID": "batched-early-1"})
    assert response.status == 200
    mine = [e.data for e in events if e.data["request_id"] == "batched-early-1"]
    starts = [e for e in mine if e["status"] == "generating_audio" and e["current_step"].startswith("Generating")]
    assert [(e["current_chunk"], e["batched_with"]) for e in starts if "batched_with" in e] == [
        (1, ["partner-request-1"]),
        (2, ["partner-request-2"]),
    ]
    for e in mine:
        if "batched_with" in e:
            assert e["batched_with"] == [f"partner-request-{e['current_chunk']}"], e
    record = await (await client.get("/status/requests/batched-early-1")).json()
    assert record["batched_with"] == ["partner-request-2"]


async def test_a_request_spoken_alone_says_it_shares_its_chunks_with_nobody(make_client, scripted):
    client = await make_client(engine=scripted, max_chunk_length=40)
    events = record_events(client, types=("status",))
    text = "The first chunk of this request. And the second chunk of it."
    response = await client.post("/v1/audio/speech", json={"input": text}, headers={"X-Request-ID": "spoken-alone-1"})
    assert response.status == 200
    starts = [e.data for e in events if e.data["request_id"] == "spoken-alone-1" and e.data["status"] == "generating_audio"]
    assert [(e["current_chunk"], e["batched_with"]) for e in starts] == [(1, []), (2, [])]
    assert "batched_with" not in await (await client.get("/status/requests/spoken-alone-1")).json()
