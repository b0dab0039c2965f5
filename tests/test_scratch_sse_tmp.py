import asyncio, time
from conftest import core_of, record_events
from eventsource import EventSource

TEXT = "The morning train left the station on time. Passengers read their papers quietly. A child waved at the cows in the field. Then the rain began to fall."

async def test_x(make_client):
    client = await make_client(max_chunk_length=60)
    r = await client.get("/status/stream")
    print(r.status, r.headers)
    es = EventSource(r)
    t = time.time()
    post = asyncio.ensure_future(client.post("/v1/audio/speech", json={"input": TEXT}))
    evs = await es.until(lambda e: e.type == "status" and e.json()["status"] == "completed")
    for e in evs: print(e.id, e.type, e.json().get("status"), e.json().get("progress_percentage"), len(e.data))
    print(time.time() - t, (await post).status)

async def test_small_queue(make_client):
    client = await make_client(max_chunk_length=60, sse_queue_size=4)
    r = await client.get("/status/stream")
    es = EventSource(r)
    print(await es.next_event())
    post = asyncio.ensure_future(client.post("/v1/audio/speech", json={"input": TEXT}))
    evs = await es.rest()
    for e in evs: print(e.id, e.type, e.json().get("status"))
    print((await post).status, core_of(client).bus.subscriber_count)
