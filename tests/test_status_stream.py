"""GET /status/stream: the bus as Server-Sent Events, read the way a browser's EventSource reads it.

Every read goes through ``tests/eventsource.py`` (the WHATWG event-stream interpretation)
and is bounded by a timeout, so a stream that stalls or never ends fails the test
instead of hanging it. What a stream carries is checked against the bus itself (a
listener records every event as it is published) and against the polling API.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from conftest import core_of, record_events
from eventsource import Comment, EventSource, Message
from helpers import LIFECYCLE

# Four sentences: with max_chunk_length=60 the embedded voice speaks them as four chunks,
# fifteen events from queued to completed.
STORY = (
    "The morning train left the station on time. Passengers read their papers quietly. "
    "A child waved at the cows in the field. Then the rain began to fall."
)
TERMINAL = {"completed", "error", "cancelled"}
PROGRESS_FIELDS = {"current_step", "current_chunk", "total_chunks", "progress_percentage", "estimated_completion"}
EVENT_FIELDS = {"request_id", "status", "timestamp", "is_processing", "duration_seconds", "text_preview"} | PROGRESS_FIELDS
# What a whole-server stream carries: request events and the engine's load events.
STREAMED_TYPES = ("status", "progress", "engine")


async def open_stream(client, path: str = "/status/stream", **kwargs) -> EventSource:
    response = await client.get(path, **kwargs)
    assert response.status == 200, await response.text()
    assert response.content_type == "text/event-stream"
    return EventSource(response)


def speak(client, text: str = STORY, request_id: str | None = None) -> asyncio.Future:
    headers = {"X-Request-ID": request_id} if request_id else {}
    return asyncio.ensure_future(client.post("/v1/audio/speech", json={"input": text}, headers=headers))


def ends(request_id: str | None = None, status: str | None = None):
    """A predicate for `EventSource.until`: this request's terminal (or given) status event."""

    def match(event: Message) -> bool:
        data = event.json()
        if event.type != "status" or (request_id is not None and data["request_id"] != request_id):
            return False
        return data["status"] == status if status else data["status"] in TERMINAL

    return match


def seen(events) -> list[tuple[int, str, dict]]:
    """(id, type, data) of stream messages or bus events, data as it looks on the wire."""
    out = []
    for e in events:
        if isinstance(e, Message):
            out.append((e.id, e.type, e.json()))
        else:
            out.append((e.id, e.type, json.loads(json.dumps(e.data))))
    return out


def transitions(events: list[Message]) -> list[str]:
    """The statuses of the status events, each run of repeats counted once."""
    out: list[str] = []
    for event in events:
        if event.type == "status" and (not out or out[-1] != event.json()["status"]):
            out.append(event.json()["status"])
    return out


# -- the snapshot -------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/status/stream", "/v1/status/stream", "/events"])
async def test_every_alias_streams_events_starting_with_a_snapshot_of_progress(make_client, scripted, path):
    client = await make_client(engine=scripted)
    stream = await open_stream(client, path)
    assert stream.response.headers["Cache-Control"] == "no-cache"
    first = await stream.next_event()
    assert first.type == "snapshot"
    # The id of the last event the snapshot reflects, so a reconnect resumes right after it.
    assert first.id == core_of(client).bus.last_id
    progress = await (await client.get("/status/progress")).json()
    assert progress["status"] == "idle"
    snapshot = first.json()
    assert {k: snapshot[k] for k in progress} == progress
    assert isinstance(snapshot["timestamp"], float)


# -- one request, followed live ---------------------------------------------------------


async def test_a_request_followed_on_the_stream_shows_every_transition_and_agrees_with_polling(make_client):
    client = await make_client(max_chunk_length=60)
    stream = await open_stream(client)
    snapshot = await stream.next_event()
    posted = speak(client)
    events = await stream.until(ends())
    response = await posted
    assert response.status == 200
    request_id = response.headers["X-Request-ID"]

    ids = [snapshot.id] + [e.id for e in events]
    assert ids == sorted(set(ids)), "event ids must increase strictly"
    # Besides the request's own events, the engine's: in use while it runs, then idle.
    engine = [e.json() for e in events if e.type == "engine"]
    assert [(e["name"], e["in_use"], e["idle_since"] is None) for e in engine] == [("hibari", 1, True), ("hibari", 0, False)]
    events = [e for e in events if e.type != "engine"]
    assert {e.type for e in events} == {"status", "progress"}
    assert transitions(events) == LIFECYCLE
    for event in events:
        data = event.json()
        assert EVENT_FIELDS <= data.keys(), f"{event.type} event lacks {EVENT_FIELDS - data.keys()}"
        assert data["request_id"] == request_id
        assert data["is_processing"] is (data["status"] not in TERMINAL)

    # Each stage before generation names its step.
    steps = [(e.json()["status"], e.json()["current_step"]) for e in events if e.type == "status"][:4]
    assert steps == [
        ("queued", "Waiting in queue"),
        ("initializing", "Starting request processing"),  # the model is loaded already
        ("processing_text", "Validating and preparing text"),
        ("chunking", "Splitting text into chunks"),
    ]
    # One status event as each chunk starts, progress events while chunks are generated.
    generating = [e.json() for e in events if e.type == "status" and e.json()["status"] == "generating_audio"]
    total = generating[0]["total_chunks"]
    assert total == 4
    assert [g["current_chunk"] for g in generating] == list(range(1, total + 1))
    progress = [e.json() for e in events if e.type == "progress"]
    assert progress and all(p["status"] == "generating_audio" for p in progress)
    first_progress = events.index(next(e for e in events if e.type == "progress"))
    last_progress = max(i for i, e in enumerate(events) if e.type == "progress")
    assert transitions(events[:first_progress]) == LIFECYCLE[:5]
    assert transitions(events[last_progress:]) == LIFECYCLE[5:]
    percentages = [e.json()["progress_percentage"] for e in events]
    assert percentages == sorted(percentages) and percentages[-1] == 100.0

    # The stream agrees with the polling API.
    polled = await (await client.get(f"/status/requests/{request_id}")).json()
    last = events[-1].json()
    assert last["status"] == polled["status"] == "completed"
    for name in ("current_chunk", "total_chunks", "progress_percentage", "current_step"):
        assert last[name] == polled["progress"][name]


# -- narrowed to one request ------------------------------------------------------------


async def test_a_stream_narrowed_to_a_future_request_shows_only_it_and_ends_after_its_terminal_event(
    make_client, scripted
):
    client = await make_client(engine=scripted)
    recorded = record_events(client)
    mine = "narrowed-0001"
    stream = await open_stream(client, params={"request_id": mine})
    snapshot = await stream.next_event()
    assert snapshot.type == "snapshot"
    assert snapshot.json()["request_id"] == mine
    assert snapshot.json()["status"] not in TERMINAL

    # Another request runs first and is still running while ours is queued behind it.
    scripted.hold()
    other = speak(client, "Somebody else speaks first.", "other-req-0001")
    await asyncio.to_thread(scripted.wait_started)
    posted = speak(client, "This one is mine.", mine)
    queued = await stream.next_event()
    assert (queued.type, queued.json()["status"]) == ("status", "queued")
    scripted.release(2)

    events = [queued] + await stream.rest()  # returns only at the end of the body
    assert (await posted).status == 200 and (await other).status == 200
    assert events, "the narrowed stream ended without its request's events"
    assert {e.json()["request_id"] for e in events} == {mine}
    assert transitions(events) == LIFECYCLE
    assert events[-1].json()["status"] == "completed"
    # The other request's events were published while this stream was open; none came through.
    assert any(
        e.data["request_id"] == "other-req-0001" and events[0].id < e.id < events[-1].id for e in recorded
    )
    assert [e.id for e in events] == [e.id for e in recorded if e.data["request_id"] == mine]


async def test_a_stream_narrowed_to_a_finished_request_shows_its_terminal_status_and_ends(make_client, scripted):
    client = await make_client(engine=scripted)
    done = await speak(client, "Already finished speaking.", "finished-0001")
    assert done.status == 200
    stream = await open_stream(client, params={"request_id": "finished-0001"})
    events = await stream.rest()
    assert [e.type for e in events] == ["snapshot"]
    data = events[0].json()
    assert (data["request_id"], data["status"], data["progress_percentage"]) == ("finished-0001", "completed", 100.0)


# -- Last-Event-ID ----------------------------------------------------------------------


async def test_reconnecting_with_last_event_id_replays_exactly_what_was_missed(make_client, scripted):
    client = await make_client(engine=scripted)
    recorded = record_events(client, types=STREAMED_TYPES)
    stream = await open_stream(client)
    await stream.next_event()
    first = speak(client, "Heard while connected.")
    last_seen = (await stream.until(ends()))[-1].id
    assert (await first).status == 200
    stream.response.close()

    missed = [speak(client, f"Said while away, number {n}.") for n in (1, 2)]
    assert [(await m).status for m in missed] == [200, 200]
    expected = [e for e in recorded if e.id > last_seen]
    assert len(expected) >= 10

    stream = await open_stream(client, headers={"Last-Event-ID": str(last_seen)})
    assert seen(await stream.events(len(expected))) == seen(expected)
    # Then live events follow on, with nothing repeated and nothing skipped.
    later = speak(client, "Said after coming back.")
    live = await stream.next_event()
    assert (live.id, live.json()["status"]) == (expected[-1].id + 1, "queued")
    assert (await later).status == 200


async def test_reconnecting_after_the_gap_left_the_replay_buffer_gets_a_fresh_snapshot(make_client, scripted):
    client = await make_client(engine=scripted, event_replay_size=4)
    stream = await open_stream(client)
    last_seen = (await stream.next_event()).id
    stream.response.close()
    assert (await speak(client)).status == 200  # far more than four events
    assert core_of(client).bus.last_id - last_seen > 4

    stream = await open_stream(client, headers={"Last-Event-ID": str(last_seen)})
    snapshot = await stream.next_event()
    assert snapshot.type == "snapshot"
    assert snapshot.id == core_of(client).bus.last_id
    progress = await (await client.get("/status/progress")).json()
    assert {k: snapshot.json()[k] for k in progress} == progress
    later = speak(client, "After the fresh snapshot.")
    live = await stream.next_event()
    assert (live.id, live.json()["status"]) == (snapshot.id + 1, "queued")
    assert (await later).status == 200


async def test_a_last_event_id_this_server_never_issued_gets_a_fresh_snapshot(make_client, scripted):
    """After a restart ids start again from 1, and a browser reconnects with the id it saw
    from the old process: it must be told the current state, not left showing the old one."""
    client = await make_client(engine=scripted)
    from_before_restart = core_of(client).bus.last_id + 1000
    stream = await open_stream(client, headers={"Last-Event-ID": str(from_before_restart)})
    posted = speak(client, "Something to say either way.")
    first = await stream.next_event()
    assert (await posted).status == 200
    assert first.type == "snapshot", f"expected a fresh snapshot first, got a {first.type} event {first.data}"


@pytest.mark.parametrize("bad", ["abc", "-1", "²"], ids=["letters", "negative", "superscript-two"])
async def test_a_malformed_last_event_id_is_a_400_json_error(make_client, scripted, bad):
    client = await make_client(engine=scripted)
    response = await client.get("/status/stream", headers={"Last-Event-ID": bad})
    assert response.status == 400
    assert response.content_type == "application/json"
    error = (await response.json())["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["message"]


# -- several subscribers ----------------------------------------------------------------


async def test_two_subscribers_see_identical_event_sequences(make_client):
    client = await make_client(max_chunk_length=60)
    recorded = record_events(client, types=STREAMED_TYPES)
    one, two = await open_stream(client), await open_stream(client)
    snapshots = [await one.next_event(), await two.next_event()]
    assert {s.id for s in snapshots} == {core_of(client).bus.last_id}
    posted = [speak(client), speak(client, "And a second request along with it.")]
    assert [(await p).status for p in posted] == [200, 200]
    assert sum(e.type == "status" and e.data["status"] == "completed" for e in recorded) == 2
    got_one = await one.events(len(recorded))
    got_two = await two.events(len(recorded))
    assert seen(got_one) == seen(got_two) == seen(recorded)


async def test_a_stalled_subscriber_is_dropped_and_never_holds_back_a_reader(make_client):
    # The queue bound sits above the largest burst a request publishes in one go (five
    # events as it starts), so only a subscriber that really stops draining overflows it.
    # An HTTP client that merely stops reading is absorbed by megabytes of socket buffers
    # before its server-side stream falls behind, so the stalled subscriber is one on the
    # bus itself, next to an HTTP stream that is never read.
    client = await make_client(max_chunk_length=20, sse_queue_size=16)
    core = core_of(client)
    recorded = record_events(client, types=STREAMED_TYPES)
    stalled = core.bus.subscribe()
    unread = await open_stream(client)
    reader = await open_stream(client)
    await reader.next_event()
    assert core.bus.subscriber_count == 3

    posted = speak(client)  # more events than the stalled queue holds
    events = await reader.until(ends())
    assert (await posted).status == 200
    assert len(recorded) > 16
    assert seen(events) == seen(recorded)
    assert stalled.dropped
    assert core.bus.subscriber_count == 2  # the reader and the unread stream are still served
    # The unread stream lost nothing either: the server kept writing it into the socket.
    await unread.next_event()
    assert seen(await unread.until(ends())) == seen(recorded)
    # The dropped subscription ends after at most its queue's worth of events.
    leftovers = []
    while (event := await asyncio.wait_for(stalled.get(), 10)) is not None:
        leftovers.append(event)
    assert len(leftovers) == 16
    assert [e.id for e in leftovers] == [e.id for e in recorded[:16]]  # an unbroken run to resume from


async def test_a_reader_that_keeps_up_is_not_dropped_by_a_small_queue(make_client):
    """SSE_QUEUE_SIZE is how far a subscriber may fall *behind*; a reader waiting for the
    next event has not fallen behind, however many events a request publishes at once."""
    client = await make_client(max_chunk_length=20, sse_queue_size=16)
    recorded = record_events(client, types=STREAMED_TYPES)
    reader = await open_stream(client)
    await reader.next_event()
    posted = speak(client)
    events = []
    while (event := await reader.next_event()) is not None:
        events.append(event)
        if ends()(event):
            break
    assert (await posted).status == 200
    assert seen(events) == seen(recorded), "the reader's stream lost events or ended before `completed`"


async def test_a_dropped_stream_loses_nothing_for_a_client_that_reconnects_with_its_last_event_id(make_client):
    """When the server drops a stream, the client's EventSource reconnects with the last id
    it saw; between the two connections it must get every event exactly once."""
    client = await make_client(max_chunk_length=20, sse_queue_size=16)
    recorded = record_events(client, types=STREAMED_TYPES)
    stream = await open_stream(client)
    last_seen = (await stream.next_event()).id
    posted = speak(client)
    events: list[Message] = []
    reconnects = 0
    while not (events and ends()(events[-1])):
        event = await stream.next_event()
        if event is None:  # dropped: reconnect as a browser would
            reconnects += 1
            assert reconnects <= 5
            stream = await open_stream(client, headers={"Last-Event-ID": str(last_seen)})
            continue
        if event.type == "snapshot":
            pytest.fail(f"the gap after id {last_seen} should still be in the replay buffer")
        events.append(event)
        last_seen = event.id
    assert (await posted).status == 200
    assert [e.id for e in events] == [e.id for e in recorded], "events were lost or repeated across the reconnect"
    assert seen(events) == seen(recorded)


# -- keep-alive -------------------------------------------------------------------------


async def test_an_idle_stream_gets_comment_pings(make_client, scripted):
    client = await make_client(engine=scripted, sse_ping_interval=0.2)
    stream = await open_stream(client)
    assert (await stream.next_event()).type == "snapshot"
    for _ in range(2):
        item = await stream.next_item()  # bounded by the reader's timeout
        assert isinstance(item, Comment), f"expected a ping comment on an idle stream, got {item}"
        assert item.text.strip() == "ping"


# -- shutdown ---------------------------------------------------------------------------


async def test_shutdown_cancels_a_request_running_past_the_timeout_then_ends_the_stream(make_client, scripted):
    client = await make_client(engine=scripted, shutdown_timeout=0.5)
    stream = await open_stream(client)
    await stream.next_event()
    scripted.hold()
    posted = speak(client, "Held until the server goes away.")
    await asyncio.to_thread(scripted.wait_started)
    await stream.until(ends(status="generating_audio"))

    closing = asyncio.ensure_future(client.server.close())  # runs the app's on_shutdown
    rest = await stream.rest()  # the body ends cleanly: no payload error, no hang
    await asyncio.wait_for(closing, 10)
    assert rest, "the stream ended without the request's terminal event"
    assert rest[-1].type == "status" and rest[-1].json()["status"] == "cancelled"
    assert all(e.json()["status"] not in TERMINAL for e in rest[:-1] if e.type == "status")
    response = await posted
    assert response.status == 409
    assert (await response.json())["error"]["code"] == "cancelled"


async def test_shutdown_lets_a_request_finish_within_the_timeout_then_ends_every_stream(make_client, scripted):
    client = await make_client(engine=scripted, shutdown_timeout=10)
    core = core_of(client)
    stream = await open_stream(client)
    await stream.next_event()
    scripted.hold()
    posted = speak(client, "Finished during shutdown.")
    await asyncio.to_thread(scripted.wait_started)

    closing = asyncio.ensure_future(core.shutdown())
    refused = await client.post("/v1/audio/speech", json={"input": "Too late for this."})
    assert refused.status == 503  # shutdown has begun
    scripted.release(1)
    rest = await stream.rest()
    await asyncio.wait_for(closing, 10)
    assert rest and rest[-1].json()["status"] == "completed"
    assert transitions(rest)[-3:] == ["concatenating", "finalizing", "completed"]
    assert (await posted).status == 200

    # A stream opened after shutdown gets the final state and ends at once.
    after = await open_stream(client)
    events = await after.rest()
    assert [e.type for e in events] == ["snapshot"]
    assert events[0].json()["status"] == "idle"
