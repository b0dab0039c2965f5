"""Faults: engines that raise, hang or run out of memory, clients that leave, and a soak.

Whatever happens, every request ends in exactly one terminal status, the statistics add
up, and the server keeps serving.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import random

import pytest
from conftest import core_of
from doubles import ScriptedEngine, ThreadHost

from chatterbox_status.exceptions import EngineDied

TERMINAL = ("completed", "error", "cancelled")


def terminal_counter(client) -> collections.Counter:
    """request_id -> number of terminal events seen for it, from the bus."""
    counts: collections.Counter = collections.Counter()

    def listen(event) -> None:
        if event.type == "status" and event.data["status"] in TERMINAL:
            counts[event.data["request_id"]] += 1

    core_of(client).bus.add_listener(listen)
    return counts


async def assert_statistics_add_up(client) -> dict:
    stats = await (await client.get("/status/statistics")).json()
    ended = stats["completed_requests"] + stats["error_requests"] + stats["cancelled_requests"]
    assert stats["total_requests"] == ended, stats
    assert stats["is_processing"] is False
    return stats


class OutOfMemoryError(RuntimeError):
    """Named like torch's CUDA out-of-memory error, which is what the server recognises."""


class ForgetfulEngine(ScriptedEngine):
    def synthesize(self, text, voice, params, progress, cancel):
        if "huge" in text:
            raise OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return super().synthesize(text, voice, params, progress, cancel)


async def test_a_chunk_past_the_timeout_fails_its_request_and_a_cancel_aware_engine_is_freed(make_client, scripted):
    client = await make_client(engine=scripted, chunk_timeout=0.3)
    counts = terminal_counter(client)
    scripted.hold()  # the scripted engine checks cancellation while held
    slow = await client.post("/v1/audio/speech", json={"input": "This chunk never finishes."})
    assert slow.status == 500
    assert "CHUNK_TIMEOUT" in (await slow.json())["error"]["message"]
    scripted.release(5)
    fine = await client.post("/v1/audio/speech", json={"input": "This one is quick."})
    assert fine.status == 200
    assert sorted(counts.values()) == [1, 1]
    stats = await assert_statistics_add_up(client)
    assert (stats["error_requests"], stats["completed_requests"]) == (1, 1)


async def test_out_of_memory_fails_that_request_cleanly_and_the_next_succeeds(make_client):
    client = await make_client(engine=ForgetfulEngine())
    failed = await client.post("/v1/audio/speech", json={"input": "A huge request."})
    assert failed.status == 500
    message = (await failed.json())["error"]["message"]
    assert "ran out of memory" in message and "released" in message
    record = await (await client.get(f"/status/requests/{failed.headers['X-Request-ID']}")).json()
    assert record["status"] == "error" and "out of memory" in record["error_message"]
    assert (await client.post("/v1/audio/speech", json={"input": "A small one."})).status == 200
    await assert_statistics_add_up(client)


class RecordingHost(ThreadHost):
    """The engine's host, recording each request to free memory (whether it resets the peak
    figures); ``release_fails`` makes every such request fail, as it does once the engine
    process has died."""

    def __init__(self, engine, release_fails: bool = False) -> None:
        super().__init__(engine)
        self.release_fails = release_fails
        self.releases: list[bool] = []

    async def release(self, reset_peak: bool = False) -> None:
        self.releases.append(reset_peak)
        if self.release_fails:
            raise EngineDied("the engine process is not running")
        await super().release(reset_peak)


async def test_out_of_memory_whose_release_fails_still_ends_the_request(make_client):
    host = RecordingHost(ForgetfulEngine(), release_fails=True)
    client = await make_client(engine=host)
    failed = await asyncio.wait_for(client.post("/v1/audio/speech", json={"input": "A huge request."}), 10)
    assert failed.status == 500
    assert "ran out of memory" in (await failed.json())["error"]["message"]
    assert [bool(reset) for reset in host.releases] == [False]  # the engine process reads it as a bool
    assert (await client.post("/v1/audio/speech", json={"input": "A small one."})).status == 200
    await assert_statistics_add_up(client)


async def test_periodic_cleanup_frees_memory_but_only_a_reset_clears_the_peak(make_client, scripted):
    """MEMORY_CLEANUP_INTERVAL=1: after each request the engine frees its memory and keeps
    its peak figures (what /memory shows as the peak since the last reset); POST
    /memory/reset frees it and resets the peak."""
    host = RecordingHost(scripted)
    client = await make_client(engine=host, memory_cleanup_interval=1)
    for n in range(2):
        assert (await client.post("/v1/audio/speech", json={"input": f"Request number {n}."})).status == 200
    assert [bool(reset) for reset in host.releases] == [False, False]  # the engine process reads it as a bool
    assert (await client.post("/memory/reset?confirm=true")).status == 200
    assert [bool(reset) for reset in host.releases] == [False, False, True]


@pytest.mark.parametrize("stage", ["loading", "queued", "generating", "streaming"])
async def test_a_client_leaving_at_any_stage_cancels_exactly_once(make_client, scripted, stage):
    if stage == "loading":
        scripted.load_gate.clear()
    client = await make_client(engine=scripted, wait_loaded=stage != "loading")
    counts = terminal_counter(client)
    core = core_of(client)
    path = "/v1/audio/speech/stream" if stage == "streaming" else "/v1/audio/speech"
    blocker = None
    if stage != "loading":
        scripted.hold()
    if stage == "queued":
        blocker = asyncio.ensure_future(client.post("/v1/audio/speech", json={"input": "In the engine."}))
        await asyncio.to_thread(scripted.wait_started)
    leaving = asyncio.ensure_future(
        client.post(path, json={"input": "I will not wait."}, headers={"X-Request-ID": "impatient-1"})
    )
    while core.tracker.find("impatient-1") is None or (
        stage in ("generating", "streaming") and core.tracker.find("impatient-1").status != "generating_audio"
    ):
        await asyncio.sleep(0)
    if stage == "streaming":
        (await leaving).close()
    else:
        leaving.cancel()
    while core.tracker.find("impatient-1").status not in TERMINAL:
        await asyncio.sleep(0.01)
    assert core.tracker.find("impatient-1").status == "cancelled"
    scripted.load_gate.set()
    scripted.release(10)
    if blocker is not None:
        assert (await blocker).status == 200
    after = await client.post("/v1/audio/speech", json={"input": "Still serving."})
    assert after.status == 200
    assert counts["impatient-1"] == 1
    assert all(n == 1 for n in counts.values())
    await assert_statistics_add_up(client)


async def test_soak_of_hundreds_of_mixed_requests_stays_bounded_and_adds_up(make_client):
    """300 requests, 16 at a time: good ones, bad ones, failing ones and cancelled ones."""
    engine = ScriptedEngine(fail_on="broken")
    engine.seconds_per_char = 0.002
    client = await make_client(engine=engine, history_size=20, max_queue_size=400)
    counts = terminal_counter(client)
    rng = random.Random(7)
    outcomes: collections.Counter = collections.Counter()
    limit = asyncio.Semaphore(16)

    async def one(n: int) -> None:
        kind = rng.choice(["good", "good", "good", "bad", "broken", "cancel"])
        async with limit:
            if kind == "bad":
                response = await client.post("/v1/audio/speech", json={"input": "", "speed": 9})
                assert response.status == 400
            elif kind == "cancel":
                request_id = f"soak-cancel-{n:04d}"
                task = asyncio.ensure_future(
                    client.post("/v1/audio/speech", json={"input": f"Cancel me {n}."}, headers={"X-Request-ID": request_id})
                )
                while core_of(client).tracker.find(request_id) is None:
                    await asyncio.sleep(0)
                await client.delete(f"/v1/audio/speech/{request_id}")
                response = await task
                assert response.status in (200, 409)  # it may have finished first
                kind = "good" if response.status == 200 else "cancel"
            else:
                text = f"Request number {n} is {'broken' if kind == 'broken' else 'fine'}."
                response = await client.post("/v1/audio/speech", json={"input": text})
                assert response.status == (500 if kind == "broken" else 200)
                await response.read()
        outcomes[kind] += 1

    async def rss_mb() -> float:
        body = await (await client.get("/status/statistics?include_memory=true")).json()
        return body["current_memory"]["cpu_memory_mb"]

    rss_before = await rss_mb()
    await asyncio.gather(*(one(n) for n in range(300)))
    stats = await assert_statistics_add_up(client)
    assert stats["total_requests"] == 300 - outcomes["bad"]
    assert stats["completed_requests"] == outcomes["good"]
    assert stats["error_requests"] == outcomes["broken"]
    assert stats["cancelled_requests"] == outcomes["cancel"]
    assert len(counts) == stats["total_requests"] and set(counts.values()) == {1}
    history = await (await client.get("/status/history?limit=50")).json()
    assert history["total_records"] == 20  # the ring stays at HISTORY_SIZE
    tracker = core_of(client).tracker
    # Only the ring's requests can still be looked up: nothing else is kept per request.
    assert sum(tracker.find(rid) is not None for rid in counts) == 20
    assert not tracker.is_processing
    assert await rss_mb() - rss_before < 150  # MB: nothing per request is kept


async def test_the_chunk_handed_ahead_of_a_cancelled_request_ends_without_a_logged_error(make_client, scripted, caplog):
    """An interactive request hands the engine its next chunk while the current one is spoken;
    cancelled, nobody awaits that next call, whose engine refuses it (Cancelled). It must end
    quietly, not as asyncio's "exception was never retrieved" in the operator's log."""
    client = await make_client(engine=scripted, max_chunk_length=50)
    scripted.hold()
    text = "The first part of the story is told here. The second part of the story follows on."
    request = asyncio.ensure_future(client.post("/v1/audio/speech", json={"input": text}, headers={"X-Request-ID": "ahead-of-1"}))
    await asyncio.to_thread(scripted.wait_started)
    assert (await client.delete("/v1/audio/speech/ahead-of-1")).status == 200
    response = await request
    assert response.status == 409
    assert (await response.json())["error"]["message"] == "Request ahead-of-1 was cancelled"
    scripted.release(5)
    # The engine takes calls in order: once the next request is spoken, the discarded call has ended.
    assert (await client.post("/v1/audio/speech", json={"input": "Next one."})).status == 200
    gc.collect()
    assert not [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]


async def test_an_unexpected_engine_exception_is_logged_once_with_its_traceback(make_client, caplog):
    """An exception that is not an EngineError (a bug, not a known failure) is the operator's to
    see: "request ID failed" with its traceback, once; the client gets a 500 with its message."""
    client = await make_client(engine=ScriptedEngine(fail_on="explode"))
    failed = await client.post("/v1/audio/speech", json={"input": "Please explode now."}, headers={"X-Request-ID": "explodes-1"})
    assert failed.status == 500
    logged = [r for r in caplog.records if r.name == "chatterbox_status.pipeline" and r.levelname == "ERROR"]
    assert [r.getMessage() for r in logged] == ["request explodes-1 failed"]
    assert logged[0].exc_info is not None and "scripted failure" in str(logged[0].exc_info[1])


class CrashingCleanupHost(RecordingHost):
    """A host whose memory release fails with an error that is no EngineError: a bug, met
    after the request has been answered (the periodic cleanup runs once it ends)."""

    async def release(self, reset_peak: bool = False) -> None:
        self.releases.append(reset_peak)
        raise RuntimeError("cleanup went wrong")


async def test_a_crash_after_a_request_ended_is_logged_naming_it_and_the_next_request_still_runs(make_client, scripted, caplog):
    """Past the pipeline's own handling (here the periodic cleanup after the request), a crash
    is the operator's to see: "pipeline crashed on request ID" with its traceback, once per
    request; the worker goes on with the next request."""
    host = CrashingCleanupHost(scripted)
    client = await make_client(engine=host, memory_cleanup_interval=1)
    for request_id in ("crashes-0001", "crashes-0002"):
        response = await client.post("/v1/audio/speech", json={"input": f"Request {request_id}."}, headers={"X-Request-ID": request_id})
        assert response.status == 200
        await asyncio.wait_for(core_of(client).worker.idle(), 10)  # the cleanup after it has run
    logged = [r for r in caplog.records if r.name == "chatterbox_status.worker" and r.levelname == "ERROR"]
    assert [r.getMessage() for r in logged] == ["pipeline crashed on request crashes-0001", "pipeline crashed on request crashes-0002"]
    assert all(r.exc_info is not None and "cleanup went wrong" in str(r.exc_info[1]) for r in logged)
    assert host.releases == [False, False]
