"""One owner per fact: a request's figures survive every hand-over (pause, resume,
cancel while paused), and /metrics folds the same events as the status API."""

from __future__ import annotations

import asyncio

from conftest import core_of
from doubles import ScriptedEngine
from test_long_text import SENTENCES, in_thread, manager_of, submit

from chatterbox_status.tracker import TERMINAL_STATUSES


def request_events(client, request_id):
    """Every status and progress event of ``request_id``, as the bus publishes them."""
    events = []
    core_of(client).bus.add_listener(
        lambda e: events.append(e.data) if e.type in ("status", "progress") and e.data["request_id"] == request_id else None
    )
    return events


async def third_chunk_running(client, engine):
    """A four-chunk job on a held engine, its first two chunks spoken and its third running:
    its id and the events recorded of it from the start."""
    job_id = (await submit(client))["job_id"]
    events = request_events(client, job_id)
    for sentence in SENTENCES[:2]:
        assert await in_thread(engine.wait_started) == sentence
        engine.release(1)
    assert await in_thread(engine.wait_started) == SENTENCES[2]
    return job_id, events


async def paused_after_two_chunks(client, engine):
    """A four-chunk job paused while its third chunk runs; its id and its paused record."""
    job_id, events = await third_chunk_running(client, engine)
    resp = await client.put(f"/audio/speech/long/{job_id}/pause")
    assert resp.status == 200, await resp.text()
    record = await (await client.get(f"/status/requests/{job_id}")).json()
    assert record["status"] == "paused"
    assert record["progress"]["progress_percentage"] > 40  # two of four chunks done
    return job_id, events, record["progress"]


async def test_a_resumed_job_goes_on_from_its_percentage(make_long):
    engine = ScriptedEngine()
    client = await make_long(engine, hold=True)
    job_id, events, paused = await paused_after_two_chunks(client, engine)
    seen_before_resume = len(events)
    assert (await client.put(f"/audio/speech/long/{job_id}/resume")).status == 200
    resumed = events[seen_before_resume]
    assert resumed["status"] == "queued"
    assert resumed["progress_percentage"] == paused["progress_percentage"]
    assert resumed["total_chunks"] == 4
    engine.release(10)
    await asyncio.wait_for(manager_of(client).wait(job_id), 30)
    percentages = [e["progress_percentage"] for e in events]
    assert percentages == sorted(percentages), percentages  # never backwards, across the pause
    assert events[-1]["status"] == "completed" and percentages[-1] == 100.0
    # After the resume the chunks spoken before still count: the last chunk starts at the
    # share of the three before it.
    [last_start] = [e for e in events[seen_before_resume:] if e["status"] == "generating_audio" and e["current_step"].endswith("4/4")
                    and "batched_with" in e]
    total = sum(map(len, SENTENCES))
    assert last_start["progress_percentage"] == round(95.0 * sum(map(len, SENTENCES[:3])) / total, 1)


async def test_cancelling_a_paused_job_keeps_its_figures(make_long):
    engine = ScriptedEngine()
    client = await make_long(engine, hold=True)
    job_id, events, paused = await paused_after_two_chunks(client, engine)
    resp = await client.delete(f"/audio/speech/long/{job_id}")
    assert resp.status == 200 and (await resp.json())["status"] == "cancelled"
    ended = events[-1]
    assert ended["status"] == "cancelled"
    for name in ("current_chunk", "total_chunks", "progress_percentage"):
        assert ended[name] == paused[name], name
    record = await (await client.get(f"/status/requests/{job_id}")).json()
    assert (record["status"], record["progress"]["current_step"]) == ("cancelled", "Cancelled")
    assert record["progress"]["total_chunks"] == 4
    assert record["progress"]["progress_percentage"] == paused["progress_percentage"]
    view = await (await client.get(f"/audio/speech/long/{job_id}")).json()
    assert view["progress"]["completed_chunks"] == 2


def gauge(text: str, name: str) -> float:
    line = next(line for line in text.splitlines() if line.startswith(name + "{") or line.startswith(name + " "))
    return float(line.rsplit(" ", 1)[1])


async def test_the_active_gauge_follows_pause_resume_and_completion(make_long):
    engine = ScriptedEngine()
    client = await make_long(engine, hold=True)
    job_id, events, _ = await paused_after_two_chunks(client, engine)

    async def metrics() -> str:
        return await (await client.get("/metrics")).text()

    assert gauge(await metrics(), "chatterbox_requests_active") == 0  # paused: neither queued nor running
    assert (await client.put(f"/audio/speech/long/{job_id}/resume")).status == 200
    assert gauge(await metrics(), "chatterbox_requests_active") == 1
    engine.release(10)
    await asyncio.wait_for(manager_of(client).wait(job_id), 30)
    assert events[-1]["status"] in TERMINAL_STATUSES
    text = await metrics()
    assert gauge(text, "chatterbox_requests_active") == 0
    stats = await (await client.get("/status/statistics")).json()
    assert 'status="completed"' in text
    completed = next(
        line for line in text.splitlines() if line.startswith("chatterbox_requests_total") and 'status="completed"' in line
    )
    assert float(completed.rsplit(" ", 1)[1]) == stats["completed_requests"] == 1


async def test_a_retried_job_is_announced_at_the_share_of_its_finished_chunks(make_long):
    """A job cancelled after two chunks ends its figures; retried, it is announced again,
    queued at the share of the two chunks it keeps, not at 0."""
    engine = ScriptedEngine()
    client = await make_long(engine, hold=True)
    job_id, events = await third_chunk_running(client, engine)
    assert (await client.delete(f"/audio/speech/long/{job_id}")).status == 200
    assert events[-1]["status"] == "cancelled"
    seen_before_retry = len(events)
    assert (await client.post(f"/audio/speech/long/{job_id}/retry")).status == 200
    retried = events[seen_before_retry]
    total = sum(map(len, SENTENCES))
    assert (retried["status"], retried["total_chunks"]) == ("queued", 4)
    assert retried["progress_percentage"] == round(95.0 * sum(map(len, SENTENCES[:2])) / total, 1)
    engine.release(10)
    await asyncio.wait_for(manager_of(client).wait(job_id), 30)
    assert events[-1]["status"] == "completed"
