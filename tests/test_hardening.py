"""API key, limits and Prometheus metrics."""

from __future__ import annotations

import asyncio

import pytest
from conftest import core_of
from doubles import ScriptedEngine

KEY = "correct-horse-battery-staple"


@pytest.mark.parametrize(
    "method,path",
    [
        ("GET", "/status"),
        ("GET", "/status/progress"),
        ("GET", "/v1/models"),
        ("GET", "/config"),
        ("GET", "/info"),
        ("GET", "/metrics"),
        ("GET", "/status/stream"),
        ("POST", "/v1/audio/speech"),
        ("DELETE", "/v1/audio/speech/some-request-id"),
    ],
)
async def test_api_key_guards_every_endpoint_but_health_and_ping(make_client, method, path):
    client = await make_client(api_key=KEY)
    missing = await client.request(method, path, json={"input": "Hi."})
    assert missing.status == 401
    assert missing.headers["WWW-Authenticate"] == "Bearer"
    assert (await missing.json())["error"]["code"] == "missing_api_key"
    wrong = await client.request(method, path, json={"input": "Hi."}, headers={"Authorization": "Bearer nope"})
    assert wrong.status == 401
    assert (await wrong.json())["error"]["code"] == "invalid_api_key"


async def test_right_api_key_is_accepted_in_each_form_and_open_paths_need_none(make_client):
    client = await make_client(api_key=KEY)
    for path in ("/health", "/v1/health", "/ping"):
        assert (await client.get(path)).status == 200
    speech = await client.post("/v1/audio/speech", json={"input": "Hi."}, headers={"Authorization": f"Bearer {KEY}"})
    assert speech.status == 200
    assert (await client.get("/status", headers={"X-API-Key": KEY})).status == 200
    stream = await client.get(f"/status/stream?api_key={KEY}")  # EventSource cannot send headers
    assert stream.status == 200
    stream.close()
    stats = await (await client.get("/status/statistics", headers={"Authorization": f"Bearer {KEY}"})).json()
    assert stats["total_requests"] == 1  # refused requests never counted


async def test_without_api_key_setting_no_key_is_needed(make_client):
    client = await make_client()
    assert (await client.get("/status")).status == 200


async def test_event_stream_subscribers_are_limited(make_client):
    client = await make_client(max_sse_subscribers=2)
    first, second = await client.get("/status/stream"), await client.get("/events")
    assert (first.status, second.status) == (200, 200)
    third = await client.get("/v1/status/stream")
    assert third.status == 429
    error = (await third.json())["error"]
    assert error["code"] == "too_many_streams"
    assert error["message"] == "Too many open event streams (2); try again later"
    assert third.headers["Retry-After"] == "5"
    first.close()
    second.close()


def metric(text: str, name: str, **labels: str) -> float:
    """One sample's value from the Prometheus text format."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        series, _, value = line.rpartition(" ")
        metric_name, _, label_text = series.partition("{")
        if metric_name != name:
            continue
        found = dict(part.split("=", 1) for part in label_text.rstrip("}").split(",") if part)
        if all(found.get(k) == f'"{v}"' for k, v in labels.items()):
            return float(value)
    raise AssertionError(f"no sample {name}{labels} in:\n{text}")


async def test_metrics_count_requests_queue_and_generation(make_client):
    engine = ScriptedEngine(fail_on="explode")
    client = await make_client(engine=engine)
    for text in ("One fine sentence.", "Another fine one.", "Please explode."):
        await client.post("/v1/audio/speech", json={"input": text})
    engine.hold()
    held = asyncio.ensure_future(client.post("/v1/audio/speech", json={"input": "Held in the engine."}))
    await asyncio.to_thread(engine.wait_started)
    queued = asyncio.ensure_future(client.post("/v1/audio/speech", json={"input": "Waiting its turn."}))
    while len(core_of(client).worker.queue) < 1:
        await asyncio.sleep(0)
    stream = await client.get("/status/stream")

    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    text = await response.text()
    assert metric(text, "chatterbox_requests_total", status="completed", engine="scripted") == 2
    assert metric(text, "chatterbox_requests_total", status="error", engine="scripted") == 1
    assert metric(text, "chatterbox_requests_active", engine="scripted") == 2
    assert metric(text, "chatterbox_queue_depth") == 1
    assert metric(text, "chatterbox_sse_subscribers") == 1
    assert metric(text, "chatterbox_generation_seconds_count", engine="scripted") == 2
    assert metric(text, "chatterbox_real_time_factor_count", engine="scripted") == 2

    stream.close()
    engine.release(2)
    assert [r.status for r in await asyncio.gather(held, queued)] == [200, 200]
    text = await (await client.get("/metrics")).text()
    assert metric(text, "chatterbox_requests_total", status="completed", engine="scripted") == 4
    assert metric(text, "chatterbox_requests_active", engine="scripted") == 0


async def test_metrics_count_each_engines_active_requests_under_its_own_name(make_client, make_scripted):
    """``chatterbox_requests_active`` is by engine: a request queued for a second engine that
    has not loaded yet (no event has named it) counts once under that engine's name, not
    under the default engine's; both go back to 0 once their requests end."""
    default = make_scripted()
    second = make_scripted()
    second.name = "second"
    client = await make_client(engine=[default, second])
    default.hold()
    held = asyncio.ensure_future(client.post("/v1/audio/speech", json={"input": "Held in the default engine."}))
    await asyncio.to_thread(default.wait_started)
    waiting = asyncio.ensure_future(
        client.post("/v1/audio/speech", json={"input": "Waiting for the second engine.", "model": "second"},
                    headers={"X-Request-ID": "for-the-second"})
    )
    async with asyncio.timeout(10):
        while (await client.get("/status/requests/for-the-second")).status != 200:
            assert not waiting.done()
            await asyncio.sleep(0)  # until its queued event is folded
    assert (await (await client.get("/v1/models/second")).json())["engine_state"]["state"] == "not_started"
    text = await (await client.get("/metrics")).text()
    assert metric(text, "chatterbox_requests_active", engine="scripted") == 1
    assert metric(text, "chatterbox_requests_active", engine="second") == 1
    default.release(10)
    assert [r.status for r in await asyncio.gather(held, waiting)] == [200, 200]
    text = await (await client.get("/metrics")).text()
    assert metric(text, "chatterbox_requests_active", engine="scripted") == 0
    assert metric(text, "chatterbox_requests_active", engine="second") == 0


def test_metrics_count_another_nodes_request_on_an_engine_this_node_does_not_run():
    """On a shared event log every node's /metrics counts every node's active requests; one
    queued by another node on an engine this node has none of (no engine event of this
    node names it) counts once under that engine's name."""
    from chatterbox_status.events import EventBus
    from chatterbox_status.metrics import Metrics
    from chatterbox_status.tracker import StatusTracker

    bus = EventBus()
    tracker = StatusTracker(10, "hibari", node="node-a")
    bus.add_listener(tracker.apply)
    metrics = Metrics(bus, tracker)
    bus.publish("engine", {"name": "hibari", "node": "node-a", "state": "ready"})
    bus.publish("engine", {"name": "turbo", "node": "node-b", "state": "ready"})  # node-b's own: not folded here
    for request_id, node, engine in (("on-a", "node-a", "hibari"), ("on-b", "node-b", "turbo")):
        bus.publish("status", {"request_id": request_id, "status": "queued", "node": node, "engine": engine, "text_length": 20})
    text = metrics.render().decode()
    assert metric(text, "chatterbox_requests_active", engine="hibari") == 1
    assert metric(text, "chatterbox_requests_active", engine="turbo") == 1
