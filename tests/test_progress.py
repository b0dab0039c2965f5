"""Progress percentages and completion estimates: honest, and never going backwards."""

from __future__ import annotations

import asyncio
import time

import pytest
from conftest import core_of, record_events
from doubles import ScriptedEngine, ThreadHost

LONG_TEXT = " ".join(
    f"Sentence number {n} talks about the weather, the sea and a long walk home." for n in range(1, 31)
)


def assert_never_backwards(samples: list[dict]) -> None:
    by_request: dict[str, list[dict]] = {}
    for sample in samples:
        by_request.setdefault(sample["request_id"], []).append(sample)
    for rows in by_request.values():
        pcts = [r["progress_percentage"] for r in rows]
        assert pcts == sorted(pcts), pcts
        assert all(p < 100.0 for p in pcts[:-1])
        # Until the request ends; then the field holds the actual completion time.
        running = [r for r in rows if r["status"] not in ("completed", "error", "cancelled")]
        etas = [r["estimated_completion"] for r in running if r["estimated_completion"] is not None]
        assert etas == sorted(etas), etas


async def test_percentages_and_estimates_never_go_backwards_while_polled(make_client):
    client = await make_client(max_chunk_length=80)
    events = record_events(client)
    post = asyncio.ensure_future(client.post("/v1/audio/speech", json={"input": LONG_TEXT}))
    polled = []
    while not post.done():
        body = await (await client.get("/status/progress")).json()
        if body["is_processing"]:
            polled.append(body)
    assert (await post).status == 200
    assert len(polled) >= 5, "the request finished before the poller saw it run"
    assert_never_backwards(polled)
    assert_never_backwards([e.data for e in events])
    finals = [e.data for e in events if e.data["status"] == "completed"]
    assert finals[0]["progress_percentage"] == 100.0
    assert all(e.data["progress_percentage"] < 100.0 for e in events if e.data["status"] != "completed")


async def test_percentage_follows_finished_characters_and_chunk_fraction(make_client, scripted):
    client = await make_client(engine=scripted, max_chunk_length=30)
    events = record_events(client)
    scripted.hold()
    text = "Short one. " + "This sentence is much longer."  # 10 + 29 characters, two chunks
    post = asyncio.ensure_future(client.post("/v1/audio/speech", json={"input": text}))
    await asyncio.to_thread(scripted.wait_started)
    first = await (await client.get("/status/progress")).json()
    assert (first["current_chunk"], first["total_chunks"]) == (1, 2)
    assert first["progress_percentage"] == 0.0
    scripted.release()
    await asyncio.to_thread(scripted.wait_started)
    second = await (await client.get("/status/progress")).json()
    assert (second["current_chunk"], second["status"]) == (2, "generating_audio")
    # One finished chunk of 10 characters out of 39: a quarter of the generation share.
    assert second["progress_percentage"] == round(95.0 * 10 / 39, 1)
    scripted.release()
    assert (await post).status == 200
    inside = [e.data["progress_percentage"] for e in events if e.type == "progress"]
    # The engine's half-way report inside the long chunk lands between the chunk boundaries.
    assert round(95.0 * (10 + 0.5 * 29) / 39, 1) in inside


@pytest.mark.parametrize("reports", [True, False], ids=["reporting-engine", "silent-engine"])
async def test_each_finished_chunk_earns_its_share_whatever_the_engine_reports(make_client, make_scripted, reports):
    """At the start of each chunk the percentage is the generation share of the chunks before
    it, also from an engine that reports nothing inside a chunk; a report inside the third
    chunk counts the two before it."""
    engine = make_scripted(reports_progress=reports)
    client = await make_client(engine=engine, max_chunk_length=30)
    events = record_events(client)
    engine.hold()
    chunks = ["Short one.", "This sentence is much longer.", "And a third one ends it."]
    total = sum(len(c) for c in chunks)
    post = asyncio.ensure_future(client.post("/v1/audio/speech", json={"input": " ".join(chunks)}))
    for n, chunk in enumerate(chunks):
        assert await asyncio.to_thread(engine.wait_started) == chunk
        view = await (await client.get("/status/progress")).json()
        done = sum(len(c) for c in chunks[:n])
        assert (view["current_chunk"], view["progress_percentage"]) == (n + 1, round(95.0 * done / total, 1)), view
        engine.release()
    assert (await post).status == 200
    inside = [e.data["progress_percentage"] for e in events if e.type == "progress"]
    if reports:
        assert round(95.0 * (len(chunks[0]) + len(chunks[1]) + 0.5 * len(chunks[2])) / total, 1) in inside


class EagerEngine(ScriptedEngine):
    """Says it is half-way through a chunk as soon as it takes it, before it waits (held)."""

    def synthesize(self, text, voice, params, progress, cancel, on_audio=None):
        progress(0.5)
        return super().synthesize(text, voice, params, progress, cancel, on_audio=on_audio)


async def test_the_next_chunk_running_beside_the_current_one_counts_only_once_it_is_current(make_client):
    """In a cluster another engine worker takes a request's next chunk, handed ahead, while
    its current chunk still runs: the next chunk's reports do not count until the request
    moves on to it, so a short first chunk beside a long second one shows only its own half."""
    engine = EagerEngine()
    client = await make_client(engine=ThreadHost(engine, threads=2), max_chunk_length=30)
    events = record_events(client)
    engine.hold()
    chunks = ["Short one.", "This sentence is much longer."]
    total = sum(map(len, chunks))
    post = asyncio.ensure_future(client.post("/v1/audio/speech", json={"input": " ".join(chunks)}))
    assert sorted([await asyncio.to_thread(engine.wait_started) for _ in chunks]) == sorted(chunks)  # both running
    view = await (await client.get("/status/progress")).json()
    assert (view["current_chunk"], view["progress_percentage"]) == (1, round(95.0 * 0.5 * len(chunks[0]) / total, 1)), view
    engine.release(2)
    assert (await post).status == 200
    first = [e.data["progress_percentage"] for e in events if e.data["current_chunk"] == 1]
    assert max(first) == round(95.0 * len(chunks[0]) / total, 1)  # the first chunk's share, no more


async def test_queued_requests_get_chained_estimates_from_measured_throughput(make_client, scripted):
    client = await make_client(engine=scripted)
    scripted.hold()
    posts = [
        asyncio.ensure_future(client.post("/v1/audio/speech", json={"input": text}))
        for text in ("The running one.", "The first waiting one.", "The second waiting one, longer.")
    ]
    await asyncio.to_thread(scripted.wait_started)
    core = core_of(client)
    while len(core.worker.queue) < 2:
        await asyncio.sleep(0)
    status = await (await client.get("/status")).json()
    running_eta = status["progress"]["estimated_completion"]
    queue = status["queue"]["requests"]
    assert [q["position"] for q in queue] == [1, 2]
    assert queue[0]["estimated_start"] == running_eta
    assert queue[1]["estimated_start"] == queue[0]["estimated_completion"]
    spc = core.tracker.seconds_per_char
    for entry in queue:
        expected = entry["estimated_start"] + entry["text_length"] * spc
        assert abs(entry["estimated_completion"] - expected) < 0.01
    scripted.release(3)
    assert [r.status for r in await asyncio.gather(*posts)] == [200, 200, 200]


class ChattyEngine(ScriptedEngine):
    """Reports progress 200 times per chunk, as a token loop would."""

    def synthesize(self, text, voice, params, progress, cancel):
        for step in range(1, 201):
            progress(step / 201)
        return super().synthesize(text, voice, params, progress, cancel)


async def test_token_by_token_progress_is_thinned_before_it_reaches_subscribers(make_client):
    client = await make_client(engine=ChattyEngine())
    events = record_events(client, types=("progress",))
    response = await client.post("/v1/audio/speech", json={"input": "One chunk that reports very often."})
    assert response.status == 200
    # 200 reports in a few milliseconds: the first and the chunk's end get through, and
    # at most one more per PROGRESS_EVENT_INTERVAL; never one event per token.
    assert 2 <= len(events) <= 10
    assert events[-1].data["progress_percentage"] == 95.0


class PacedEngine(ScriptedEngine):
    """Reports a quarter, a half and three quarters of its one chunk, computing for longer
    than PROGRESS_EVENT_INTERVAL between reports, as a slow model's token loop does."""

    def synthesize(self, text, voice, params, progress, cancel):
        from chatterbox_status.pipeline import PROGRESS_EVENT_INTERVAL

        for fraction in (0.25, 0.5, 0.75):
            progress(fraction)
            time.sleep(3 * PROGRESS_EVENT_INTERVAL)  # the model's compute, not a wait for anything
        return super().synthesize(text, voice, params, progress, cancel)


async def test_reports_further_apart_than_the_event_interval_each_reach_subscribers(make_client):
    client = await make_client(engine=PacedEngine())
    events = record_events(client, types=("progress",))
    text = "One chunk whose reports come slowly."
    response = await client.post("/v1/audio/speech", json={"input": text})
    assert response.status == 200
    # The ScriptedEngine it is reports 0.5 and 1.0 at its end, with no time between them.
    shown = [e.data["progress_percentage"] for e in events]
    assert shown == [round(95.0 * fraction, 1) for fraction in (0.25, 0.5, 0.75, 1.0)], shown


async def test_a_running_request_is_estimated_at_its_own_measured_pace(make_client, make_scripted):
    """The warm-up measured a fast engine; this request's chunks are slow (WORK s/char). Once
    its first chunk is done, its estimate counts that chunk's pace: at least WORK * done /
    (PRIOR_WEIGHT_CHARS + done) seconds for each character still to speak, after the first
    chunk's end, which comes at least its work after its release."""
    from chatterbox_status.pipeline import PRIOR_WEIGHT_CHARS

    engine = make_scripted()
    client = await make_client(engine=engine, max_chunk_length=70)
    chunks = [
        "The first chunk is spoken slowly, at the pace this request measures.",
        "The second chunk waits until the estimate has been read by the test.",
        "And the third chunk ends the request once it is let go by the test.",
    ]
    work = 0.02
    engine.work_seconds_per_char = work
    engine.hold()
    posted = time.time()
    post = asyncio.ensure_future(client.post("/v1/audio/speech", json={"input": " ".join(chunks)}))
    await asyncio.to_thread(engine.wait_started)
    released = time.time()
    engine.release()
    await asyncio.to_thread(engine.wait_started)  # the second chunk, handed ahead, waits
    engine.work_seconds_per_char = 0.0
    while (view := await (await client.get("/status/progress")).json())["current_chunk"] < 2:
        await asyncio.sleep(0)
    done, total = len(chunks[0]), sum(map(len, chunks))
    assert view["total_chunks"] == 3 and view["progress_percentage"] == round(95.0 * done / total, 1)
    remaining = (1.0 - view["progress_percentage"] / 100.0) * total * work * done / (PRIOR_WEIGHT_CHARS + done)
    assert view["estimated_completion"] >= released + work * done + remaining - 0.002, (view, released)
    # And no later than if every character still took the warm-up's pace plus all the time
    # this request has taken so far (its own pace is at most that over what it has done).
    warm_up = core_of(client).tracker.seconds_per_char
    assert view["estimated_completion"] <= time.time() + total * warm_up + (time.time() - posted) + 0.002, view
    engine.release(2)
    assert (await post).status == 200


async def test_each_event_counts_its_requests_duration_to_the_millisecond(make_client, make_scripted):
    """A request's duration_seconds counts from its arrival, and between any two of its events
    grows by the time between them (read as each event is published); durations and
    estimates are to the millisecond."""
    client = await make_client(engine=make_scripted(work_seconds_per_char=0.005))
    seen: list = []
    core_of(client).bus.add_listener(lambda e: seen.append((time.time(), e.data)) if e.type in ("status", "progress") else None)
    sent = time.time()
    response = await client.post("/v1/audio/speech", json={"input": "Sixty characters or so, spoken at a measured, steady pace."})
    assert response.status == 200
    (first_at, first), *rest = seen
    assert rest and rest[-1][1]["status"] == "completed"
    assert 0 <= first["duration_seconds"] <= first_at - sent + 0.0005  # from its arrival (to the millisecond)
    for at, data in rest:
        assert data["duration_seconds"] == round(data["duration_seconds"], 3)
        assert data["estimated_completion"] is None or data["estimated_completion"] == round(data["estimated_completion"], 3)
        assert abs((data["duration_seconds"] - first["duration_seconds"]) - (at - first_at)) < 0.003, (data, at - first_at)
