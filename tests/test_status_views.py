"""The fields of the status views as a dashboard reads them: exact keys, values and roundings.

Written against the mutants of tracker.py that survived the suite (docs/mutation.rst): the
idle bodies, the statistics before and after requests, every field of a queue entry, and
which request /status shows while the model is still loading.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from conftest import core_of, record_events

from chatterbox_status.events import Event
from chatterbox_status.tracker import StatusTracker

PROGRESS_KEYS = {"current_chunk", "total_chunks", "current_step", "progress_percentage", "estimated_completion"}
QUEUE_ENTRY_KEYS = {"request_id", "position", "text_length", "queued_at", "estimated_start", "estimated_completion"}
LONG_TEXT = " ".join(
    [
        "The first sentence of the long text is here.",
        "A second sentence follows the first one closely.",
        "Then comes a third sentence with a few more words.",
    ]
)


async def get_json(client, path: str) -> dict:
    response = await client.get(path)
    assert response.status == 200, (path, response.status, await response.text())
    return await response.json()


async def post(client, text: str, request_id: str):
    response = await client.post("/v1/audio/speech", json={"input": text}, headers={"X-Request-ID": request_id})
    await response.read()
    return response


async def until(client, request_id: str, status: str, task: asyncio.Future | None = None) -> None:
    """Until /status/requests/ID says ``status`` (or the task answered first); fails after 10 s."""
    async with asyncio.timeout(10):
        while task is None or not task.done():
            response = await client.get(f"/status/requests/{request_id}")
            assert response.status in (200, 404), await response.text()  # 404: not announced yet
            if response.status == 200 and (await response.json())["status"] == status:
                return
            await asyncio.sleep(0)


def ms_rounded(value: float) -> bool:
    return value == round(value, 3)


async def test_a_fresh_server_reports_zeros_and_an_empty_queue(make_client, scripted):
    client = await make_client(engine=scripted)
    stats = await get_json(client, "/status/statistics")
    zeros = {
        "total_requests": 0,
        "completed_requests": 0,
        "error_requests": 0,
        "cancelled_requests": 0,
        "success_rate": 0.0,
        "average_duration_seconds": 0.0,
        "average_text_length": 0.0,
    }
    assert stats == {**zeros, "is_processing": False, "engines": {"scripted": zeros}}
    status = await get_json(client, "/status")
    engines = status.pop("engines")
    assert status == {
        "status": "idle",
        "is_processing": False,
        "message": "No active TTS requests",
        "total_requests": 0,
        "queue": {"length": 0, "requests": []},
    }
    assert [(e["name"], e["state"], e["in_use"]) for e in engines] == [("scripted", "ready", 0)]
    assert engines[0]["idle_since"] is not None and engines[0]["unloads_at"] == round(engines[0]["idle_since"] + 300, 3)


async def test_averages_are_the_means_of_what_the_history_shows(make_client, make_scripted):
    """Checked after each request, whose durations differ with their length: a rounding to the
    wrong digit shows whatever the durations are."""
    client = await make_client(engine=make_scripted(work_seconds_per_char=0.001))
    texts = ["One.", "A second request.", "And a third, somewhat longer request.", "Four.", "The fifth and last."]
    for n, text in enumerate(texts, start=1):
        assert (await post(client, text, f"average-{n}")).status == 200
        history = (await get_json(client, "/status/history"))["request_history"]
        assert all(ms_rounded(r["duration_seconds"]) for r in history)
        # A completed request's estimated completion is when it completed, to the millisecond.
        assert all(ms_rounded(r["progress"]["estimated_completion"]) for r in history)
        stats = await get_json(client, "/status/statistics")
        # The history shows durations rounded to the millisecond, the average is of the exact
        # ones: they agree within a millisecond, and the average is itself to the millisecond.
        mean_shown = sum(r["duration_seconds"] for r in history) / n
        assert stats["average_duration_seconds"] == pytest.approx(mean_shown, abs=0.001 + 1e-9)
        assert ms_rounded(stats["average_duration_seconds"])
        assert stats["average_text_length"] == round(sum(map(len, texts[:n])) / n, 1)
        assert stats["success_rate"] == 100.0


async def test_a_queue_entry_carries_every_documented_field(make_client, scripted):
    client = await make_client(engine=scripted)
    scripted.hold()
    running = asyncio.ensure_future(post(client, "The running request.", "fields-running"))
    await asyncio.to_thread(scripted.wait_started)
    text = "The request that waits its turn."
    queued = asyncio.ensure_future(post(client, text, "fields-queued"))
    await until(client, "fields-queued", "queued", queued)

    asked_at = time.time()
    status = await get_json(client, "/status")
    assert set(status["progress"]) == PROGRESS_KEYS
    # A running request past its estimate is expected no earlier than now (to the millisecond).
    assert status["progress"]["estimated_completion"] >= round(asked_at, 3)
    assert status["engine"] == "scripted"
    queue = status["queue"]
    assert queue["length"] == 1
    [entry] = queue["requests"]
    assert set(entry) == QUEUE_ENTRY_KEYS
    record = await get_json(client, "/status/requests/fields-queued")
    assert entry["request_id"] == "fields-queued" and entry["position"] == 1
    assert entry["text_length"] == len(text) == record["text_length"]
    assert entry["queued_at"] == record["start_time"]
    progress = await get_json(client, "/status/progress")
    assert (progress["request_id"], progress["queue_length"]) == ("fields-running", 1)
    assert (await get_json(client, "/status/requests/fields-running"))["engine"] == "scripted"

    scripted.release(10)
    assert [r.status for r in await asyncio.gather(running, queued)] == [200, 200]


async def test_while_the_model_loads_status_shows_the_request_that_is_past_the_queue(make_client, make_scripted):
    """A long-text job waits queued for the model; a speech request waits in 'initializing'."""
    engine = make_scripted()
    engine.load_gate.clear()
    client = await make_client(engine=engine, wait_loaded=False)
    created = await client.post("/audio/speech/long", json={"input": LONG_TEXT, "chunk_size": 55})
    assert created.status == 200, await created.text()
    job_id = (await created.json())["job_id"]
    await until(client, job_id, "queued")

    # Only the queued job: it is what /status shows; it could start now, but without a measured
    # throughput nobody can say when it ends.
    status = await get_json(client, "/status")
    assert (status["request_id"], status["status"], status["is_processing"]) == (job_id, "queued", True)
    [entry] = status["queue"]["requests"]
    assert entry["request_id"] == job_id
    assert entry["estimated_start"] is not None and ms_rounded(entry["estimated_start"])
    assert entry["estimated_completion"] is None

    speech = asyncio.ensure_future(post(client, "Waiting for the model.", "loading-speech"))
    await until(client, "loading-speech", "initializing", speech)
    status = await get_json(client, "/status")
    assert (status["request_id"], status["status"]) == ("loading-speech", "initializing")
    assert status["progress"]["estimated_completion"] is None
    [entry] = status["queue"]["requests"]
    # Behind a request whose end is unknown, the job's start is unknown too.
    assert (entry["request_id"], entry["estimated_start"], entry["estimated_completion"]) == (job_id, None, None)

    engine.load_gate.set()
    assert (await speech).status == 200
    await until(client, job_id, "completed")


async def test_queue_estimates_follow_the_pace_measured_on_finished_requests(make_client, make_scripted):
    """The warm-up was fast; a slow request moves the estimate towards its pace, a share at a time."""
    engine = make_scripted()
    client = await make_client(engine=engine)
    pace = 0.01  # seconds per character from now on, far slower than the warm-up
    engine.work_seconds_per_char = pace
    assert (await post(client, "A slow request of fifty characters, give or take.", "slow-request-1")).status == 200

    engine.hold()
    running = asyncio.ensure_future(post(client, "Held.", "pace-running"))
    await asyncio.to_thread(engine.wait_started)
    text = "Waiting for its turn, forty characters."
    queued = asyncio.ensure_future(post(client, text, "pace-queued"))
    await until(client, "pace-queued", "queued", queued)
    [entry] = (await get_json(client, "/status"))["queue"]["requests"]
    estimated_pace = (entry["estimated_completion"] - entry["estimated_start"]) / len(text)
    # One slow request weighs 0.3 of the average: well above the warm-up's pace, below the new one.
    assert 0.2 * pace < estimated_pace < 0.6 * pace, estimated_pace
    engine.release(10)
    assert [r.status for r in await asyncio.gather(running, queued)] == [200, 200]


async def test_a_full_history_forgets_its_oldest_request_first(make_client, scripted):
    """HISTORY_SIZE=2: after three requests the first has left (404), the other two are
    still found by id, as the history lists them."""
    client = await make_client(engine=scripted, history_size=2)
    for request_id in ("history-first-1", "history-second-2", "history-third-3"):
        assert (await post(client, "A short sentence.", request_id)).status == 200
    assert (await client.get("/status/requests/history-first-1")).status == 404
    for request_id in ("history-second-2", "history-third-3"):
        assert (await get_json(client, f"/status/requests/{request_id}"))["status"] == "completed"
    listed = [r["request_id"] for r in (await get_json(client, "/status/history"))["request_history"]]
    assert listed == ["history-third-3", "history-second-2"]


def test_measured_throughput_moves_toward_each_new_measurement():
    """The seconds-per-character average moves from the warm-up's figure toward what a
    finished request measured (by THROUGHPUT_ALPHA of the gap), never away from it."""
    from chatterbox_status.events import Event
    from chatterbox_status.tracker import THROUGHPUT_ALPHA, StatusTracker

    tracker = StatusTracker(history_size=10)
    tracker.apply(Event(1, "engine", {"timestamp": 0.0, "state": "ready", "seconds_per_char": 0.01}))
    tracker.apply(Event(2, "status", {"timestamp": 1.0, "request_id": "r-00000001", "status": "queued", "text_length": 100}))
    tracker.apply(
        Event(3, "status", {"timestamp": 3.0, "request_id": "r-00000001", "status": "completed",
                            "generation_seconds": 2.0, "generated_characters": 100})
    )
    assert tracker.seconds_per_char is not None
    assert 0.01 < tracker.seconds_per_char < 0.02
    assert tracker.seconds_per_char == pytest.approx(0.01 + THROUGHPUT_ALPHA * (0.02 - 0.01))


def two_nodes_queues(now: float, lanes: int | None, waiting: tuple[str, ...]) -> StatusTracker:
    """A tracker of a shared event log: node A runs a request due at ``now`` + 100 s, node B
    one due at ``now`` + 5 s (0.01 s a character), and ``waiting`` (each named for its node,
    100 characters) are queued after them, in that order."""
    tracker = StatusTracker(10, "hibari", node="a")
    if lanes is not None:  # else as a node without engine workers has it
        tracker.lanes = lanes
    events = [
        ("engine", {"name": "hibari", "node": "a", "state": "ready", "seconds_per_char": 0.01}),
        ("status", {"request_id": "long-on-a", "status": "queued", "node": "a", "text_length": 10_000, "engine": "hibari"}),
        ("status", {"request_id": "long-on-a", "status": "generating_audio", "estimated_completion": now + 100}),
        ("status", {"request_id": "short-on-b", "status": "queued", "node": "b", "text_length": 500, "engine": "hibari"}),
        ("status", {"request_id": "short-on-b", "status": "generating_audio", "estimated_completion": now + 5}),
        *(
            ("status", {"request_id": name, "status": "queued", "node": name[-1], "text_length": 100, "engine": "hibari"})
            for name in waiting
        ),
    ]
    for n, (type, data) in enumerate(events, start=1):
        tracker.apply(Event(n, type, {"timestamp": now, **data}))
    return tracker


def test_on_a_shared_event_log_each_nodes_queue_waits_only_for_its_own_node():
    """Nodes sharing a Redis event log each run their own queue: a request queued on an idle
    node is not estimated behind another node's long request."""
    now = time.time()
    tracker = two_nodes_queues(now, None, ("next-on-a", "next-on-b"))
    queue = {entry["request_id"]: entry for entry in tracker.queue_view(now)["requests"]}
    assert [queue[r]["position"] for r in ("next-on-a", "next-on-b")] == [1, 2]  # one queue, in order
    assert queue["next-on-a"]["estimated_start"] == round(now + 100, 3)
    assert queue["next-on-b"]["estimated_start"] == round(now + 5, 3)  # B's own running request only
    assert queue["next-on-b"]["estimated_completion"] == round(now + 5 + 100 * 0.01, 3)


def test_with_engine_workers_every_nodes_queue_waits_for_the_first_free_worker():
    """Nodes sharing engine workers (WORKERS) share their queue too: with two workers busy,
    the next request, whichever node queued it, starts when the first of them frees, and
    the one after it when the second does."""
    now = time.time()
    tracker = two_nodes_queues(now, 2, ("next-on-a", "next-on-b", "last-on-a"))
    queue = {entry["request_id"]: entry for entry in tracker.queue_view(now)["requests"]}
    assert [queue[r]["position"] for r in ("next-on-a", "next-on-b", "last-on-a")] == [1, 2, 3]
    assert queue["next-on-a"]["estimated_start"] == round(now + 5, 3)  # B's request frees a worker first
    assert queue["next-on-b"]["estimated_start"] == round(now + 5 + 1, 3)  # after next-on-a, on that worker
    assert queue["last-on-a"]["estimated_start"] == round(now + 5 + 2, 3)  # still before A's long one ends
    tracker.lanes = 1  # one worker left: one line behind everything running
    queue = {entry["request_id"]: entry for entry in tracker.queue_view(now)["requests"]}
    assert queue["next-on-a"]["estimated_start"] == round(now + 100, 3)
    assert queue["next-on-b"]["estimated_start"] == round(now + 101, 3)


async def test_a_request_id_used_again_after_it_left_the_history_starts_afresh(make_client, scripted):
    """HISTORY_SIZE=1: once a client's request id has left the history it may be used again,
    and the new request shows its own text and starts at 0%, not its predecessor's figures."""
    client = await make_client(engine=scripted, history_size=1)
    assert (await post(client, "The first words sent under this id.", "reused-id-0001")).status == 200
    assert (await post(client, "Another request pushes it out of the history.", "pusher-id-0002")).status == 200
    assert (await client.get("/status/requests/reused-id-0001")).status == 404
    scripted.hold()
    again = asyncio.ensure_future(post(client, "Other words, later, under the same id.", "reused-id-0001"))
    await asyncio.to_thread(scripted.wait_started)
    record = await get_json(client, "/status/requests/reused-id-0001")
    assert record["status"] == "generating_audio"
    assert record["text_preview"] == "Other words, later, under the same id."
    assert record["progress"]["progress_percentage"] == 0.0
    scripted.release()
    assert (await again).status == 200


async def test_the_text_preview_is_the_whole_text_up_to_a_hundred_characters(make_client, scripted):
    """A text of 100 characters is its own preview; one character more, and the preview is the
    first 100 followed by "..."."""
    client = await make_client(engine=scripted)
    exact = ("Every word of this sentence counts. " * 3)[:99] + "."
    longer = exact[:-1] + "s."
    assert (len(exact), len(longer)) == (100, 101)
    for request_id, text, shown in (("preview-exact", exact, exact), ("preview-longer", longer, longer[:100] + "...")):
        assert (await post(client, text, request_id)).status == 200
        assert (await get_json(client, f"/status/requests/{request_id}"))["text_preview"] == shown


async def test_the_engine_worker_that_takes_a_chunk_is_named_in_the_record_once_per_worker(make_client, scripted):
    """With WORKERS the chunk queue calls the core back when an engine worker claims one of a
    request's chunks (``Core._taken``, as ``ChunkQueue`` does). The record names the latest
    worker; each new worker is one progress event, with the request's figures; the same worker
    again, or a request no longer running, changes nothing."""
    client = await make_client(engine=scripted)
    core = core_of(client)
    events = record_events(client, ("progress",))
    scripted.hold()
    speaking = asyncio.ensure_future(post(client, "Held in its one chunk.", "taken-by-0001"))
    await asyncio.to_thread(scripted.wait_started)
    await until(client, "taken-by-0001", "generating_audio")
    for worker in ("worker-a", "worker-a", "worker-b", "worker-b"):
        core._taken("taken-by-0001", worker)
    core._taken("never-sent-0002", "worker-a")
    assert (await get_json(client, "/status/requests/taken-by-0001"))["worker"] == "worker-b"
    named = [e.data for e in events if "worker" in e.data]
    assert [(d["request_id"], d["worker"]) for d in named] == [("taken-by-0001", "worker-a"), ("taken-by-0001", "worker-b")]
    assert [(d["status"], d["current_chunk"], d["total_chunks"]) for d in named] == [("generating_audio", 1, 1)] * 2
    assert (await client.get("/status/requests/never-sent-0002")).status == 404
    scripted.release()
    assert (await speaking).status == 200
    core._taken("taken-by-0001", "worker-c")  # finished: its progress is forgotten
    record = await get_json(client, "/status/requests/taken-by-0001")
    assert (record["status"], record["worker"]) == ("completed", "worker-b")
    assert len([e for e in events if "worker" in e.data]) == 2


async def test_a_requests_audio_duration_is_given_to_the_millisecond(make_client, scripted):
    """The record's ``audio_duration_seconds`` is the audio sent, rounded to the millisecond
    like every duration of the status API: an engine whose chunks are no whole number of
    milliseconds shows it rounded, not to a tenth of one."""
    scripted.seconds_per_char = 0.0201  # 321.6 samples a character at 16 kHz
    client = await make_client(engine=scripted)
    body = {"input": "A sentence of a few words, spoken once.", "response_format": "pcm"}
    response = await client.post("/v1/audio/speech", json=body, headers={"X-Request-ID": "duration-ms-0001"})
    assert response.status == 200
    seconds = len(await response.read()) / 2 / scripted.sample_rate
    assert round(seconds, 4) != round(seconds, 3)  # the premise: a tenth of a millisecond shows
    record = await get_json(client, "/status/requests/duration-ms-0001")
    assert record["audio_duration_seconds"] == round(seconds, 3)
