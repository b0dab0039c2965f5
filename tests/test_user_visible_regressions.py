"""Behaviour a user notices, each guarded from the outside (HTTP, the event stream, files on disk).

Every test here was written against a bug that once slipped through the suite (issue 19): the
statistics, the queue's estimates, cancelling, and the percentage of a long-text job that
has to generate a chunk again. They drive the app through its HTTP API only, so they keep
guarding the same behaviour however the pipeline, worker and tracker are arranged inside.
"""

from __future__ import annotations

import asyncio
import time

from conftest import record_events
from eventsource import EventSource

TERMINAL = ("completed", "error", "cancelled")


async def post(client, text: str, request_id: str | None = None, path: str = "/v1/audio/speech", **fields):
    """POST a speech request and read its whole answer (usable in a task)."""
    headers = {"X-Request-ID": request_id} if request_id else {}
    response = await client.post(path, json={"input": text, **fields}, headers=headers)
    await response.read()
    return response


async def get_json(client, path: str) -> dict:
    response = await client.get(path)
    assert response.status == 200, (path, response.status, await response.text())
    return await response.json()


async def until_queued(client, request_id: str, task: asyncio.Future) -> None:
    """Until the request shows in the queue of /status (the API's own word that it waits),
    or its answer came (refused, say); fails after 10 s."""
    async with asyncio.timeout(10):
        while not task.done():
            if request_id in [q["request_id"] for q in (await get_json(client, "/status"))["queue"]["requests"]]:
                return
            await asyncio.sleep(0)


async def events_until_terminal(stream: EventSource, request_id: str) -> list[dict]:
    """The request's status and progress events off the whole-server stream, up to its end."""
    def ended(m) -> bool:
        return m.type == "status" and m.json()["request_id"] == request_id and m.json()["status"] in TERMINAL

    return [
        m.json()
        for m in await stream.until(ended)
        if m.type in ("status", "progress") and m.json()["request_id"] == request_id
    ]


# -- statistics ------------------------------------------------------------------------------


async def test_a_cancelled_request_does_not_lower_the_success_rate(make_client, scripted):
    """Cancelling is the user's choice, not a failure of the server."""
    client = await make_client(engine=scripted)
    assert (await post(client, "This one completes.")).status == 200
    scripted.hold()
    cancelled = asyncio.ensure_future(post(client, "This one is cancelled.", "cancel-stat-1"))
    await asyncio.to_thread(scripted.wait_started)
    assert (await client.delete("/v1/audio/speech/cancel-stat-1")).status == 200
    assert (await cancelled).status == 409

    stats = await get_json(client, "/status/statistics")
    assert (stats["completed_requests"], stats["cancelled_requests"], stats["error_requests"]) == (1, 1, 0)
    assert stats["success_rate"] == 100.0
    assert (await get_json(client, "/info"))["uptime_info"]["success_rate"] == 100.0


async def test_each_way_a_request_ends_is_named_in_its_last_step(make_client, make_scripted):
    """The status API's current_step of a finished request says how it ended."""
    engine = make_scripted(fail_on="broken")
    client = await make_client(engine=engine)
    assert (await post(client, "This one is fine.", "ends-completed")).status == 200
    assert (await post(client, "This one is broken.", "ends-failed")).status == 500
    engine.hold()
    cancelled = asyncio.ensure_future(post(client, "This one is cancelled.", "ends-cancelled"))
    await asyncio.to_thread(engine.wait_started)
    assert (await client.delete("/v1/audio/speech/ends-cancelled")).status == 200
    assert (await cancelled).status == 409
    created = await client.post("/audio/speech/long", json={"input": "A long-text job that is paused. It has two chunks.", "chunk_size": 40})
    assert created.status == 200, await created.text()
    job_id = (await created.json())["job_id"]
    await asyncio.to_thread(engine.wait_started)
    assert (await client.put(f"/audio/speech/long/{job_id}/pause")).status == 200
    steps = {}
    for request_id in ("ends-completed", "ends-failed", "ends-cancelled", job_id):
        record = await get_json(client, f"/status/requests/{request_id}")
        steps[request_id] = (record["status"], record["progress"]["current_step"])
    assert steps == {
        "ends-completed": ("completed", "Completed"),
        "ends-failed": ("error", "Failed"),
        "ends-cancelled": ("cancelled", "Cancelled"),
        job_id: ("paused", "Paused"),
    }


# -- the queue's estimates -------------------------------------------------------------------

# Slow enough that estimates differ by far more than their millisecond rounding: the running
# request's 120 characters take about 0.36 s, each queued one of 40 about 0.12 s.
WORK_SECONDS_PER_CHAR = 0.003
RUNNING_TEXT = "The running request speaks this sentence first, and it takes a while before anyone else gets a turn."
QUEUED_TEXTS = ("The first waiting request is this one.", "Then the second waiting request speaks.")


async def test_queued_requests_are_estimated_one_after_another_behind_the_running_one(make_client, make_scripted):
    engine = make_scripted(work_seconds_per_char=WORK_SECONDS_PER_CHAR)
    client = await make_client(engine=engine)
    engine.hold()
    running = asyncio.ensure_future(post(client, RUNNING_TEXT, "running-est-1"))
    await asyncio.to_thread(engine.wait_started)
    waiting = []
    for n, text in enumerate(QUEUED_TEXTS, start=1):
        waiting.append(asyncio.ensure_future(post(client, text, f"waiting-est-{n}")))
        await until_queued(client, f"waiting-est-{n}", waiting[-1])

    asked_at = time.time()
    status = await get_json(client, "/status")
    assert status["request_id"] == "running-est-1"
    running_eta = status["progress"]["estimated_completion"]
    first, second = status["queue"]["requests"]
    assert [first["request_id"], second["request_id"]] == ["waiting-est-1", "waiting-est-2"]
    # The first waiting request starts when the running one is expected to end, which is
    # clearly later than now: most of its characters are still to be spoken.
    assert first["estimated_start"] == running_eta
    assert first["estimated_start"] > asked_at + 0.1
    # Each waiting request starts when the one before it is expected to end.
    assert first["estimated_completion"] > first["estimated_start"] + 0.05
    assert second["estimated_start"] == first["estimated_completion"]
    assert second["estimated_completion"] > second["estimated_start"] + 0.05
    # The same estimates one request at a time.
    for entry in (first, second):
        body = await get_json(client, f"/status/requests/{entry['request_id']}")
        assert (body["queue_position"], body["estimated_start"]) == (entry["position"], entry["estimated_start"])

    engine.release(10)
    assert [r.status for r in await asyncio.gather(running, *waiting)] == [200, 200, 200]


# -- cancelling --------------------------------------------------------------------------------


async def test_cancelling_a_queued_request_frees_its_place_in_a_full_queue(make_client, scripted):
    client = await make_client(engine=scripted, max_queue_size=1)
    scripted.hold()
    running = asyncio.ensure_future(post(client, "In the engine now.", "running-slot-1"))
    await asyncio.to_thread(scripted.wait_started)
    queued = asyncio.ensure_future(post(client, "Waiting, then cancelled.", "queued-slot-1"))
    await until_queued(client, "queued-slot-1", queued)
    assert (await post(client, "No room for this one.")).status == 429  # the queue is full

    assert (await client.delete("/v1/audio/speech/queued-slot-1")).status == 200
    taking_the_place = asyncio.ensure_future(post(client, "This one takes the freed place.", "next-slot-1"))
    await until_queued(client, "next-slot-1", taking_the_place)
    assert not taking_the_place.done(), taking_the_place.result().status  # queued, not refused
    scripted.release(10)
    assert [r.status for r in await asyncio.gather(running, queued, taking_the_place)] == [200, 409, 200]
    assert "Waiting, then cancelled." not in scripted.calls
    stats = await get_json(client, "/status/statistics")
    assert (stats["completed_requests"], stats["cancelled_requests"]) == (2, 1)


async def test_a_cancel_that_lands_while_the_last_chunk_finishes_still_cancels(make_client, make_scripted):
    """An engine that looks at the cancel flag only between chunks finishes the chunk it is on."""
    engine = make_scripted(cancel_within_chunk=False)
    client = await make_client(engine=engine)
    engine.hold()
    request = asyncio.ensure_future(post(client, "One chunk, the last one.", "late-cancel-1"))
    await asyncio.to_thread(engine.wait_started)
    cancel = await client.delete("/v1/audio/speech/late-cancel-1")
    assert cancel.status == 200 and (await cancel.json())["cancelled"] is True
    engine.release()  # the chunk runs to its end regardless

    response = await request
    assert response.status == 409
    assert (await response.json())["error"]["code"] == "cancelled"
    assert (await get_json(client, "/status/requests/late-cancel-1"))["status"] == "cancelled"
    stats = await get_json(client, "/status/statistics")
    assert (stats["cancelled_requests"], stats["completed_requests"]) == (1, 0)
    history = (await get_json(client, "/status/history"))["request_history"]
    assert [(r["request_id"], r["status"]) for r in history] == [("late-cancel-1", "cancelled")]


# -- a long-text job that generates a chunk again ----------------------------------------------

SENTENCES = [
    "The first sentence of the long text is here.",
    "A second sentence follows the first one closely.",
    "Then comes a third sentence with a few more words.",
    "And the fourth sentence ends this short story.",
]


async def test_a_long_text_job_regenerating_a_corrupt_chunk_never_shows_less_progress(make_client, make_scripted, tmp_path):
    """A chunk found corrupt at the end is generated again; the percentage waits, it never drops."""
    data_dir = tmp_path / "data"
    engine = make_scripted()
    client = await make_client(engine=engine, data_dir=str(data_dir))
    stream = EventSource(await client.get("/status/stream"))
    progress_events = record_events(client, types=("progress",))
    engine.hold()
    body = {"input": " ".join(SENTENCES), "response_format": "wav", "chunk_size": 55}
    created = await client.post("/audio/speech/long", json=body)
    assert created.status == 200, await created.text()
    job_id = (await created.json())["job_id"]
    assert await asyncio.to_thread(engine.wait_started) == SENTENCES[0]
    engine.release()
    assert await asyncio.to_thread(engine.wait_started) == SENTENCES[1]  # the first chunk is on disk
    # The job's saved chunks are the .npy files under its folder; truncate the first one.
    [first_chunk] = [p for p in data_dir.rglob("*.npy") if job_id in p.parts]
    first_chunk.write_bytes(first_chunk.read_bytes()[:100])
    engine.release(10)

    events = await events_until_terminal(stream, job_id)
    assert events[-1]["status"] == "completed"
    assert [t for t in engine.calls[2:]] == [*SENTENCES, SENTENCES[0]]  # after the two warm-ups
    percentages = [e["progress_percentage"] for e in events]
    assert percentages == sorted(percentages), percentages
    # The chunk generated again earns nothing new: generation stays within its 95% share.
    assert max(e["progress_percentage"] for e in events if e["status"] == "generating_audio") <= 95.0
    # A progress event means progress: while the chunk is generated again, none is sent.
    mine = [e.data["progress_percentage"] for e in progress_events if e.data["request_id"] == job_id]
    assert len(mine) == len(set(mine)), mine
    assert percentages[-1] == 100.0 and all(p < 100.0 for p in percentages[:-1])
    job = await get_json(client, f"/audio/speech/long/{job_id}")
    assert job["status"] == "completed"
