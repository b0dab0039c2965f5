"""The queue in front of the engine: FIFO, bounded, concurrent requests counted exactly."""

from __future__ import annotations

import asyncio
import time

from conftest import core_of, decode_wav, record_events
from test_status_stream import open_stream

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


# -- when the worker counts as idle: shutdown waits for it -------------------------------

BOUND = 30  # seconds a wait may take: a test that would hang fails instead


def first_status(client, request_id: str, status: str) -> asyncio.Future:
    """Resolves once ``request_id`` is published with ``status``."""
    seen: asyncio.Future = asyncio.get_running_loop().create_future()

    def listen(event) -> None:
        data = event.data
        if data.get("request_id") == request_id and data.get("status") == status and not seen.done():
            seen.set_result(data)

    core_of(client).bus.add_listener(listen)
    return seen


def post(client, text: str, request_id: str) -> asyncio.Future:
    return asyncio.ensure_future(client.post("/v1/audio/speech", json={"input": text}, headers={"X-Request-ID": request_id}))


async def shutdown_waits_for(client, scripted, request_id: str) -> None:
    """Begin a shutdown while ``request_id`` is held in its chunk: the server refuses new
    requests but does not finish shutting down (nor end its status stream) until the
    request is released and completes with its audio."""
    core = core_of(client)
    stream = await asyncio.wait_for(open_stream(client), BOUND)
    assert (await asyncio.wait_for(stream.next_event(), BOUND)).type == "snapshot"
    closing = asyncio.ensure_future(core.shutdown())
    refused = await asyncio.wait_for(client.post("/v1/audio/speech", json={"input": "Too late for this."}), BOUND)
    assert refused.status == 503  # shutdown has begun
    assert not closing.done(), "shutdown finished while a request was still running"
    scripted.release()
    rest = await asyncio.wait_for(stream.rest(), BOUND)
    await asyncio.wait_for(closing, BOUND)
    finals = [e.json() for e in rest if e.type == "status" and e.json().get("status") == "completed"]
    assert [data["request_id"] for data in finals] == [request_id]  # the stream carried its end
    record = await asyncio.wait_for(client.get(f"/status/requests/{request_id}"), BOUND)
    assert (await record.json())["status"] == "completed"


async def one_running_one_queued(client, scripted, running: tuple[str, str], queued: tuple[str, str]):
    """The first (text, request id) held in its chunk, the second queued behind it: their posts."""
    scripted.hold()
    first = post(client, running[0], running[1])
    assert await asyncio.wait_for(asyncio.to_thread(scripted.wait_started), BOUND) == running[0]
    in_queue = first_status(client, queued[1], "queued")
    second = post(client, queued[0], queued[1])
    await asyncio.wait_for(in_queue, BOUND)
    return first, second


async def test_shutdown_waits_for_the_running_request_after_the_queued_one_is_cancelled(make_client, scripted):
    """Cancelling the only queued request while another runs leaves the worker busy."""
    client = await make_client(engine=scripted, shutdown_timeout=BOUND)
    running, queued = await one_running_one_queued(
        client, scripted, ("Spoken through the shutdown.", "running-0003"), ("Cancelled while queued.", "queued-00003")
    )
    assert (await asyncio.wait_for(client.delete("/v1/audio/speech/queued-00003"), BOUND)).status == 200
    assert (await asyncio.wait_for(queued, BOUND)).status == 409

    await shutdown_waits_for(client, scripted, "running-0003")
    response = await asyncio.wait_for(running, BOUND)
    assert response.status == 200
    assert decode_wav(await response.read())[2] == len(scripted.tone("Spoken through the shutdown."))


async def test_shutdown_waits_for_the_request_that_was_queued_when_the_one_before_it_ended(make_client, scripted):
    """When a request ends with another queued, the worker is still busy: the next one runs."""
    client = await make_client(engine=scripted, shutdown_timeout=BOUND)
    first, second = await one_running_one_queued(
        client, scripted, ("The first request.", "first-00004"), ("The second request.", "second-0004")
    )
    scripted.release()
    assert (await asyncio.wait_for(first, BOUND)).status == 200
    assert await asyncio.wait_for(asyncio.to_thread(scripted.wait_started), BOUND) == "The second request."

    await shutdown_waits_for(client, scripted, "second-0004")
    response = await asyncio.wait_for(second, BOUND)
    assert response.status == 200
    assert decode_wav(await response.read())[2] == len(scripted.tone("The second request."))


async def test_shutdown_past_its_timeout_cancels_the_running_and_the_queued_request(make_client, scripted):
    """SHUTDOWN_TIMEOUT ends with one request held in its chunk and another queued: both end
    409 ``cancelled``, are counted so, and the shutdown completes."""
    client = await make_client(engine=scripted, shutdown_timeout=0.2)
    running, queued = await one_running_one_queued(
        client, scripted, ("Held past the shutdown timeout.", "running-0005"), ("Still queued at the end.", "queued-00005")
    )

    await asyncio.wait_for(core_of(client).shutdown(), BOUND)
    for call in (running, queued):
        response = await asyncio.wait_for(call, BOUND)
        assert response.status == 409
        assert (await response.json())["error"]["code"] == "cancelled"
    for request_id in ("running-0005", "queued-00005"):
        record = await asyncio.wait_for(client.get(f"/status/requests/{request_id}"), BOUND)
        assert (await record.json())["status"] == "cancelled"
    stats = await (await asyncio.wait_for(client.get("/status/statistics"), BOUND)).json()
    assert (stats["total_requests"], stats["cancelled_requests"], stats["completed_requests"]) == (2, 2, 0)
    assert scripted.calls[-1] == "Held past the shutdown timeout."  # the queued text was never spoken


async def test_a_request_queued_behind_another_waits_without_using_the_cpu(make_client, scripted):
    """While one request is held in its chunk and another is queued behind it, the server
    is idle: the queued one starts when the first ends, and nothing polls for it meanwhile
    (a worker that polled would keep a core busy for as long as its queue waits)."""
    client = await make_client(engine=scripted, shutdown_timeout=BOUND)
    first, second = await one_running_one_queued(
        client, scripted, ("Held while the next one waits.", "held-000006"), ("Waiting its turn quietly.", "waits-00006")
    )
    before = time.process_time()
    await asyncio.sleep(0.5)  # the span measured, not a wait for anything
    used = time.process_time() - before
    assert used < 0.1, f"the server used {used:.2f} s of CPU in 0.5 s with one request held and one queued"
    scripted.release(2)
    for call, text in ((first, "Held while the next one waits."), (second, "Waiting its turn quietly.")):
        response = await asyncio.wait_for(call, BOUND)
        assert response.status == 200
        assert decode_wav(await response.read())[2] == len(scripted.tone(text))
