"""The queue in front of the engine: FIFO, bounded, concurrent requests counted exactly."""

from __future__ import annotations

import asyncio

from conftest import core_of, decode_wav, record_events

from chatterbox_status.engine_pool import WARM_UP_TEXT

SENTENCES = [
    "Alpha team reports all clear.",
    "Bravo team is moving north now.",
    "Charlie needs more water soon.",
    "Delta has found the bridge.",
    "Echo will wait at the gate.",
    "Foxtrot saw two birds today.",
    "Golf is ready for the night.",
    "Hotel rooms are all taken.",
]


async def test_eight_concurrent_requests_complete_with_exact_statistics_and_history(make_client):
    client = await make_client()
    events = record_events(client)
    responses = await asyncio.gather(
        *(client.post("/v1/audio/speech", json={"input": text}) for text in SENTENCES)
    )
    assert [r.status for r in responses] == [200] * 8
    ids = [r.headers["X-Request-ID"] for r in responses]
    assert len(set(ids)) == 8
    for response in responses:
        rate, _, frames = decode_wav(await response.read())
        assert rate == 24_000 and frames > rate // 2

    stats = await (await client.get("/status/statistics")).json()
    assert stats["total_requests"] == 8
    assert stats["completed_requests"] == 8
    assert stats["error_requests"] == 0
    assert stats["success_rate"] == 100.0
    assert stats["is_processing"] is False
    assert stats["average_text_length"] == round(sum(map(len, SENTENCES)) / 8, 1)

    queued_order = [e.data["request_id"] for e in events if e.data["status"] == "queued"]
    completed_order = [e.data["request_id"] for e in events if e.data["status"] == "completed"]
    assert completed_order == queued_order  # first in, first out
    history = await (await client.get("/status/history?limit=50")).json()
    assert [r["request_id"] for r in history["request_history"]] == completed_order[::-1]
    assert all(r["status"] == "completed" for r in history["request_history"])
    # Requests never overlapped in the engine: each one finished before the next began.
    running = None
    for event in events:
        rid, status = event.data["request_id"], event.data["status"]
        if status == "initializing":
            assert running is None
            running = rid
        elif status == "completed":
            assert running == rid
            running = None


async def test_full_queue_answers_429_with_retry_after_and_counts_nothing(make_client, scripted):
    client = await make_client(engine=scripted, max_queue_size=2)
    scripted.hold()
    first = asyncio.ensure_future(client.post("/v1/audio/speech", json={"input": "Running now."}))
    await asyncio.to_thread(scripted.wait_started)
    waiting = [
        asyncio.ensure_future(client.post("/v1/audio/speech", json={"input": f"Waiting number {n}."}))
        for n in (1, 2)
    ]
    core = core_of(client)
    while len(core.worker.queue) < 2:
        await asyncio.sleep(0)
    refused = await client.post("/v1/audio/speech", json={"input": "One too many."})
    assert refused.status == 429
    # The queue's head should be done within a second (the scripted engine speaks in
    # milliseconds and the running request is past its estimate): the 1 s floor applies.
    assert refused.headers["Retry-After"] == "1"
    body = await refused.json()
    assert body["error"]["type"] == "queue_full"
    assert (await (await client.get("/status/statistics")).json())["total_requests"] == 3

    scripted.release(3)
    done = await asyncio.gather(first, *waiting)
    assert [r.status for r in done] == [200, 200, 200]
    stats = await (await client.get("/status/statistics")).json()
    assert (stats["total_requests"], stats["completed_requests"]) == (3, 3)
    assert "One too many." not in scripted.calls


async def test_cancel_queued_and_running_requests(make_client, scripted):
    client = await make_client(engine=scripted, max_chunk_length=20)
    scripted.hold()
    text = "First part of it. Second part of it. Third part of it."
    running = asyncio.ensure_future(
        client.post("/v1/audio/speech", json={"input": text}, headers={"X-Request-ID": "running-0001"})
    )
    await asyncio.to_thread(scripted.wait_started)
    queued = asyncio.ensure_future(
        client.post("/v1/audio/speech", json={"input": "Never spoken."}, headers={"X-Request-ID": "queued-00001"})
    )
    core = core_of(client)
    while len(core.worker.queue) < 1:
        await asyncio.sleep(0)

    cancel = await client.delete("/v1/audio/speech/queued-00001")
    assert cancel.status == 200
    assert (await queued).status == 409
    cancel = await client.delete("/v1/audio/speech/running-0001")
    assert cancel.status == 200
    response = await running
    assert response.status == 409
    assert (await response.json())["error"]["code"] == "cancelled"
    # The two warm-up calls, then the chunk that was in flight: later chunks and the queued text never ran.
    assert scripted.calls == [WARM_UP_TEXT, WARM_UP_TEXT, "First part of it."]

    stats = await (await client.get("/status/statistics")).json()
    assert (stats["total_requests"], stats["cancelled_requests"], stats["completed_requests"]) == (2, 2, 0)
    for rid in ("queued-00001", "running-0001"):
        record = await (await client.get(f"/status/requests/{rid}")).json()
        assert record["status"] == "cancelled"
    gone = await client.delete("/v1/audio/speech/running-0001")
    assert gone.status == 409
    unknown = await client.delete("/v1/audio/speech/unknown-0001")
    assert unknown.status == 404


async def test_cancelling_another_id_leaves_the_running_request_alone(make_client, scripted):
    """While one request speaks, a DELETE naming an unknown id (404) or a finished request
    (409) cancels nothing: the running request is spoken to its end."""
    client = await make_client(engine=scripted)
    done = await client.post("/v1/audio/speech", json={"input": "Spoken and done."}, headers={"X-Request-ID": "finished-001"})
    assert done.status == 200
    scripted.hold()
    running = asyncio.ensure_future(
        client.post("/v1/audio/speech", json={"input": "Still speaking here."}, headers={"X-Request-ID": "running-0002"})
    )
    assert await asyncio.to_thread(scripted.wait_started) == "Still speaking here."
    assert (await client.delete("/v1/audio/speech/unknown-0002")).status == 404
    assert (await client.delete("/v1/audio/speech/finished-001")).status == 409
    scripted.release()
    response = await running
    assert response.status == 200
    assert decode_wav(await response.read())[2] == len(scripted.tone("Still speaking here."))
    record = await (await client.get("/status/requests/running-0002")).json()
    assert record["status"] == "completed"


async def test_engine_failure_ends_request_in_error_and_server_keeps_serving(make_client):
    from doubles import ScriptedEngine

    engine = ScriptedEngine(fail_on="explode")
    client = await make_client(engine=engine)
    failed = await client.post("/v1/audio/speech", json={"input": "Please explode now."})
    assert failed.status == 500
    body = await failed.json()
    assert "scripted failure" in body["error"]["message"]
    rid = failed.headers["X-Request-ID"]
    record = await (await client.get(f"/status/requests/{rid}")).json()
    assert record["status"] == "error" and "scripted failure" in record["error_message"]

    ok = await client.post("/v1/audio/speech", json={"input": "All is well."})
    assert ok.status == 200
    stats = await (await client.get("/status/statistics")).json()
    assert (stats["total_requests"], stats["completed_requests"], stats["error_requests"]) == (2, 1, 1)
    assert stats["success_rate"] == 50.0
