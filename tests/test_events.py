"""The event bus on its own: ids, fan-out, slow subscribers, replay."""

from __future__ import annotations

from chatterbox_status.events import EventBus


async def test_ids_increase_and_listeners_see_every_event_first():
    bus = EventBus(replay_size=10, subscriber_queue_size=16)
    seen = []
    bus.add_listener(lambda e: seen.append((e.id, bus.subscriber_count)))
    sub = bus.subscribe()
    for n in range(3):
        bus.publish("status", {"n": n})
    assert bus.last_id == 3
    assert [s[0] for s in seen] == [1, 2, 3]
    events = [await sub.get() for _ in range(3)]
    assert [(e.id, e.data["n"]) for e in events] == [(1, 0), (2, 1), (3, 2)]
    assert all("timestamp" in e.data for e in events)


async def test_a_stalled_subscriber_is_dropped_with_an_unbroken_run_and_others_get_everything():
    bus = EventBus(replay_size=100, subscriber_queue_size=16)
    stalled, reader = bus.subscribe(), bus.subscribe()
    got = []
    for n in range(40):
        bus.publish("progress", {"n": n})
        got.append(await reader.get())  # the reader keeps up
    assert [e.id for e in got] == list(range(1, 41))
    assert stalled.dropped and not reader.dropped
    assert bus.subscriber_count == 1
    drained = []
    while (event := await stalled.get()) is not None:
        drained.append(event.id)
    assert drained == list(range(1, 17))  # the oldest 16, no gap: Last-Event-ID 16 resumes it
    assert [e.id for e in bus.since(16)] == list(range(17, 41))


def test_replay_ring_answers_gaps_it_still_holds_and_refuses_older_or_foreign_ids():
    bus = EventBus(replay_size=5, subscriber_queue_size=16)
    for n in range(8):
        bus.publish("status", {"n": n})
    assert [e.id for e in bus.since(5)] == [6, 7, 8]
    assert [e.id for e in bus.since(3)] == [4, 5, 6, 7, 8]  # the ring's oldest is the next one wanted: no gap
    assert bus.since(8) == []
    assert bus.since(2) is None  # 3 has left the ring
    assert bus.since(99) is None  # never issued here: an earlier run of the server


async def test_close_ends_every_subscription_after_what_it_queued_and_refuses_new_ones():
    bus = EventBus()
    sub = bus.subscribe()
    bus.publish("status", {"n": 1})
    bus.close()
    assert (await sub.get()).data["n"] == 1
    assert await sub.get() is None
    late = bus.subscribe()
    assert await late.get() is None
