"""Long-text jobs shared by two nodes (REDIS_URL), both apps in this test's process on a real
redis-server, each with a ScriptedEngine of its own: what ``test_long_text_jobs`` checks with
server processes, here where the test can see which node's engine spoke what (and where
mutation testing reaches the manager's cluster code)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path

import pytest
import redis as sync_redis
from conftest import build_app, core_of
from doubles import ScriptedEngine
from helpers import lock_exclusively
from test_long_text import SENTENCES, error_of, expected_frames, manager_of, spoken, status_of, submit, wav_frames

from chatterbox_status.longtext import files
from chatterbox_status.longtext import manager as manager_module
from chatterbox_status.longtext.manager import LEASE_RENEW_SECONDS, MB, LongTextManager
from chatterbox_status.longtext.redis_store import LEASE_SECONDS, lease

from .conftest import eventually


def in_thread(fn, *args):
    return asyncio.to_thread(fn, *args)


async def second_chunk_held(client, engine: ScriptedEngine) -> str:
    engine.hold()
    job_id = (await submit(client))["job_id"]
    assert await in_thread(engine.wait_started) == SENTENCES[0]
    engine.release(1)
    assert await in_thread(engine.wait_started) == SENTENCES[1]
    return job_id


def job_dir(client, job_id: str) -> Path:
    return files.job_dir(manager_of(client).root, job_id)


async def test_a_job_runs_on_one_node_and_is_paused_resumed_served_and_deleted_through_the_other(start_app, tmp_path):
    one, other = ScriptedEngine(), ScriptedEngine()
    a, b = await start_app("a", one), await start_app("b", other)
    job_id = await second_chunk_held(a, one)
    assert (await status_of(b, job_id))["status"] == "processing"

    began = time.monotonic()
    resp = await b.put(f"/audio/speech/long/{job_id}/pause")  # A runs it: B asks A
    assert resp.status == 200, await resp.text()
    assert time.monotonic() - began < LEASE_RENEW_SECONDS  # answered on A's event, not at B's next look
    assert (await resp.json())["status"] == "paused"
    assert not manager_of(a).is_running(await manager_of(a).get(job_id))  # A's run stopped
    assert core_of(b).tracker.find(job_id).status == "paused"
    assert (await b.put(f"/audio/speech/long/{job_id}/pause")).status == 409

    resp = await b.put(f"/audio/speech/long/{job_id}/resume")  # now B runs it
    assert resp.status == 200, await resp.text()
    await asyncio.wait_for(manager_of(b).wait(job_id), 30)
    assert (await status_of(a, job_id))["status"] == "completed"
    assert spoken(one) == SENTENCES[:2] and spoken(other) == SENTENCES[1:]  # the paused chunk again, on B
    record = core_of(a).tracker.find(job_id)
    assert record.status == "completed" and record.fields["node"] == core_of(b).bus.node

    assert not (job_dir(a, job_id) / "output.wav").exists()
    from_a = await (await a.get(f"/audio/speech/long/{job_id}/download")).read()  # from Redis
    from_b = await (await b.get(f"/audio/speech/long/{job_id}/download")).read()
    assert from_a == from_b
    assert len(wav_frames(from_a)[1]) == expected_frames(one, SENTENCES, 0)

    # The audio the cluster's jobs hold counts against LONG_TEXT_MAX_DISK_MB on every node,
    # not only the files on a node's own disk.
    held = await manager_of(b)._db("usage")
    assert held > 0
    c = await start_app("c", ScriptedEngine(), max_disk_mb=0.9 * held / MB)
    resp = await c.post("/audio/speech/long", json={"input": SENTENCES[0], "response_format": "wav"})
    assert resp.status == 507, await resp.text()
    assert "Long-text storage is full" in (await resp.json())["error"]["message"]

    resp = await a.delete(f"/audio/speech/long/{job_id}", params={"action": "delete"})
    assert resp.status == 200, await resp.text()
    assert (await b.get(f"/audio/speech/long/{job_id}")).status == 404
    assert not job_dir(a, job_id).exists()
    await eventually(lambda: not job_dir(b, job_id).exists(), "B removed its copy of the job's files")
    assert await manager_of(b)._db("usage") == 0


async def test_a_node_that_stops_leaves_its_job_to_another_which_finishes_it(start_app):
    one, other = ScriptedEngine(), ScriptedEngine()
    a, b = await start_app("a", one), await start_app("b", other)
    job_id = await second_chunk_held(a, one)
    await a.close()  # shut down: the job stays runnable, its lease let go
    record = core_of(b).tracker.find(job_id)
    await eventually(lambda: record.fields["node"] == core_of(b).bus.node, "B takes the job (its record names B)")
    await asyncio.wait_for(manager_of(b).wait(job_id), 30)
    view = await status_of(b, job_id)
    assert view["status"] == "completed"
    assert spoken(other) == SENTENCES[1:]  # from the first unfinished chunk; A's first chunk kept
    data = await (await b.get(f"/audio/speech/long/{job_id}/download")).read()
    assert len(wav_frames(data)[1]) == expected_frames(one, SENTENCES, 0)
    statistics = await (await b.get("/status/statistics")).json()
    assert (statistics["total_requests"], statistics["completed_requests"]) == (1, 1)


async def test_a_job_no_node_runs_is_cancelled_by_any_node(start_app):
    """A job whose node stopped, cancelled before another node could take it over (the other
    node's one long-text slot is busy): the node asked holds it, stores the cancel and ends it
    in the status API, where it was still generating."""
    one, other = ScriptedEngine(), ScriptedEngine()
    a, b = await start_app("a", one), await start_app("b", other, max_concurrent_jobs=1)
    busy = await second_chunk_held(b, other)
    job_id = await second_chunk_held(a, one)
    await a.close()
    resp = await b.delete(f"/audio/speech/long/{job_id}")
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["status"] == "cancelled"
    assert spoken(other) == SENTENCES[:2]  # B never ran A's job
    assert core_of(b).tracker.find(job_id).status == "cancelled"
    assert core_of(b).tracker.find(busy).status == "generating_audio"
    statistics = await (await b.get("/status/statistics")).json()
    assert (statistics["total_requests"], statistics["cancelled_requests"]) == (2, 1)


async def test_a_job_no_node_runs_is_deleted_by_any_node(start_app):
    """As above, deleted instead of cancelled: the node asked ends the job in the status API
    (still generating there), removes it from the cluster's store, and no node speaks it."""
    one, other = ScriptedEngine(), ScriptedEngine()
    a, b = await start_app("a", one), await start_app("b", other, max_concurrent_jobs=1)
    busy = await second_chunk_held(b, other)
    job_id = await second_chunk_held(a, one)
    await a.close()
    assert core_of(b).tracker.find(job_id).status == "generating_audio"
    resp = await b.delete(f"/audio/speech/long/{job_id}", params={"action": "delete"})
    assert resp.status == 200, await resp.text()
    assert (await b.get(f"/audio/speech/long/{job_id}")).status == 404
    record = await (await b.get(f"/status/requests/{job_id}")).json()
    assert (record["status"], record["progress"]["current_step"]) == ("cancelled", "Cancelled")
    other.release(10)
    await asyncio.wait_for(manager_of(b).wait(busy), 30)
    assert (await status_of(b, busy))["status"] == "completed"
    assert spoken(other) == SENTENCES  # B's own job only
    statistics = await (await b.get("/status/statistics")).json()
    assert (statistics["total_requests"], statistics["cancelled_requests"]) == (2, 1)


async def test_the_jobs_a_node_kept_before_redis_url_become_the_clusters(start_app, aiohttp_client, tmp_path):
    """A server that kept its jobs in its own database is restarted with REDIS_URL: its jobs
    (a finished one and one stopped mid-way) are the cluster's, every node lists and serves
    them, the stopped one is finished, and the database is set aside, not read again."""
    alone = ScriptedEngine()
    client = await aiohttp_client(build_app(alone, tmp_path / "a" / "data", tmp_path / "a" / "voices", silence_padding_ms=0))
    await asyncio.wait_for(core_of(client).worker.wait_loaded(), 30)
    done = (await submit(client))["job_id"]
    await asyncio.wait_for(manager_of(client).wait(done), 30)
    stopped = await second_chunk_held(client, alone)
    await client.close()
    alone.release(10_000)

    a, b = await start_app("a", ScriptedEngine()), await start_app("b", ScriptedEngine())
    listed = await (await b.get("/audio/speech/long")).json()
    assert {job["job_id"] for job in listed["jobs"]} == {done, stopped}
    resp = await b.get(f"/audio/speech/long/{done}/download")
    assert resp.status == 200
    assert len(wav_frames(await resp.read())[1]) == expected_frames(alone, SENTENCES, 0)
    await eventually(lambda: (r := core_of(b).tracker.find(stopped)) is not None and r.status == "completed", "the stopped job is finished")
    data = await (await a.get(f"/audio/speech/long/{stopped}/download")).read()
    assert len(wav_frames(data)[1]) == expected_frames(alone, SENTENCES, 0)
    database = manager_of(a).root / "jobs.sqlite3"
    assert not database.exists() and len(list(database.parent.glob("jobs.sqlite3.shared-*"))) == 1


async def jobs_of_a_node_before_redis_url(aiohttp_client, tmp_path: Path, count: int) -> list[str]:
    """Jobs node "a" kept in a database of its own (no REDIS_URL) when it stopped: the first
    stopped at its second chunk (its first chunk's file done), the others not begun."""
    alone = ScriptedEngine()
    client = await aiohttp_client(build_app(alone, tmp_path / "a" / "data", tmp_path / "a" / "voices", silence_padding_ms=0))
    await asyncio.wait_for(core_of(client).worker.wait_loaded(), 30)
    ids = [await second_chunk_held(client, alone)] + [(await submit(client))["job_id"] for _ in range(count - 1)]
    await client.close()
    alone.release(10_000)
    return ids


async def test_no_node_takes_over_a_job_another_is_still_copying_into_the_cluster(start_app, aiohttp_client, tmp_path, redis_server, monkeypatch):
    """A node sharing the jobs of its own database holds each while its files go into Redis: a
    node that looks for jobs to take over meanwhile leaves it (it would run without the
    finished chunks' files), and the job finishes once, no chunk spoken again."""
    (job_id,) = await jobs_of_a_node_before_redis_url(aiohttp_client, tmp_path, 1)
    other = ScriptedEngine()
    b = await start_app("b", other)
    store = sync_redis.Redis.from_url(redis_server.url)
    copying, b_looked, held_by_the_copier = asyncio.Event(), asyncio.Event(), []
    db, take_orphans = LongTextManager._db, LongTextManager._take_orphans

    async def slow_copy(self, method: str, *args, **kwargs):
        if method == "put_file" and self is not manager_of(b) and not b_looked.is_set():
            copying.set()  # A added the job to Redis; its first file is on the way
            await asyncio.wait_for(b_looked.wait(), 3 * LEASE_RENEW_SECONDS)
            held_by_the_copier.append(await in_thread(store.get, lease(job_id)) == self.node.encode())
        return await db(self, method, *args, **kwargs)

    async def watched_look(self) -> None:
        began_while_copying = copying.is_set()
        await take_orphans(self)
        if began_while_copying and self is manager_of(b):
            b_looked.set()

    monkeypatch.setattr(LongTextManager, "_db", slow_copy)
    monkeypatch.setattr(LongTextManager, "_take_orphans", watched_look)
    engine = ScriptedEngine()
    a = await start_app("a", engine)
    assert held_by_the_copier == [True]  # B looked for jobs to take while A copied, and left it
    await eventually(lambda: (r := core_of(a).tracker.find(job_id)) is not None and r.status == "completed", "the job is finished")
    assert sorted(spoken(engine) + spoken(other)) == sorted(SENTENCES[1:])  # the first chunk's file was kept
    data = await (await b.get(f"/audio/speech/long/{job_id}/download")).read()
    assert len(wav_frames(data)[1]) == expected_frames(engine, SENTENCES, 0)


async def test_a_node_cut_off_from_redis_while_sharing_its_jobs_shares_the_rest_after(
    start_app, aiohttp_client, tmp_path, redis_server, monkeypatch, caplog
):
    """Redis goes away after the first of a node's own jobs went into the cluster: the others
    stay in the node's database, and its next start shares them, though by then another node
    runs the first (which the node, finding it held, leaves). No job is lost."""
    first, second = await jobs_of_a_node_before_redis_url(aiohttp_client, tmp_path, 2)
    other = ScriptedEngine()
    b = await start_app("b", other)
    other.hold()  # B keeps running the first job once it takes it
    db = LongTextManager._db

    async def redis_goes_away(self, method: str, *args, **kwargs):
        if method == "add" and args[0].job_id == second and self is not manager_of(b):
            await in_thread(redis_server.stop)
        return await db(self, method, *args, **kwargs)

    monkeypatch.setattr(LongTextManager, "_db", redis_goes_away)
    a = await start_app("a", ScriptedEngine())
    monkeypatch.setattr(LongTextManager, "_db", db)
    await a.close()
    await in_thread(redis_server.start)
    store, node_b = sync_redis.Redis.from_url(redis_server.url), core_of(b).bus.node
    await eventually(lambda: store.get(lease(first)) == node_b.encode(), "B runs the first job")
    assert (await b.get(f"/audio/speech/long/{second}")).status == 404  # not in the cluster yet

    # Started again at once: the second job's lease, taken before Redis went away, still
    # holds; the job joins the cluster once it lapses.
    again = ScriptedEngine()
    a = await start_app("a", again)
    again.hold()  # A, if it takes the second job, keeps running it until the checks are done
    assert store.pttl(lease(second)) > 0
    assert f"long-text jobs {second} of this node's database wait for a lease to lapse" in caplog.text
    await eventually(lambda: manager_of(b).store.get(second) is not None, "the second job is the cluster's", LEASE_SECONDS + 3 * LEASE_RENEW_SECONDS)
    assert (await status_of(b, second))["status"] in {"pending", "processing"}
    assert store.get(lease(first)) == node_b.encode()  # left to B
    other.release(10_000)
    again.release(10_000)
    for job_id in (first, second):
        await eventually(lambda job_id=job_id: (r := core_of(b).tracker.find(job_id)) is not None and r.status == "completed", f"{job_id} completed")
    database = manager_of(a).root / "jobs.sqlite3"
    assert not database.exists() and len(list(database.parent.glob("jobs.sqlite3.shared-*"))) == 1


async def test_a_node_finding_redis_away_at_its_start_shares_its_jobs_once_it_is_back(start_app, aiohttp_client, tmp_path, redis_server, monkeypatch):
    """Redis goes away while a node starts putting its own jobs into the cluster: the node
    serves on, and once Redis is back (and the lease it took before lapses) its jobs are the
    cluster's, without a restart."""
    (job_id,) = await jobs_of_a_node_before_redis_url(aiohttp_client, tmp_path, 1)
    db = LongTextManager._db

    async def redis_goes_away(self, method: str, *args, **kwargs):
        if method == "add":
            monkeypatch.setattr(LongTextManager, "_db", db)
            await in_thread(redis_server.stop)
        return await db(self, method, *args, **kwargs)

    monkeypatch.setattr(LongTextManager, "_db", redis_goes_away)
    engine = ScriptedEngine()
    a = await start_app("a", engine)
    database = manager_of(a).root / "jobs.sqlite3"
    assert database.exists()  # kept: its job is not in Redis
    await in_thread(redis_server.start)
    await eventually(lambda: (r := core_of(a).tracker.find(job_id)) is not None and r.status == "completed", "the job is finished", 3 * LEASE_SECONDS)
    assert spoken(engine) == SENTENCES[1:]
    assert not database.exists() and len(list(database.parent.glob("jobs.sqlite3.shared-*"))) == 1


async def test_a_nodes_own_database_locked_at_its_start_joins_the_cluster_once_it_is_let_go(start_app, aiohttp_client, tmp_path):
    """Another process holds node "a"'s own jobs database locked (exclusive locking mode) as
    the node starts with REDIS_URL: the node starts and speaks, the database is left where it
    is (set aside as corrupt, its job would be lost), and once the lock is let go the lease
    keeper puts the job into the cluster, where it is finished, without a restart."""
    (job_id,) = await jobs_of_a_node_before_redis_url(aiohttp_client, tmp_path, 1)
    database = tmp_path / "a" / "data" / "long_text" / "jobs.sqlite3"
    holder = lock_exclusively(database)
    try:
        engine = ScriptedEngine()
        a = await start_app("a", engine)
        assert (await a.post("/v1/audio/speech", json={"input": "Speech goes on."})).status == 200
        assert database.exists() and not list(database.parent.glob("jobs.sqlite3.corrupt-*"))
    finally:
        holder.close()
    await eventually(lambda: (r := core_of(a).tracker.find(job_id)) is not None and r.status == "completed", "the job is finished", 3 * LEASE_SECONDS)
    assert spoken(engine) == ["Speech goes on.", *SENTENCES[1:]]
    assert not database.exists() and len(list(database.parent.glob("jobs.sqlite3.shared-*"))) == 1


async def test_a_jobs_event_stream_on_another_node_follows_it_to_its_end(start_app):
    """A job's /sse on a node that does not run it shows the job's progress as it runs
    elsewhere and ends with its outcome, as on the node that runs it."""
    one = ScriptedEngine()
    a, b = await start_app("a", one), await start_app("b", ScriptedEngine())
    job_id = await second_chunk_held(a, one)
    resp = await b.get(f"/audio/speech/long/{job_id}/sse")
    assert resp.status == 200
    assert (await resp.content.readline()).decode().strip() == "event: progress"  # B follows the job now
    one.release(10_000)
    body = (await asyncio.wait_for(resp.read(), 30)).decode()
    events = [line.split(":", 1)[1].strip() for line in body.splitlines() if line.startswith("event:")]
    assert events[-1] == "completed" and events.count("progress") >= len(SENTENCES) - 1, events


async def test_a_job_deleted_through_another_node_stops_where_it_runs_first(start_app, caplog):
    one, other = ScriptedEngine(), ScriptedEngine()
    a, b = await start_app("a", one), await start_app("b", other)
    job_id = await second_chunk_held(a, one)
    began = time.monotonic()
    resp = await b.delete(f"/audio/speech/long/{job_id}", params={"action": "delete"})
    assert resp.status == 200, await resp.text()
    assert time.monotonic() - began < LEASE_RENEW_SECONDS  # on A's cancelled event, not at B's next look
    assert (await a.get(f"/audio/speech/long/{job_id}")).status == 404
    assert core_of(a).tracker.find(job_id).status == "cancelled"
    await eventually(lambda: not job_dir(a, job_id).exists(), "A removed the job's files")
    assert spoken(one) == SENTENCES[:2] and spoken(other) == []
    statistics = await (await a.get("/status/statistics")).json()
    assert (statistics["total_requests"], statistics["cancelled_requests"], statistics["is_processing"]) == (1, 1, False)
    one.release(10)  # A's engine is free again: A speaks nothing more of the deleted job
    await asyncio.wait_for(manager_of(a).wait(job_id), 30)
    assert spoken(one) == SENTENCES[:2]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []  # A's removal ended cleanly

async def test_a_node_whose_job_another_node_took_stops_its_own_run(start_app, redis_server):
    """The lease of a job was taken by another node (this node was cut off from Redis past
    its lease, say): at its next renewal this node stops its run, storing nothing, so the
    job is never run twice at once."""
    one = ScriptedEngine()
    a = await start_app("a", one)
    job_id = await second_chunk_held(a, one)
    store = sync_redis.Redis.from_url(redis_server.url)
    store.set(lease(job_id), "another-node", px=60_000)
    await asyncio.wait_for(manager_of(a).wait(job_id), 10)  # within a renewal or two
    assert (await status_of(a, job_id))["status"] == "processing"  # left for the node that holds it
    assert spoken(one) == SENTENCES[:2]

    # That node died before it heard of the cancel asked now: once its lease lapses, the node
    # asked stores the cancel itself (or stops its own takeover), not waiting for good.
    store.set(lease(job_id), "another-node", px=1_000)
    resp = await asyncio.wait_for(a.delete(f"/audio/speech/long/{job_id}"), 20)
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["status"] == "cancelled"
    assert core_of(a).tracker.find(job_id).status == "cancelled"


async def test_a_stop_the_node_holding_the_job_never_answers_is_a_503_that_says_so(start_app, redis_server, monkeypatch):
    """Another node holds the job's lease and never answers (alive to Redis, deaf to the event
    log): a cancel asked here gives up after STOP_ELSEWHERE_SECONDS with a 503 that says which
    job and to try again, and the job is left as it was."""
    one = ScriptedEngine()
    a = await start_app("a", one)
    job_id = await second_chunk_held(a, one)
    store = sync_redis.Redis.from_url(redis_server.url)
    store.set(lease(job_id), "another-node", px=60_000)
    await asyncio.wait_for(manager_of(a).wait(job_id), 10)  # A leaves the job to the lease's holder
    monkeypatch.setattr(manager_module, "STOP_ELSEWHERE_SECONDS", 1.0)
    resp = await asyncio.wait_for(a.delete(f"/audio/speech/long/{job_id}"), 20)
    assert resp.status == 503, await resp.text()
    assert error_of(await resp.json())["message"] == f"The node running job {job_id} did not stop it within 1 s; try again"
    assert (await status_of(a, job_id))["status"] == "processing"
    assert store.get(lease(job_id)) == b"another-node"


async def test_a_pause_answered_by_the_node_running_the_job_is_already_in_its_status_api(start_app, monkeypatch):
    """The node that runs a job answers its pause only once its own status API shows the job
    paused, though that view is what came back from the event log in Redis: here the log's
    link is slow for the paused event (half a second), and a client that reads
    /status/requests/{id} right after the answer sees "paused", not "generating_audio".
    (Only the event log's appends are slowed: CLIENT PAUSE WRITE, as test_event_log uses,
    would hold the job store's write of the pause too, and free both at once.)"""
    one = ScriptedEngine()
    a = await start_app("a", one)
    job_id = await second_chunk_held(a, one)
    bus = core_of(a).bus
    append = bus._append_all

    async def slow_for_the_pause(events):
        if any(json.loads(payload).get("status") == "paused" for _, _, payload in events):
            await asyncio.sleep(0.5)  # the link to Redis, slow for this batch: not a wait for anything
        return await append(events)

    monkeypatch.setattr(bus, "_append_all", slow_for_the_pause)
    resp = await a.put(f"/audio/speech/long/{job_id}/pause")
    assert resp.status == 200, await resp.text()
    resp = await a.get(f"/status/requests/{job_id}")
    assert resp.status == 200, await resp.text()
    view = await resp.json()
    assert view["status"] == "paused", view


async def test_a_paused_job_resumed_on_two_nodes_at_once_runs_on_the_one_that_took_it(start_app, redis_server):
    """Two nodes asked to resume one paused job at once: the one that took the job's lease
    first runs it, the other answers a 409 that says so (here the first node is stood for by
    its lease, set the moment before)."""
    one = ScriptedEngine()
    a = await start_app("a", one)
    job_id = await second_chunk_held(a, one)
    assert (await a.put(f"/audio/speech/long/{job_id}/pause")).status == 200
    store = sync_redis.Redis.from_url(redis_server.url)
    store.set(lease(job_id), "another-node", px=60_000)
    resp = await a.put(f"/audio/speech/long/{job_id}/resume")
    assert resp.status == 409
    assert error_of(await resp.json())["message"] == f"Job {job_id} is running on another node"
    assert (await status_of(a, job_id))["status"] == "paused"  # left as it was, for the node that took it
    store.delete(lease(job_id))
    one.release(10_000)
    assert (await a.put(f"/audio/speech/long/{job_id}/resume")).status == 200
    await asyncio.wait_for(manager_of(a).wait(job_id), 30)
    assert (await status_of(a, job_id))["status"] == "completed"


async def test_a_node_takes_over_as_many_jobs_as_it_has_free_slots_at_once_and_no_more(start_app, redis_server):
    """A node stops with three jobs; the node left has three long-text slots, one busy with a
    job of its own. It takes two of the jobs in one look (not one per lease renewal) and the
    third only once a slot is free, so no job waits on a node without room."""
    one, other = ScriptedEngine(), ScriptedEngine()
    a, b = await start_app("a", one, max_concurrent_jobs=3), await start_app("b", other, max_concurrent_jobs=3)
    own = await second_chunk_held(b, other)
    orphans = [await second_chunk_held(a, one)] + [(await submit(a))["job_id"] for _ in range(2)]
    store, node_b = sync_redis.Redis.from_url(redis_server.url), core_of(b).bus.node

    def held_by_b() -> list[str]:
        return [job_id for job_id in orphans if store.get(lease(job_id)) == node_b.encode()]

    async def lease_renewals(count: int) -> None:
        """Until B has renewed its own job's lease ``count`` times: each renewal comes after
        B's last look for jobs to take has ended."""
        seen, left = 0, await in_thread(store.pttl, lease(own))
        while seen < count:
            await asyncio.sleep(0.02)  # poll interval; the renewals decide
            now = await in_thread(store.pttl, lease(own))
            assert now > 0, "B's own lease lapsed"
            seen, left = seen + (now > left + 1_000), now

    await a.close()  # its three leases let go at once
    taken = await eventually(held_by_b, "B takes some of the jobs")
    first_seen = time.monotonic()
    while len(taken) < 2 and time.monotonic() - first_seen < LEASE_RENEW_SECONDS / 2:
        await asyncio.sleep(0.02)  # poll interval; half a renewal decides
        taken = held_by_b()
    assert len(taken) == 2, f"B took {len(taken)} job(s) in one look, with room for 2"
    await lease_renewals(2)
    assert len(held_by_b()) == 2  # the third waits for a free slot (here or on another node)
    (left,) = set(orphans) - set(taken)
    assert await in_thread(store.get, lease(left)) is None

    other.release(10_000)  # B's jobs finish, its slots free, and it takes the third
    for job_id in [own, *orphans]:
        await eventually(lambda job_id=job_id: (r := core_of(b).tracker.find(job_id)) is not None and r.status == "completed", f"{job_id} completed")
    assert core_of(b).tracker.find(left).fields["node"] == node_b


async def test_with_redis_away_the_long_text_routes_are_a_clear_503_until_it_is_back(start_app, redis_server):
    a = await start_app("a", ScriptedEngine())
    job_id = (await submit(a))["job_id"]
    await asyncio.wait_for(manager_of(a).wait(job_id), 30)
    redis_server.stop()
    try:
        resp = await a.get(f"/audio/speech/long/{job_id}")
        assert resp.status == 503
        assert error_of(await resp.json())["code"] == "redis_unavailable"
    finally:
        redis_server.start()  # the same port and data
    assert (await status_of(a, job_id))["status"] == "completed"


async def test_on_the_node_running_a_job_a_bad_chunk_file_is_generated_again_and_a_missing_one_copied(start_app):
    """Checked after the last chunk, as on a single node: a chunk file that went bad on the
    node running the job is generated again; one missing there is the cluster's copy (what
    another node made is fetched this way), not spoken again."""
    engine = ScriptedEngine()
    a = await start_app("a", engine)
    job_id = await second_chunk_held(a, engine)
    engine.release(1)
    assert await in_thread(engine.wait_started) == SENTENCES[2]  # chunks 1 and 2 are done
    first, second = job_dir(a, job_id) / files.chunk_name(0), job_dir(a, job_id) / files.chunk_name(1)
    first.write_bytes(first.read_bytes()[:100])  # truncated
    second.unlink()
    engine.release(2)
    assert await in_thread(engine.wait_started) == SENTENCES[3]
    assert await in_thread(engine.wait_started) == SENTENCES[0]  # generated again, held
    details = await (await a.get(f"/audio/speech/long/{job_id}/details")).json()
    assert [chunk["error"] for chunk in details["chunks"]] == ["audio file is corrupt", None, None, None]
    engine.release(10)
    await asyncio.wait_for(manager_of(a).wait(job_id), 30)
    assert (await status_of(a, job_id))["status"] == "completed"
    assert spoken(engine) == [*SENTENCES, SENTENCES[0]]
    data = await (await a.get(f"/audio/speech/long/{job_id}/download")).read()
    assert len(wav_frames(data)[1]) == expected_frames(engine, SENTENCES, 0)


@pytest.mark.parametrize("race", ["taken by another node", "cancelled", "deleted"])
async def test_a_job_that_changes_hands_while_a_node_looks_for_jobs_is_left_and_the_next_one_taken(start_app, redis_server, race):
    """A node looking for jobs to take over lists the jobs no node holds, then takes each in
    turn. One that in between another node took, or a client cancelled or deleted, is left as
    it is now, and the node takes the next in the same look (not at its next, a lease renewal
    later). The race is put in B's store calls: the moment B has the list, it happens."""
    one, other = ScriptedEngine(), ScriptedEngine()
    a, b = await start_app("a", one, max_concurrent_jobs=2), await start_app("b", other, max_concurrent_jobs=3)
    raced, taken_next = await second_chunk_held(a, one), (await submit(a))["job_id"]
    store, node_b, manager = sync_redis.Redis.from_url(redis_server.url), core_of(b).bus.node, manager_of(b)
    a_stopped, look_over, db = asyncio.Event(), asyncio.Event(), manager._db
    listed: list[str] = []

    async def racing_db(method: str, *args, **kwargs):
        if method == "renew" and listed:
            look_over.set()  # the look that found the jobs has ended: B renews before its next
        if method != "orphans" or listed:
            return await db(method, *args, **kwargs)
        await a_stopped.wait()  # B looks once A has stopped, so it finds both of A's jobs
        listed.extend(await db(method, *args, **kwargs))
        if race == "taken by another node":
            await in_thread(lambda: store.set(lease(raced), "another-node", px=60_000))
        else:
            params = {"action": "delete"} if race == "deleted" else {}
            assert (await b.delete(f"/audio/speech/long/{raced}", params=params)).status == 200
        return listed

    manager._db = racing_db
    other.hold()  # the job B takes runs until the test has looked
    await a.close()  # its two jobs are left runnable, their leases let go
    a_stopped.set()
    await asyncio.wait_for(look_over.wait(), 3 * LEASE_RENEW_SECONDS)
    assert listed == [raced, taken_next]

    assert await in_thread(store.get, lease(taken_next)) == node_b.encode()  # taken in the same look
    assert core_of(b).tracker.find(taken_next).fields["node"] == node_b
    record = core_of(b).tracker.find(raced)
    if race == "taken by another node":  # left to the node that took it
        assert await in_thread(store.get, lease(raced)) == b"another-node"
        assert record.fields["node"] != node_b
    elif race == "cancelled":
        assert record.status == "cancelled" and (await status_of(b, raced))["status"] == "cancelled"
    else:
        assert record.status == "cancelled" and (await b.get(f"/audio/speech/long/{raced}")).status == 404

    other.release(10_000)
    await asyncio.wait_for(manager.wait(taken_next), 30)
    assert (await status_of(b, taken_next))["status"] == "completed"
    assert spoken(other) == SENTENCES  # the job it took, and nothing of the one left


@pytest.mark.parametrize("action", ["cancel", "delete", "pause"])
async def test_a_job_stopped_while_a_node_takes_it_over_ends_there(start_app, action):
    """A node taking a job over reads its chunks before it starts the job's run; a cancel,
    delete or pause asked of that node in that moment is answered 200 and holds: nothing is
    spoken, the job is cancelled (or gone, or paused, to resume later) on every node, and it
    is counted once."""
    one, other = ScriptedEngine(), ScriptedEngine()
    a, b = await start_app("a", one), await start_app("b", other)
    job_id = await second_chunk_held(a, one)
    manager, db, answers = manager_of(b), manager_of(b)._db, []
    ask = {
        "cancel": ("DELETE", f"/audio/speech/long/{job_id}"),
        "delete": ("DELETE", f"/audio/speech/long/{job_id}?action=delete"),
        "pause": ("PUT", f"/audio/speech/long/{job_id}/pause"),
    }[action]

    async def stopped_in_the_launch(method: str, *args, **kwargs):
        if method == "chunks" and args[0] == job_id and not answers and job_id in manager._runs:
            resp = await b.request(*ask)
            answers.append((resp.status, await resp.text()))
        return await db(method, *args, **kwargs)

    manager._db = stopped_in_the_launch
    await a.close()  # B takes the job over at its next look
    await eventually(lambda: answers, "B was asked to stop the job as it took it over")
    assert answers[0][0] == 200, answers
    await asyncio.wait_for(manager.wait(job_id), 10)
    assert spoken(other) == []
    ended = {"cancel": "cancelled", "delete": "cancelled", "pause": "paused"}[action]
    assert core_of(b).tracker.find(job_id).status == ended
    if action == "delete":
        assert (await b.get(f"/audio/speech/long/{job_id}")).status == 404
        assert job_id not in [job["job_id"] for job in (await (await b.get("/audio/speech/long")).json())["jobs"]]
    else:
        assert (await status_of(b, job_id))["status"] == ended
    if action == "pause":  # and it resumes from its first unfinished chunk
        assert (await b.put(f"/audio/speech/long/{job_id}/resume")).status == 200
        await asyncio.wait_for(manager.wait(job_id), 30)
        assert (await status_of(b, job_id))["status"] == "completed" and spoken(other) == SENTENCES[1:]
    statistics = await (await b.get("/status/statistics")).json()
    counted = (1, 0, 1) if action == "pause" else (1, 1, 0)
    assert (statistics["total_requests"], statistics["cancelled_requests"], statistics["completed_requests"]) == counted
