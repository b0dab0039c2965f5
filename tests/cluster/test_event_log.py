"""The Redis event log on its own, against a real redis-server: numbering, exactly-once
appends, and a node that starts after the stream was trimmed restoring a checkpoint."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import redis as sync_redis
import redis.asyncio as aioredis
from conftest import core_of
from doubles import ScriptedEngine

from chatterbox_status import redis_events
from chatterbox_status.redis_events import RedisEventBus
from chatterbox_status.tracker import StatusTracker

from .conftest import eventually


def request_events(n: int) -> list[tuple[str, dict]]:
    """Request ``n`` queued, then ended: completed, failed or cancelled by turns."""
    request_id = f"request-{n:05d}"
    ending = ("completed", "error", "cancelled")[n % 3]
    return [
        ("status", {"request_id": request_id, "status": "queued", "text_length": 10 + n, "engine": "hibari"}),
        ("status", {"request_id": request_id, "status": "generating_audio", "progress_percentage": 50.0}),
        ("status", {"request_id": request_id, "status": ending, "progress_percentage": 100.0}),
    ]


@pytest.fixture
async def start_bus(redis_server):
    """A node's bus and the tracker folding it (``await start_bus(name)``); all stopped after."""
    buses: list[RedisEventBus] = []

    async def start(name: str) -> tuple[RedisEventBus, StatusTracker]:
        tracker = StatusTracker(history_size=20, default_engine="hibari", node=name)
        bus = RedisEventBus(redis_server.url, name, tracker, replay_size=64)
        bus.add_listener(tracker.apply)
        buses.append(bus)
        await bus.start()
        return bus, tracker

    yield start
    for bus in buses:
        await bus.stop()


async def test_a_resent_event_is_appended_once(redis_server):
    client = aioredis.from_url(redis_server.url)
    append = client.register_script(redis_events.APPEND)
    keys = [redis_events.STREAM, redis_events.SEQUENCE, redis_events.APPENDED]
    first = await append(keys=keys, args=["node-a", 1, 1000, "status", "{}"])
    again = await append(keys=keys, args=["node-a", 1, 1000, "status", "{}"])  # after a lost reply
    other = await append(keys=keys, args=["node-b", 1, 1000, "status", "{}"])
    assert (first, again, other) == (1, 0, 2)
    assert await client.xlen(redis_events.STREAM) == 2
    await client.aclose()


async def test_a_node_started_after_trimming_restores_the_checkpoint_and_agrees(redis_server, start_bus, monkeypatch):
    monkeypatch.setattr(redis_events, "CHECKPOINT_EVERY", 50)
    monkeypatch.setattr(redis_events, "STREAM_LENGTH", 10)  # Redis trims whole nodes of 100 entries
    first, first_tracker = await start_bus("node-a")
    for n in range(150):
        for type, data in request_events(n):
            first.publish(type, data)
        await first.settled()  # a node that keeps up with the stream
    first.publish("status", {"request_id": "in-flight", "status": "queued", "text_length": 7})
    await first.settled()
    assert first.last_id == 451
    client = aioredis.from_url(redis_server.url)
    oldest = int((await client.xrange(redis_events.STREAM, count=1))[0][1][b"seq"])
    assert oldest > 1  # the stream no longer holds the beginning
    later, later_tracker = await start_bus("node-b")
    await later.settled()
    assert later.last_id == 451
    assert later_tracker.checkpoint() == first_tracker.checkpoint()
    stats = later_tracker.statistics()
    assert (stats["total_requests"], stats["completed_requests"], stats["error_requests"], stats["cancelled_requests"]) == (
        151, 50, 50, 50
    )
    assert [r.request_id for r in later_tracker.queued()] == ["in-flight"]
    # and both go on folding the same events
    later.publish("status", {"request_id": "in-flight", "status": "completed"})
    await later.settled()
    await first.settled()
    assert first_tracker.checkpoint() == later_tracker.checkpoint()
    await client.aclose()


async def test_a_checkpoint_taken_while_a_request_runs_and_a_job_is_paused_restores_both(redis_server, start_bus, monkeypatch):
    """Every checkpoint of the trimmed stream was taken while a request was running and a
    long-text job was paused: a node that starts from the newest one shows both as the
    first node does (status, progress, the paused job findable but not in the queue), and
    folds their ends like it."""
    monkeypatch.setattr(redis_events, "CHECKPOINT_EVERY", 50)
    monkeypatch.setattr(redis_events, "STREAM_LENGTH", 10)  # Redis trims whole nodes of 100 entries
    first, first_tracker = await start_bus("node-a")
    for type, data in [
        ("status", {"request_id": "running-one", "status": "queued", "text_length": 40, "engine": "hibari"}),
        ("status", {"request_id": "running-one", "status": "generating_audio", "progress_percentage": 25.0}),
        ("status", {"request_id": "paused-job", "status": "queued", "text_length": 4000, "engine": "hibari", "durable": True}),
        ("status", {"request_id": "paused-job", "status": "generating_audio", "progress_percentage": 10.0}),
        ("status", {"request_id": "paused-job", "status": "paused", "progress_percentage": 10.0}),
    ]:
        first.publish(type, data)
    await first.settled()
    assert [first_tracker.find(r).status for r in ("running-one", "paused-job")] == ["generating_audio", "paused"]
    async with asyncio.timeout(30):  # a node that keeps up folds these in well under a second
        for n in range(100):  # checkpoints at events 50, 100, ... 300, each with both in it
            for type, data in request_events(n):
                first.publish(type, data)
            await first.settled()
    assert first.last_id == 305
    client = aioredis.from_url(redis_server.url)
    assert int((await client.xrange(redis_events.STREAM, count=1))[0][1][b"seq"]) > 5  # their first events are gone
    await client.aclose()
    later, later_tracker = await start_bus("node-b")
    await later.settled()
    assert later.last_id == 305
    for tracker in (first_tracker, later_tracker):
        running, paused = tracker.find("running-one"), tracker.find("paused-job")
        assert running is not None and paused is not None
        assert (running.status, running.progress["progress_percentage"]) == ("generating_audio", 25.0)
        assert (paused.status, paused.progress["progress_percentage"]) == ("paused", 10.0)
        shown = tracker.status()
        assert (shown["request_id"], shown["node"]) == ("running-one", "node-a")  # the node that runs it
        assert tracker.active_count == 1
    assert later_tracker.checkpoint() == first_tracker.checkpoint()
    for type, data in [
        ("status", {"request_id": "running-one", "status": "completed", "progress_percentage": 100.0}),
        ("status", {"request_id": "paused-job", "status": "generating_audio", "progress_percentage": 10.0}),
        ("status", {"request_id": "paused-job", "status": "completed", "progress_percentage": 100.0}),
    ]:
        later.publish(type, data)
    await later.settled()
    async with asyncio.timeout(10):
        while first.last_id < 308:
            await asyncio.sleep(0.01)  # poll interval; the bound decides
    for tracker in (first_tracker, later_tracker):
        assert [tracker.find(r).status for r in ("running-one", "paused-job")] == ["completed", "completed"]
        assert tracker.statistics()["total_requests"] == 102
    assert first_tracker.checkpoint() == later_tracker.checkpoint()


async def test_settled_returns_once_this_nodes_events_are_folded_here(start_bus):
    bus, tracker = await start_bus("node-a")
    other, other_tracker = await start_bus("node-b")
    for type, data in request_events(0):
        bus.publish(type, data)
    assert tracker.find("request-00000") is None  # numbered by Redis first, like any node's
    await bus.settled()
    assert tracker.find("request-00000").status == "completed"
    assert bus.last_id == 3
    await other.settled()  # other published nothing: it need not have folded these yet
    async with asyncio.timeout(5):
        while other.last_id < 3:
            await asyncio.sleep(0.01)  # poll interval; the bound decides
    assert other_tracker.checkpoint() == tracker.checkpoint()


def test_the_url_shown_in_health_and_logs_has_no_password():
    assert redis_events.redacted("redis://:secret@10.0.0.5:6380/2") == "redis://:***@10.0.0.5:6380/2"
    assert redis_events.redacted("redis://user:secret@cache.internal/0") == "redis://user:***@cache.internal/0"
    assert redis_events.redacted("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


async def test_a_listener_that_raises_does_not_stop_the_node_folding(start_bus, caplog):
    bus, tracker = await start_bus("node-a")

    def broken(event) -> None:
        if event.data.get("request_id") == "request-00001":
            raise RuntimeError("a bug in a listener")

    bus.add_listener(broken)
    for n in (1, 2):
        for type, data in request_events(n):
            bus.publish(type, data)
    await bus.settled()
    assert tracker.find("request-00002").status == "cancelled"  # folded after the bug
    assert bus.problem is None
    assert "a bug in a listener" in caplog.text


async def test_a_request_is_answered_once_its_end_is_folded_so_the_next_status_read_sees_it(redis_server, make_client, scripted):
    """A node on the Redis event log (in this process) answers a request only once its last
    event came back folded (``pipeline.process`` awaits the bus's ``settled``), so a client
    that reads the request's status right after its answer sees it completed. Redis holds the
    node's appends a while (CLIENT PAUSE WRITE) as the request's last chunk ends: the answer
    waits for them."""
    client = await make_client(engine=scripted, redis_url=redis_server.url)
    redis = aioredis.from_url(redis_server.url)
    scripted.hold()
    speaking = asyncio.ensure_future(
        client.post("/v1/audio/speech", json={"input": "Answered once the log has it."}, headers={"X-Request-ID": "folded-first-0001"})
    )
    await asyncio.to_thread(scripted.wait_started)
    await redis.execute_command("CLIENT", "PAUSE", 1000, "WRITE")
    await redis.aclose()
    scripted.release()
    response = await speaking
    assert response.status == 200
    record = await (await client.get("/status/requests/folded-first-0001")).json()
    assert record["status"] == "completed", record


async def test_the_requests_of_a_node_that_stopped_end_in_error_but_not_its_long_text_jobs(redis_server, start_bus, monkeypatch):
    """A node that stopped (its events are in the stream, it no longer beats) left a
    long-text job and a request running: another node ends the request as an error that
    names the node, and leaves the job (its node resumes it when it starts again); its own
    request stays as it is."""
    monkeypatch.setattr(redis_events, "HEARTBEAT_SECONDS", 0.1)
    client = aioredis.from_url(redis_server.url)
    append = client.register_script(redis_events.APPEND)
    keys = [redis_events.STREAM, redis_events.SEQUENCE, redis_events.APPENDED]
    number = 0
    for request_id, extra in (("job-of-gone", {"durable": True}), ("request-of-gone", {})):
        for data in (
            {"request_id": request_id, "status": "queued", "text_length": 30, "engine": "hibari", **extra},
            {"request_id": request_id, "status": "generating_audio", "progress_percentage": 20.0},
        ):
            number += 1
            payload = json.dumps({"timestamp": time.time(), **data, "node": "node-gone"})  # as the node's bus sent it
            assert await append(keys=keys, args=["node-gone", number, 1000, "status", payload]) == number
    await client.aclose()
    bus, tracker = await start_bus("node-a")
    bus.publish("status", {"request_id": "request-of-a", "status": "queued", "text_length": 30, "engine": "hibari"})
    await bus.settled()
    async with asyncio.timeout(10):
        while tracker.find("request-of-gone").status != "error":
            await asyncio.sleep(0.01)  # poll interval; the bound decides
    ended = tracker.find("request-of-gone").view(0.0)
    assert ended["error_message"] == "The server process running it (node-gone) stopped"
    assert ended["node"] == "node-gone"  # the node that ran it, though node-a sent its end
    # the watcher's same pass saw the job, queued before the request
    assert [tracker.find(r).status for r in ("job-of-gone", "request-of-a")] == ["generating_audio", "queued"]
    assert tracker.statistics()["error_requests"] == 1


async def test_a_node_shows_its_own_engine_as_its_own_events_left_it(redis_server, make_client, scripted):
    """On the event log /status shows the node's own engine, loaded and measured, in the
    documented shape; another node's event about its engine of the same name (loading
    there) changes nothing here."""
    client = await make_client(engine=scripted, redis_url=redis_server.url)
    bus = core_of(client).bus
    redis = aioredis.from_url(redis_server.url)
    append = redis.register_script(redis_events.APPEND)
    keys = [redis_events.STREAM, redis_events.SEQUENCE, redis_events.APPENDED]
    payload = json.dumps({"timestamp": time.time(), "name": "scripted", "state": "loading", "load_progress": 0.0, "node": "node-other"})
    seq = await append(keys=keys, args=["node-other", 1, 1000, "engine", payload])
    await redis.aclose()
    async with asyncio.timeout(10):
        while bus.last_id < seq:
            await asyncio.sleep(0.01)  # poll interval; the bound decides
    response = await client.get("/status")
    assert response.status == 200, await response.text()
    [engine] = (await response.json())["engines"]
    assert (engine["name"], engine["state"], engine["load_progress"]) == ("scripted", "ready", 100.0)
    assert engine["seconds_per_char"] > 0


async def test_a_node_whose_redis_refuses_writes_answers_clearly_until_it_takes_them_again(start_app, redis_server):
    """Redis at its memory limit (maxmemory, noeviction) refuses every write, so a node that
    starts then cannot append its events, its engines' first ones included. It answers all the
    same: its models not started yet, /health with the event log's error, speech with a clear
    503 (never a 500); once Redis takes writes again, its engine shows ready and speaks."""
    store = sync_redis.Redis.from_url(redis_server.url)
    store.config_set("maxmemory-policy", "noeviction")
    store.config_set("maxmemory", 1)
    try:
        a = await start_app("a", ScriptedEngine())
        models = (await (await a.get("/v1/models")).json())["data"]
        assert models and {model["engine_state"]["state"] for model in models} == {"not_started"}
        health = await (await a.get("/health")).json()
        assert health["event_log"]["connected"] is False and "maxmemory" in health["event_log"]["error"]
        resp = await a.post("/v1/audio/speech", json={"input": "Hello there."})
        assert resp.status == 503
        assert (await resp.json())["error"]["message"].startswith("The request cannot be tracked: the event log")
    finally:
        store.config_set("maxmemory", 0)
    await eventually(lambda: core_of(a).tracker.engine_state("scripted")["state"] == "ready", "the engine's events are folded")
    resp = await a.post("/v1/audio/speech", json={"input": "Hello there."})
    assert resp.status == 200 and len(await resp.read()) > 44
    statistics = await (await a.get("/status/statistics")).json()
    assert (statistics["total_requests"], statistics["completed_requests"]) == (1, 1)
