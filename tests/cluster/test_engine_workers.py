"""Engine workers take the cluster's chunks from one queue in Redis (WORKERS).

Nodes here are real ``chatterbox-status serve`` processes; workers are the product's own
(``chatterbox-status worker`` started by a node with ``--workers cpu``, on the embedded
voice, or ``gated_worker.py`` on the GatedEngine double, whose HOLD chunks wait for a
gate file). Each test asserts what a user sees: the audio, the answer, the statistics.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import time
import wave

import aiohttp
import numpy as np
import redis.asyncio as aioredis
from doubles import ScriptedEngine
from eventsource import EventSource
from helpers import pcm16_reference

from chatterbox_status.redis_queue import CHUNKS, decode

from .test_cluster_status import TEXT, speak, wait_for


def workers_running(node) -> int:
    return sum(worker["running"] for worker in node.json("GET", "/health")["chunk_queue"]["workers"])


def seconds_of_speech(data: bytes) -> float:
    with wave.open(io.BytesIO(data)) as wav:
        samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
        assert np.abs(samples).max() > 1000, "the audio is silent"
        return wav.getnframes() / wav.getframerate()


async def test_a_node_without_engines_speaks_through_the_worker_another_node_started(start_node):
    a = start_node("a", "--workers", "cpu")  # serves HTTP and starts one worker (the embedded voice)
    b = start_node("b", "--workers", "none")  # serves HTTP only
    queue = b.json("GET", "/health")["chunk_queue"]
    assert queue["connected"] is True
    assert [(w["device"], w["engines"]) for w in queue["workers"]] == [("cpu", ["hibari"])]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        async with session.post(f"{b.base}/v1/audio/speech", json={"input": TEXT}, headers={"X-Request-ID": "through-a-worker-01"}) as response:
            assert response.status == 200, await response.text()
            spoken = seconds_of_speech(await response.read())
        async with session.post(f"{a.base}/v1/audio/speech", json={"input": TEXT}) as response:
            same = seconds_of_speech(await response.read())
    assert 2.0 < spoken == same  # one sentence of the embedded voice, whichever node took it
    def once_loaded() -> list | None:  # None (wait on) while the worker has loaded nothing yet
        workers = b.json("GET", "/health")["chunk_queue"]["workers"]
        return workers if workers and workers[0]["loaded"] else None

    loaded = wait_for(once_loaded, "the worker says it loaded hibari")
    assert loaded[0]["loaded"] == ["hibari"]
    record = a.json("GET", "/status/requests/through-a-worker-01")
    assert record["status"] == "completed" and record["node"] == b.name
    assert record["worker"] == queue["workers"][0]["name"]  # the worker A started spoke it


async def test_two_workers_run_two_requests_of_one_node_at_once(tmp_path, start_node, start_worker):
    gate = tmp_path / "gate"
    start_worker("w1", gate), start_worker("w2", gate)
    a = start_node("a", "--workers", "none")
    wait_for(lambda: len(a.json("GET", "/health")["chunk_queue"]["workers"]) == 2, "both workers registered")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        posts = [asyncio.ensure_future(speak(session, a, f"HOLD request {n}.", f"two-at-once-{n:04d}")) for n in range(2)]
        await asyncio.to_thread(wait_for, lambda: workers_running(a) == 2, "each worker runs one of the requests")
        def named() -> list[dict] | None:
            records = [a.json("GET", f"/status/requests/two-at-once-{n:04d}") for n in range(2)]
            return records if all("worker" in r for r in records) else None

        records = await asyncio.to_thread(wait_for, named, "both records name their worker")
        assert [r["status"] for r in records] == ["generating_audio"] * 2
        workers = {w["name"] for w in a.json("GET", "/health")["chunk_queue"]["workers"]}
        assert {r["worker"] for r in records} == workers  # one request on each worker
        gate.touch()
        assert [(await post).status for post in posts] == [200, 200]


async def test_a_chunk_running_on_a_worker_is_cancelled_through_another_node(tmp_path, start_node, start_worker):
    gate = tmp_path / "gate"
    start_worker("w1", gate)
    a, b = start_node("a", "--workers", "none"), start_node("b", "--workers", "none")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        posted = asyncio.ensure_future(speak(session, a, "HOLD this one.", "cancel-on-worker-01"))
        await asyncio.to_thread(wait_for, lambda: workers_running(a) == 1, "the worker runs the chunk")
        cancelled_at = time.monotonic()
        async with session.delete(f"{b.base}/v1/audio/speech/cancel-on-worker-01") as cancel:
            assert cancel.status == 200, await cancel.text()
        assert (await posted).status == 409
        assert time.monotonic() - cancelled_at < 5  # the engine stopped mid-chunk: the gate never opened
        # The worker is free again: the next request is spoken by it.
        assert (await speak(session, b, TEXT, "after-cancel-0001")).status == 200
    stats = wait_for(lambda: (s := b.statistics())["total_requests"] == 2 and s, "both requests folded")
    assert (stats["completed_requests"], stats["cancelled_requests"]) == (1, 1)


async def test_a_worker_killed_mid_chunk_ends_its_request_error_once_and_the_next_request_runs(tmp_path, start_node, start_worker):
    gate = tmp_path / "gate"
    first = start_worker("w1", gate)
    a = start_node("a", "--workers", "none")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        async with session.get(f"{a.base}/status/stream", params={"request_id": "killed-worker-01"}) as stream:
            events = EventSource(stream, timeout=60)
            await events.next_event()
            body, headers = {"input": "HOLD it."}, {"X-Request-ID": "killed-worker-01"}
            posted = asyncio.ensure_future(session.post(f"{a.base}/v1/audio/speech", json=body, headers=headers))
            await asyncio.to_thread(wait_for, lambda: workers_running(a) == 1, "the worker runs the chunk")
            os.kill(first.process.pid, signal.SIGKILL)
            killed_at = time.monotonic()
            response = await posted
            assert response.status == 500
            error = (await response.json())["error"]
            assert "engine worker" in error["message"] and "stopped" in error["message"]
            assert time.monotonic() - killed_at < 15  # within the heartbeat's TTL and a round of checks
            statuses = [e.json()["status"] for e in await events.until(lambda e: e.json().get("status") == "error") if e.type == "status"]
        assert statuses.count("error") == 1
        start_worker("w2", gate)
        assert (await speak(session, a, TEXT, "after-the-kill-01")).status == 200
    stats = wait_for(lambda: (s := a.statistics())["total_requests"] == 2 and not s["is_processing"] and s, "both requests folded")
    assert (stats["completed_requests"], stats["error_requests"], stats["cancelled_requests"]) == (1, 1, 0)


async def test_a_chunk_hung_on_a_worker_past_chunk_timeout_has_its_engine_process_replaced(tmp_path, start_node, start_worker):
    start_worker("w1", tmp_path / "never", "--ignore-cancel")  # a HOLD chunk hangs, cancelled or not
    a = start_node("a", "--workers", "none", "--chunk-timeout", "3")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        started = time.monotonic()
        async with session.post(f"{a.base}/v1/audio/speech", json={"input": "HOLD for ever."}) as response:
            assert response.status == 500
            assert "CHUNK_TIMEOUT (3 s)" in (await response.json())["error"]["message"]
        assert time.monotonic() - started < 15  # the timeout, the grace to honour the cancel, the kill
        # Had the hung engine process not been killed, this chunk would wait behind it and time out too.
        assert (await speak(session, a, TEXT, "after-the-hang-01")).status == 200


async def test_streamed_audio_from_a_worker_comes_in_windows_and_is_the_whole_audio(tmp_path, start_node, start_worker, redis_server):
    start_worker("w1", tmp_path / "gate", "--streams")  # each chunk's audio in three windows
    a = start_node("a", "--workers", "none")
    body = {"input": TEXT, "response_format": "pcm"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        async with session.post(f"{a.base}/v1/audio/speech", json=body) as response:
            whole = await response.read()
        async with session.post(f"{a.base}/v1/audio/speech/stream", json=body) as response:
            assert response.status == 200
            streamed = await response.read()
    tone = ScriptedEngine().tone(TEXT)
    assert streamed == whole == pcm16_reference(tone)
    client = aioredis.from_url(redis_server.url)
    frames = [decode(fields)[0]["type"] for _, fields in await client.xrange(f"chatterbox-status:replies:{a.name}")]
    await client.aclose()
    assert frames.count("audio_window") == 2  # the streamed request's first two thirds, ahead of its chunk's end


async def test_with_workers_redis_going_away_is_a_503_until_it_is_back(start_node, redis_server):
    a = start_node("a", "--workers", "cpu")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        assert (await speak(session, a, TEXT, "before-redis-goes")).status == 200
        redis_server.stop()
        health = await asyncio.to_thread(wait_for, lambda: (h := a.json("GET", "/health"))["status"] == "error" and h, "A notices")
        assert health["chunk_queue"]["connected"] is False or health["event_log"]["connected"] is False
        async with session.post(f"{a.base}/v1/audio/speech", json={"input": TEXT}) as refused:
            assert refused.status == 503
        redis_server.start()
        await asyncio.to_thread(
            wait_for, lambda: (h := a.json("GET", "/health"))["status"] == "healthy" and h["chunk_queue"]["workers"], "A and its worker are back"
        )
        assert (await speak(session, a, TEXT, "after-redis-is-back")).status == 200


async def test_a_worker_that_joins_takes_a_waiting_request_at_once(tmp_path, start_node, start_worker):
    gate = tmp_path / "gate"
    start_worker("w1", gate)
    a = start_node("a", "--workers", "none")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        held = asyncio.ensure_future(speak(session, a, "HOLD the only worker.", "joins-held-0001"))
        await asyncio.to_thread(wait_for, lambda: workers_running(a) == 1, "the only worker runs the held request")
        waiting = asyncio.ensure_future(speak(session, a, TEXT, "joins-waiting-01"))
        await asyncio.to_thread(wait_for, lambda: b'"status": "queued"' in a.call("GET", "/status/requests/joins-waiting-01")[1], "queued")
        start_worker("w2", gate)
        # Spoken by the new worker while the first still holds its request: not after it.
        assert (await asyncio.wait_for(waiting, 60)).status == 200
        assert not held.done()
        gate.touch()
        assert (await held).status == 200


async def test_a_waiting_interactive_request_goes_to_a_worker_before_a_long_text_chunk_queued_earlier(
    tmp_path, start_node, start_worker, redis_server
):
    """Chunks wait in the shared queue while the only worker is busy: a long-text job's chunk
    (node B), then an interactive request's (node C). When the worker frees, it takes the
    interactive one first, though it came later, as a user of a voice assistant expects."""
    gate = tmp_path / "gate"
    start_worker("w1", gate)
    a, b, c = (start_node(name, "--workers", "none") for name in "abc")
    store = aioredis.from_url(redis_server.url)

    async def waiting_chunks() -> int:  # in the queue's two streams, the running one too
        return sum([await store.xlen(stream) for stream in CHUNKS.values()])

    async def until_waiting(count: int, what: str) -> None:
        deadline = time.monotonic() + 20
        while await waiting_chunks() < count:
            assert time.monotonic() < deadline, f"not within 20 s: {what}"
            await asyncio.sleep(0.05)  # poll interval; the deadline decides

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        held = asyncio.ensure_future(speak(session, a, "HOLD the only worker.", "priority-held-01"))
        await asyncio.to_thread(wait_for, lambda: workers_running(a) == 1, "the worker runs A's request")
        job = {"input": "HOLD the long text's first chunk. And its second one.", "response_format": "wav"}
        status, raw = b.call("POST", "/audio/speech/long", job)
        assert status == 200, raw
        job_id = json.loads(raw)["job_id"]
        await until_waiting(2, "the job's first chunk waits in the queue")
        interactive = asyncio.ensure_future(speak(session, c, "HOLD the interactive request.", "priority-later-01"))
        await until_waiting(3, "the interactive chunk waits in the queue")

        async with session.delete(f"{a.base}/v1/audio/speech/priority-held-01") as cancel:
            assert cancel.status == 200  # the worker is free: it takes one of the two waiting
        assert (await held).status == 409
        taken = await asyncio.to_thread(
            wait_for, lambda: "worker" in (r := c.json("GET", "/status/requests/priority-later-01")) and r, "the worker takes C's request"
        )
        assert taken["status"] == "generating_audio"
        assert "worker" not in b.json("GET", f"/status/requests/{job_id}")  # the job's chunk waits on
        gate.touch()
        assert (await interactive).status == 200
        await asyncio.to_thread(wait_for, lambda: b.json("GET", f"/audio/speech/long/{job_id}")["status"] == "completed", "the job completes")
    await store.aclose()
