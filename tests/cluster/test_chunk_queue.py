"""The chunk queue's worker end on its own, against a real redis-server: the product's
EngineWorker, in this process, on the ScriptedEngine double, reading calls a test node put
in the streams and answering on that node's reply stream."""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest
import redis.asyncio as aioredis
from doubles import ScriptedEngine, ThreadHost
from redis.exceptions import ConnectionError as RedisConnectionError

from chatterbox_status.config import Settings
from chatterbox_status.engine_pool import EngineSlot
from chatterbox_status.engine_worker import EngineWorker
from chatterbox_status.engines.base import SynthesisParams
from chatterbox_status.events import EventBus
from chatterbox_status.redis_events import ALIVE
from chatterbox_status.redis_queue import CANCELLED, CHUNKS, REPLIES, OrderedSender, decode, encode, ensure_group
from chatterbox_status.redis_retry import keep

NODE = "test-node"
PARAMS = vars(SynthesisParams(exaggeration=0.5, cfg_weight=0.5, temperature=0.8))


def call(call_id: int, text: str, priority: str, node: str = NODE) -> dict:
    return {
        "node": node, "call": call_id, "engine": "scripted", "text": text, "voice": {"source": "default", "path": None},
        "params": PARAMS, "stream": False, "job": f"request-{call_id}", "priority": priority,
    }


@pytest.fixture
async def client(redis_server):
    client = aioredis.from_url(redis_server.url)
    await ensure_group(client)
    await client.set(ALIVE + NODE, "1")
    yield client
    await client.aclose()


@contextlib.asynccontextmanager
async def running_worker(redis_url: str, engine: ScriptedEngine):
    bus = EventBus()
    worker = EngineWorker(Settings(redis_url=redis_url), [EngineSlot(ThreadHost(engine), bus, -1)], bus)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        yield worker
    finally:
        stop.set()
        await task


async def answers(client: aioredis.Redis, count: int, node: str = NODE) -> list[dict]:
    """The first ``count`` final answers (audio or failed) on ``node``'s reply stream, with
    every frame before them."""
    frames: list[tuple[dict, bytes]] = []
    position = "0-0"
    async with asyncio.timeout(30):
        while sum(header["type"] in ("audio", "failed") for header, _ in frames) < count:
            reply = await client.xread({REPLIES + node: position}, block=1000)
            for entry_id, fields in reply[0][1] if reply else []:
                position = entry_id
                frames.append(decode(fields))
    return [{**header, "samples": len(payload) // 4} for header, payload in frames]


async def test_a_worker_takes_interactive_chunks_before_background_ones_queued_earlier(redis_server, client):
    await client.xadd(CHUNKS["background"], encode(call(1, "A long-text chunk.", "background")))
    await client.xadd(CHUNKS["interactive"], encode(call(2, "An interactive request.", "interactive")))
    engine = ScriptedEngine()
    async with running_worker(redis_server.url, engine):
        frames = await answers(client, 2)
    assert [(f["type"], f["call"]) for f in frames if f["type"] in ("claimed", "audio")] == [
        ("claimed", 2), ("audio", 2), ("claimed", 1), ("audio", 1)
    ]
    assert engine.calls[-2:] == ["An interactive request.", "A long-text chunk."]  # after its two warm-up calls
    audio = {f["call"]: f["samples"] for f in frames if f["type"] == "audio"}
    assert audio == {1: len(engine.tone("A long-text chunk.")), 2: len(engine.tone("An interactive request."))}
    for stream in CHUNKS.values():  # answered, so acknowledged and gone
        assert await client.xlen(stream) == 0


async def test_a_chunk_cancelled_before_a_worker_claims_it_is_answered_cancelled_unspoken(redis_server, client):
    await client.set(f"{CANCELLED}{NODE}:7", "1")
    await client.xadd(CHUNKS["interactive"], encode(call(7, "Never to be spoken.", "interactive")))
    engine = ScriptedEngine()
    async with running_worker(redis_server.url, engine):
        frames = await answers(client, 1)
    assert [(f["type"], f.get("kind")) for f in frames if f["type"] != "claimed"] == [("failed", "cancelled")]
    assert "Never to be spoken." not in engine.calls


async def test_a_chunk_of_a_node_that_stopped_is_not_spoken(redis_server, client):
    await client.xadd(CHUNKS["interactive"], encode(call(3, "Its server is gone.", "interactive", node="gone-node")))
    engine = ScriptedEngine()
    async with running_worker(redis_server.url, engine):
        frames = await answers(client, 1, node="gone-node")
    failed = frames[-1]
    assert failed["type"] == "failed" and "gone-node" in failed["message"] and "stopped" in failed["message"]
    assert "Its server is gone." not in engine.calls


async def test_a_worker_registers_what_it_offers_while_it_runs_and_is_gone_once_stopped(redis_server, client):
    engine = ScriptedEngine()
    async with running_worker(redis_server.url, engine) as worker:
        key = f"chatterbox-status:worker:{worker.name}"
        async with asyncio.timeout(10):
            while "scripted" not in (registration := json.loads(await client.get(key) or "{}")).get("loaded", []):
                await asyncio.sleep(0.05)  # poll interval: the heartbeat renews it every second
        assert await client.sismember("chatterbox-status:workers", worker.name)
    assert registration["engines"]["scripted"]["sample_rate"] == ScriptedEngine.sample_rate
    assert (registration["capacity"], registration["running"], registration["device"]) == (1, 0, "auto")
    assert await client.exists(key) == 0


async def test_a_loop_cancelled_inside_a_client_call_that_turns_the_cancel_into_an_error_still_ends():
    """redis-py may answer a cancelled blocking read with a connection error: the loop must
    end all the same, or stopping a worker (or a node) would wait on it for ever."""
    errors: list[BaseException] = []
    entered = asyncio.Event()

    async def blocking_read() -> None:
        entered.set()
        try:
            await asyncio.Event().wait()  # a blocking XREADGROUP
        except asyncio.CancelledError:
            raise RedisConnectionError("Connection closed by server.") from None

    task = asyncio.create_task(keep(blocking_read, errors.append))
    await entered.wait()
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=5)
    assert done and task.cancelled()
    assert errors == []  # not taken for Redis going away


async def sent(redis_url: str, count: int) -> list[int]:
    """The list the test's commands push to, once it holds ``count`` (a client of its own:
    one from before a restart of Redis holds a dead connection)."""
    async with aioredis.from_url(redis_url) as client, asyncio.timeout(30):
        while await client.llen("sent") < count:
            await asyncio.sleep(0.05)  # poll interval; the timeout decides
        return [int(n) for n in await client.lrange("sent", 0, -1)]


async def test_commands_put_while_redis_is_away_are_sent_once_it_is_back_in_order(redis_server, caplog):
    """An ordered sender keeps the batch that failed at the head: more than a batch put
    during an outage reaches Redis once it is back, none lost, none reordered."""
    async with aioredis.from_url(redis_server.url) as sender_client:
        sender = OrderedSender(sender_client, "test-sender")
        sender.start()
        try:
            sender.put(lambda pipe: pipe.rpush("sent", 0))
            assert await sent(redis_server.url, 1) == [0]
            redis_server.stop()
            for n in range(1, 300):
                sender.put(lambda pipe, n=n: pipe.rpush("sent", n))
            async with asyncio.timeout(10):
                while "commands wait to be sent again" not in caplog.text:
                    await asyncio.sleep(0.05)  # poll interval: the sender's first retry comes within 0.1 s
            redis_server.start()
            assert await sent(redis_server.url, 300) == list(range(300))
        finally:
            await sender.stop()
