"""Several engines in one server: the request's model chooses one, it loads on first use,
and it is unloaded (its process ended) after its keep-alive, or to make room when
MAX_LOADED_MODELS are loaded; seen over HTTP and on the event bus.

The default engine is the product's own hibari engine process; the second is
tests/doubles.py's GatedEngine, named "gated", built inside a real engine process (a chunk
whose text holds "HOLD" waits there until the test creates its gate file).
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import wave

from conftest import core_of
from doubles import GatedEngine, ScriptedEngine, ThreadHost, in_process_of_its_own
from test_faults import assert_statistics_add_up

from chatterbox_status.api.long_text import LONG_TEXT
from chatterbox_status.config import Settings
from chatterbox_status.engine_pool import WARM_UP_TEXT
from chatterbox_status.supervisor import engine_process

HIBARI_RATE, GATED_RATE = 24_000, 16_000


def engines(tmp_path, **gated) -> list:
    """The real hibari engine (the default) and the gated double, each in a process of its own."""
    hibari = engine_process("hibari", Settings(engine_threads=1))
    return [hibari, in_process_of_its_own(GatedEngine, name="gated", gate=str(tmp_path / "gate"), **gated)]


def rate_of(data: bytes) -> int:
    with wave.open(io.BytesIO(data)) as w:
        assert w.getnframes() > 0
        return w.getframerate()


async def speak(client, text: str, request_id: str | None = None, **fields):
    headers = {"X-Request-ID": request_id} if request_id else {}
    return await client.post("/v1/audio/speech", json={"input": text, **fields}, headers=headers)


def engine_event(client, name: str, state: str) -> asyncio.Future:
    """Resolves with the first engine event that puts ``name`` in ``state``."""
    seen: asyncio.Future = asyncio.get_running_loop().create_future()

    def listen(event) -> None:
        if event.type == "engine" and event.data.get("name") == name and event.data.get("state") == state and not seen.done():
            seen.set_result(dict(event.data))

    core_of(client).bus.add_listener(listen)
    return seen


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a child that exited but was not reaped yet is no longer running either
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def models(client) -> dict[str, dict]:
    body = await (await client.get("/v1/models")).json()
    assert body["object"] == "list"
    return {model["id"]: model for model in body["data"]}


async def test_the_model_chooses_the_engine_and_every_record_says_which(make_client, tmp_path):
    client = await make_client(engine=engines(tmp_path))
    listed = await models(client)
    assert list(listed) == ["hibari", "gated", "tts-1", "tts-1-hd", "gpt-4o-mini-tts"]
    assert {name: m["engine"] for name, m in listed.items()} == {
        "hibari": "hibari", "gated": "gated", "tts-1": "hibari", "tts-1-hd": "hibari", "gpt-4o-mini-tts": "hibari",
    }
    assert listed["hibari"]["default"] and not listed["gated"]["default"]
    assert listed["hibari"]["engine_state"]["state"] == "ready"
    assert listed["gated"]["engine_state"]["state"] == "not_started"  # loads on first use

    assert rate_of(await (await speak(client, "Spoken by the double.", "by-gated", model="gated")).read()) == GATED_RATE
    assert rate_of(await (await speak(client, "Spoken by hibari.", "by-openai-name", model="tts-1")).read()) == HIBARI_RATE
    assert rate_of(await (await speak(client, "No model named.", "by-default")).read()) == HIBARI_RATE

    history = {r["request_id"]: r for r in (await (await client.get("/status/history")).json())["request_history"]}
    assert {rid: history[rid]["engine"] for rid in history} == {"by-gated": "gated", "by-openai-name": "hibari", "by-default": "hibari"}
    stats = await assert_statistics_add_up(client)
    assert stats["completed_requests"] == 3
    assert {name: s["completed_requests"] for name, s in stats["engines"].items()} == {"hibari": 2, "gated": 1}
    metrics = await (await client.get("/metrics")).text()
    assert 'chatterbox_requests_total{engine="gated",status="completed"} 1.0' in metrics
    assert 'chatterbox_requests_total{engine="hibari",status="completed"} 2.0' in metrics


async def test_an_unknown_model_is_a_400_that_lists_the_known_ones_and_counts_nothing(make_client, tmp_path):
    client = await make_client(engine=engines(tmp_path))
    response = await speak(client, "Which model?", model="tts-2")
    assert response.status == 400
    error = (await response.json())["error"]
    assert error["param"] == "model" and error["code"] == "model_not_found"
    for name in ("hibari", "gated", "tts-1", "tts-1-hd", "gpt-4o-mini-tts"):
        assert name in error["message"]
    assert (await client.get("/v1/models/tts-2")).status == 404
    assert (await client.post("/v1/models/tts-2/load")).status == 404
    stats = await (await client.get("/status/statistics")).json()
    assert stats["total_requests"] == 0 and stats["engines"]["gated"]["total_requests"] == 0


async def test_model_aliases_map_names_onto_configured_engines(make_client, tmp_path):
    client = await make_client(engine=engines(tmp_path), model_aliases="tts-1-hd=hibari,narrator=hibari")
    listed = await models(client)
    assert listed["narrator"]["engine"] == "hibari" and listed["tts-1-hd"]["engine"] == "hibari"
    response = await speak(client, "Read by the narrator.", model="narrator")
    assert response.status == 200 and rate_of(await response.read()) == HIBARI_RATE


async def test_an_engine_loads_on_first_use_while_its_request_waits_as_initializing(make_client, tmp_path):
    client = await make_client(engine=engines(tmp_path))
    core = core_of(client)
    state = (await models(client))["gated"]["engine_state"]  # configured, never loaded yet
    fields = ("state", "load_progress", "error", "in_use", "idle_since", "unloads_at")
    assert {key: state.get(key, "left out") for key in fields} == dict(zip(fields, ("not_started", 0.0, None, 0, None, None)))
    seen: list = []
    core.bus.add_listener(lambda e: seen.append((e.type, dict(e.data))))
    response = await speak(client, "The first words of the double.", "first-use", model="gated")
    assert response.status == 200

    mine = [data for kind, data in seen if kind == "status" and data["request_id"] == "first-use"]
    waiting = next(d for d in mine if d["status"] == "initializing")
    assert waiting["current_step"] == "Waiting for the model to load"
    gated = [data for kind, data in seen if kind == "engine" and data["name"] == "gated"]
    states = [d["state"] for d in gated if "state" in d]
    assert states == ["loading", "ready"]
    assert any("load_progress" in d and "state" not in d for d in gated)  # load progress reported on the way
    # It loaded while the request waited: between the request's initializing and its first chunk.
    order = [
        (kind, data.get("state") or data.get("status"))
        for kind, data in seen
        if data.get("name") == "gated" or data.get("request_id") == "first-use"
    ]
    assert order.index(("status", "initializing")) < order.index(("engine", "ready")) < order.index(("status", "generating_audio"))
    assert (await models(client))["gated"]["engine_state"]["state"] == "ready"


async def test_keep_alive_zero_unloads_the_engine_after_its_request_and_the_next_one_loads_it_again(make_client, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="chatterbox_status.engine_pool")
    client = await make_client(engine=engines(tmp_path))
    core = core_of(client)
    gated_host = core.engines["gated"].host
    unloaded = engine_event(client, "gated", "unloaded")
    seen: list = []
    core.bus.add_listener(lambda e: seen.append(dict(e.data)) if e.type == "engine" and e.data.get("name") == "gated" else None)
    response = await speak(client, "Spoken once, then let go.", model="gated", keep_alive=0)
    assert response.status == 200
    first_pid = gated_host.pid
    event = await asyncio.wait_for(unloaded, 30)
    assert "keep-alive (0 s)" in event["unload_reason"]
    [idle] = [e for e in seen if e.get("in_use") == 0 and e.get("idle_since") is not None]
    assert idle["keep_alive_seconds"] == 0 and idle["unloads_at"] == idle["idle_since"]  # its keep-alive ends at once, not never
    logged = [r.getMessage() for r in caplog.records if r.name == "chatterbox_status.engine_pool"]
    assert "unloading engine gated: idle for its keep-alive (0 s)" in logged  # the operator's log says so too
    assert not pid_alive(first_pid)  # its process ended: every byte of its memory went back
    state = (await models(client))["gated"]["engine_state"]
    assert state["state"] == "unloaded" and state["idle_since"] is None and state["unloads_at"] is None
    memory = await (await client.get("/memory")).json()
    hibari_alone = core.engines["hibari"].host.memory_pid()
    assert hibari_alone is not None and gated_host.memory_pid() is None
    assert memory["memory_info"]["engine_memory_mb"] > 0  # hibari's process, still loaded

    response = await speak(client, "And spoken again.", model="gated", keep_alive="5m")
    assert response.status == 200 and gated_host.pid != first_pid
    state = (await models(client))["gated"]["engine_state"]
    assert state["state"] == "ready" and state["keep_alive_seconds"] == 300
    assert state["unloads_at"] == round(state["idle_since"] + 300, 3)


async def test_model_keep_alive_unloads_an_idle_engine_when_it_ends(make_client, tmp_path):
    client = await make_client(engine=engines(tmp_path), model_keep_alive="0.2s")
    unloaded = engine_event(client, "hibari", "unloaded")  # the default engine, loaded at start
    event = await asyncio.wait_for(unloaded, 30)
    assert "keep-alive (0.2 s)" in event["unload_reason"]
    health = await (await client.get("/health")).json()
    assert health["status"] == "healthy" and health["model_loaded"] is False
    assert {e["name"]: e["state"] for e in health["engines"]} == {"hibari": "unloaded", "gated": "not_started"}
    response = await speak(client, "It loads again for me.")
    assert response.status == 200 and rate_of(await response.read()) == HIBARI_RATE


async def test_a_negative_keep_alive_keeps_the_engine_for_ever(make_client, tmp_path):
    client = await make_client(engine=engines(tmp_path), model_keep_alive="0")
    unloaded = engine_event(client, "gated", "unloaded")
    assert (await speak(client, "Keep me loaded.", model="gated", keep_alive=-1)).status == 200
    state = (await models(client))["gated"]["engine_state"]
    assert state["state"] == "ready" and state["keep_alive_seconds"] == -1 and state["unloads_at"] is None
    assert not unloaded.done()
    bad = await speak(client, "Keep me how long?", model="gated", keep_alive="a while")
    assert bad.status == 400 and (await bad.json())["error"]["param"] == "keep_alive"


async def test_max_loaded_models_unloads_the_least_recently_used_idle_engine_first(make_client, tmp_path):
    client = await make_client(engine=engines(tmp_path), max_loaded_models=1)
    core = core_of(client)
    hibari_pid = core.engines["hibari"].host.pid
    hibari_out = engine_event(client, "hibari", "unloaded")
    assert (await speak(client, "Room for the double.", model="gated")).status == 200
    assert "making room for gated" in (await asyncio.wait_for(hibari_out, 10))["unload_reason"]
    assert not pid_alive(hibari_pid)
    gated_pid = core.engines["gated"].host.pid
    gated_out = engine_event(client, "gated", "unloaded")
    assert (await speak(client, "And back to hibari.")).status == 200
    assert "making room for hibari" in (await asyncio.wait_for(gated_out, 10))["unload_reason"]
    assert not pid_alive(gated_pid)
    states = {m["id"]: m["engine_state"]["state"] for m in (await models(client)).values()}
    assert (states["hibari"], states["gated"]) == ("ready", "unloaded")


async def test_unload_and_load_on_request_and_no_unload_while_in_use(make_client, tmp_path):
    client = await make_client(engine=engines(tmp_path))
    core = core_of(client)
    hibari_pid = core.engines["hibari"].host.pid
    response = await client.post("/v1/models/tts-1/unload")  # OpenAI's name: its engine, hibari
    assert response.status == 200
    body = await response.json()
    assert body["id"] == "tts-1" and body["engine"] == "hibari" and body["engine_state"]["state"] == "unloaded"
    state = body["engine_state"]
    assert (state["load_progress"], state["in_use"], state["error"]) == (0.0, 0, None)
    assert state["unload_reason"] == "unloaded on request (POST /v1/models/{model}/unload)"
    assert not pid_alive(hibari_pid)
    health = await (await client.get("/health")).json()
    assert health["status"] == "healthy" and health["model_loaded"] is False and health["engine"]["state"] == "unloaded"

    response = await client.post("/v1/models/hibari/load")
    assert response.status == 200 and (await response.json())["engine_state"]["state"] == "ready"
    assert (await (await client.get("/health")).json())["model_loaded"] is True

    holding = asyncio.ensure_future(speak(client, "HOLD this one a while.", "held-one", model="gated"))
    generating = asyncio.get_running_loop().create_future()
    core.bus.add_listener(
        lambda e: generating.done() or (e.data.get("request_id") == "held-one" and e.type == "progress" and generating.set_result(None))
    )
    await asyncio.wait_for(generating, 30)
    busy = await client.post("/v1/models/gated/unload")
    assert busy.status == 409
    error = (await busy.json())["error"]
    assert error["code"] == "model_in_use"
    assert "'gated'" in error["message"] and "in use by 1 request(s)" in error["message"]
    (tmp_path / "gate").touch()
    assert (await holding).status == 200
    assert (await client.post("/v1/models/gated/unload")).status == 200


async def test_unloading_an_engine_that_never_loaded_changes_nothing(make_client, tmp_path):
    client = await make_client(engine=engines(tmp_path))
    seen: list = []
    core_of(client).bus.add_listener(lambda e: seen.append(dict(e.data)) if e.type == "engine" else None)
    response = await client.post("/v1/models/gated/unload")
    assert response.status == 200
    assert (await response.json())["engine_state"]["state"] == "not_started"
    assert seen == []  # no unloading, no unloaded: there was nothing to end
    assert rate_of(await (await speak(client, "Loaded on first use after all.", model="gated")).read()) == GATED_RATE


async def test_a_long_text_job_on_one_engine_yields_to_a_request_for_another_with_room_for_one(make_long, tmp_path):
    """With MAX_LOADED_MODELS=1, a request for hibari arrives while a job speaks on the
    double: the job lets go of its engine while it waits for its turn, so the request may
    unload it and load hibari; then the job loads its engine again and finishes."""
    client = await make_long(engines(tmp_path), settings={"max_loaded_models": 1})
    core = core_of(client)
    seen: list = []
    core.bus.add_listener(lambda e: seen.append((e.type, dict(e.data))))
    text = "HOLD the first part of the story here. The second part of the story follows. And a third part ends it."
    response = await client.post("/audio/speech/long", json={"input": text, "response_format": "wav", "chunk_size": 45, "model": "gated"})
    assert response.status == 200, await response.text()
    job_id = (await response.json())["job_id"]
    generating = asyncio.get_running_loop().create_future()
    core.bus.add_listener(
        lambda e: generating.done() or (e.data.get("request_id") == job_id and e.type == "progress" and generating.set_result(None))
    )
    await asyncio.wait_for(generating, 30)
    interactive = asyncio.ensure_future(speak(client, "Hibari, in between.", "in-between"))
    queued = asyncio.get_running_loop().create_future()
    core.bus.add_listener(lambda e: queued.done() or (e.data.get("request_id") == "in-between" and queued.set_result(None)))
    await asyncio.wait_for(queued, 10)
    (tmp_path / "gate").touch()

    response = await asyncio.wait_for(interactive, 60)
    assert response.status == 200 and rate_of(await response.read()) == HIBARI_RATE
    await asyncio.wait_for(client.server.app[LONG_TEXT].wait(job_id), 60)
    job = await (await client.get(f"/audio/speech/long/{job_id}")).json()
    assert job["status"] == "completed", job
    states = [(data["name"], data["state"]) for kind, data in seen if kind == "engine" and "state" in data]
    expected = [("hibari", "unloaded"), ("gated", "ready"), ("gated", "unloaded"), ("hibari", "ready"), ("hibari", "unloaded"), ("gated", "ready")]
    found = iter(states)
    assert all(step in found for step in expected), states  # in this order, other states between
    records = {r["request_id"]: r for r in (await (await client.get("/status/history")).json())["request_history"]}
    assert records[job_id]["engine"] == "gated" and records["in-between"]["engine"] == "hibari"


class SlowToClose(ThreadHost):
    """An engine whose process takes as long to end as the test says."""

    def __init__(self, engine) -> None:
        super().__init__(engine)
        self.closing = asyncio.Event()
        self.may_close = asyncio.Event()

    async def close(self) -> None:
        self.closing.set()
        await self.may_close.wait()
        await super().close()


async def test_a_request_that_comes_while_its_engine_unloads_waits_then_loads_it_again(make_client, make_scripted):
    host = SlowToClose(make_scripted())
    client = await make_client(engine=host)
    core = core_of(client)
    seen: list = []
    core.bus.add_listener(lambda e: seen.append((e.type, dict(e.data))))
    idle = (await models(client))["scripted"]["engine_state"]
    assert idle["state"] == "ready" and idle["idle_since"] is not None and idle["unloads_at"] is not None
    unloading = asyncio.ensure_future(client.post("/v1/models/scripted/unload"))
    await asyncio.wait_for(host.closing.wait(), 10)
    state = (await models(client))["scripted"]["engine_state"]
    assert (state["state"], state["idle_since"], state["unloads_at"]) == ("unloading", None, None)  # no keep-alive runs now
    waiting = asyncio.get_running_loop().create_future()

    def listen(event) -> None:
        if event.data.get("request_id") == "during-unload" and event.data.get("status") == "initializing" and not waiting.done():
            waiting.set_result(None)

    core.bus.add_listener(listen)
    speech = asyncio.ensure_future(speak(client, "Wait for the unload, then load me again.", "during-unload"))
    await asyncio.wait_for(waiting, 10)
    assert not speech.done()
    host.may_close.set()
    assert (await unloading).status == 200
    response = await asyncio.wait_for(speech, 30)
    assert response.status == 200 and rate_of(await response.read()) == 16_000
    states = [data["state"] for kind, data in seen if kind == "engine" and "state" in data]
    assert states == ["unloading", "unloaded", "loading", "ready"]


async def test_an_engine_says_how_long_its_load_took_and_the_log_says_so_too(make_client, make_scripted, caplog):
    """``load_seconds`` in its state is how long its load took (the load held here for
    0.3 s past its first progress), and the operator's log gives it to a tenth."""
    caplog.set_level(logging.INFO, logger="chatterbox_status.engine_pool")
    first, second = make_scripted(), make_scripted()
    first.name, second.name = "first", "second"
    client = await make_client(engine=[first, second])
    second.load_gate.clear()
    loop = asyncio.get_running_loop()
    reading = loop.create_future()

    def listen(event) -> None:
        if event.type == "engine" and event.data.get("name") == "second" and event.data.get("load_progress") == 33.3 and not reading.done():
            reading.set_result(None)

    core_of(client).bus.add_listener(listen)
    posted = loop.time()
    loading = asyncio.ensure_future(client.post("/v1/models/second/load"))
    await asyncio.wait_for(reading, 10)  # a third of its weights read; the rest waits for the gate
    await asyncio.sleep(0.3)  # the rest of the load: the time it is to report
    second.load_gate.set()
    response = await asyncio.wait_for(loading, 30)
    took = loop.time() - posted
    assert response.status == 200
    state = (await response.json())["engine_state"]
    assert state["state"] == "ready" and 0.3 <= state["load_seconds"] <= took, (state, took)
    logged = [r.getMessage() for r in caplog.records if r.name == "chatterbox_status.engine_pool"]
    [line] = [m for m in logged if m.startswith("engine second loaded in ")]
    assert line.endswith("s") and abs(float(line.removeprefix("engine second loaded in ")[:-1]) - state["load_seconds"]) <= 0.05, line


async def test_an_engine_loaded_again_is_not_warmed_up_again_and_keeps_its_measured_pace(make_client, make_scripted):
    """Its first load warms it up (twice: the second measures its pace); a load after an
    unload skips that, so it is ready sooner, and its state keeps the pace measured first."""
    engine = make_scripted()
    client = await make_client(engine=engine)
    assert engine.calls == [WARM_UP_TEXT, WARM_UP_TEXT]
    measured = (await models(client))["scripted"]["engine_state"]["seconds_per_char"]
    seen: list = []
    core_of(client).bus.add_listener(lambda e: seen.append(dict(e.data)) if e.type == "engine" and "state" in e.data else None)
    assert (await client.post("/v1/models/scripted/unload")).status == 200
    response = await client.post("/v1/models/scripted/load")
    assert response.status == 200
    state = (await response.json())["engine_state"]
    assert state["state"] == "ready" and state["seconds_per_char"] == measured
    assert engine.calls == [WARM_UP_TEXT, WARM_UP_TEXT]  # the second load spoke nothing
    assert [(e["state"], "seconds_per_char" in e) for e in seen] == [("unloading", False), ("unloaded", False), ("loading", False), ("ready", False)]


async def fast_and_slow(make_client, make_scripted):
    """A client on two engines, the default one ten times faster than "slow"; "slow" has
    spoken once, so its pace is measured."""
    fast = make_scripted(work_seconds_per_char=0.0005)
    slow = make_scripted(work_seconds_per_char=0.005)
    slow.name = "slow"
    client = await make_client(engine=[fast, slow])
    assert (await speak(client, "The slow engine loads and measures itself.", model="slow")).status == 200
    return client, fast, slow


async def test_each_engine_is_estimated_at_its_own_measured_pace(make_client, make_scripted):
    """A queued request's estimate uses the pace of the engine its model chose."""
    client, fast, slow = await fast_and_slow(make_client, make_scripted)
    core = core_of(client)
    fast.hold()
    running = asyncio.ensure_future(speak(client, "Held in the default engine.", "held-in-fast"))
    await asyncio.to_thread(fast.wait_started)
    text = "A sentence of a fair length, waiting for its turn in the queue, behind the held one."
    queued = {
        "queued-for-fast": asyncio.ensure_future(speak(client, text, "queued-for-fast")),
        "queued-for-slow": asyncio.ensure_future(speak(client, text, "queued-for-slow", model="slow")),
    }
    for request_id, task in queued.items():
        async with asyncio.timeout(10):
            while (await client.get(f"/status/requests/{request_id}")).status != 200:
                assert not task.done()
                await asyncio.sleep(0)  # until its queued event is folded: the next loop turn
    entries = {e["request_id"]: e for e in (await (await client.get("/status")).json())["queue"]["requests"]}
    pace = core.tracker.throughput
    assert pace["slow"] > 5 * pace["scripted"]
    listed = await models(client)
    for engine, work in (("scripted", 0.0005), ("slow", 0.005)):  # each engine's state shows its warm-up's pace:
        shown = listed[engine]["engine_state"]["seconds_per_char"]  # its work for each character, and a little more
        assert work <= shown < work + 0.02, (engine, shown)
    for request_id, engine in (("queued-for-fast", "scripted"), ("queued-for-slow", "slow")):
        entry = entries[request_id]
        took = entry["estimated_completion"] - entry["estimated_start"]
        assert abs(took - len(text) * pace[engine]) < 0.002, (request_id, took, len(text) * pace[engine])
    fast.release(100)
    assert [r.status for r in await asyncio.gather(running, *queued.values())] == [200, 200, 200]


async def test_a_request_for_an_engine_not_measured_yet_is_estimated_at_the_default_engines_pace(make_client, make_scripted):
    """An engine that has not loaded yet has no measured pace of its own: a request queued
    for it is still given a start and a completion, at the default engine's pace. (And the
    statistics list it, with nothing counted, from the start, then count its own requests.)"""
    fast = make_scripted(work_seconds_per_char=0.0005)
    other = make_scripted(work_seconds_per_char=0.005)
    other.name = "other"
    client = await make_client(engine=[fast, other])
    engines = (await (await client.get("/status/statistics")).json())["engines"]
    assert sorted(engines) == ["other", "scripted"]
    assert engines["other"]["total_requests"] == 0
    pace = core_of(client).tracker.throughput
    assert "other" not in pace and pace["scripted"] > 0  # measured as it loaded at start
    fast.hold()
    running = asyncio.ensure_future(speak(client, "Held in the default engine.", "held-in-default"))
    await asyncio.to_thread(fast.wait_started)
    text = "A sentence for the engine that has not loaded yet, waiting behind the held one."
    queued = asyncio.ensure_future(speak(client, text, "queued-for-other", model="other"))
    async with asyncio.timeout(10):
        while (await client.get("/status/requests/queued-for-other")).status != 200:
            assert not queued.done()
            await asyncio.sleep(0)  # until its queued event is folded: the next loop turn
    [entry] = (await (await client.get("/status")).json())["queue"]["requests"]
    assert entry["request_id"] == "queued-for-other"
    assert entry["estimated_start"] is not None and entry["estimated_completion"] is not None
    took = entry["estimated_completion"] - entry["estimated_start"]
    assert abs(took - len(text) * pace["scripted"]) < 0.002, (took, len(text) * pace["scripted"])
    fast.release(100)
    assert [r.status for r in await asyncio.gather(running, queued)] == [200, 200]
    assert (await speak(client, "Once more for the other engine.", model="other")).status == 200
    engines = (await assert_statistics_add_up(client))["engines"]
    assert {name: (s["total_requests"], s["completed_requests"]) for name, s in engines.items()} == {"scripted": (1, 1), "other": (2, 2)}


async def test_a_running_request_is_estimated_at_the_pace_of_its_own_engine(make_client, make_scripted):
    """A running request's estimated completion, as its chunk starts, is its characters at the
    measured pace of the engine its model chose, not the default engine's (ten times faster here)."""
    client, _, slow = await fast_and_slow(make_client, make_scripted)
    core = core_of(client)
    pace = core.tracker.throughput
    assert pace["slow"] > 5 * pace["scripted"]
    events: list = []
    core.bus.add_listener(lambda e: events.append(e.data) if e.data.get("request_id") == "running-on-slow" else None)
    slow.hold()
    text = "A sentence of a fair length, spoken by the slow engine while the test looks at it."
    running = asyncio.ensure_future(speak(client, text, "running-on-slow", model="slow"))
    await asyncio.to_thread(slow.wait_started)
    [started] = [d for d in events if d.get("status") == "generating_audio" and d["current_step"].startswith("Generating")]
    remaining = started["estimated_completion"] - started["timestamp"]
    assert abs(remaining - len(text) * pace["slow"]) < 0.25 * len(text) * pace["slow"], (remaining, len(text) * pace["slow"])
    slow.release(10)
    assert (await running).status == 200


async def test_a_long_text_job_with_keep_alive_zero_unloads_its_engine_when_it_ends(make_long, tmp_path):
    client = await make_long(engines(tmp_path))
    unloaded = engine_event(client, "gated", "unloaded")
    body = {"input": "A first part of the story. And a second part of it.", "response_format": "wav", "model": "gated", "keep_alive": 0}
    response = await client.post("/audio/speech/long", json=body)
    assert response.status == 200, await response.text()
    job_id = (await response.json())["job_id"]
    await asyncio.wait_for(client.server.app[LONG_TEXT].wait(job_id), 60)
    assert (await (await client.get(f"/audio/speech/long/{job_id}")).json())["status"] == "completed"
    assert "keep-alive (0 s)" in (await asyncio.wait_for(unloaded, 30))["unload_reason"]

async def test_a_long_text_job_cancelled_while_its_engine_loads_again_for_its_turn_ends_at_once(make_long):
    """MAX_LOADED_MODELS=1: a request for the default engine unloads the job's engine while
    the job waits for its turn; when the turn comes the job's engine loads again (held here).
    Cancelling the job then ends it at once, not once its engine has loaded."""
    default, other = ScriptedEngine(), ScriptedEngine()
    other.name = "other"
    client = await make_long([default, other], settings={"max_loaded_models": 1, "max_chunk_length": 45})
    try:
        loading = asyncio.Queue()
        core_of(client).bus.add_listener(
            lambda e: loading.put_nowait(None) if e.type == "engine" and e.data.get("name") == "other" and e.data.get("state") == "loading" else None
        )
        default.hold()
        other.hold()
        other.release(2)  # its two warm-up chunks, when it loads the first time
        text = "The first part of the story is here. The second part of the story follows."
        response = await client.post("/audio/speech/long", json={"input": text, "response_format": "wav", "chunk_size": 45, "model": "other"})
        assert response.status == 200, await response.text()
        job_id = (await response.json())["job_id"]
        await asyncio.wait_for(loading.get(), 10)
        started = [await asyncio.to_thread(other.wait_started) for _ in range(3)]
        assert started[2] == "The first part of the story is here."
        speech = asyncio.ensure_future(speak(client, "The default engine, in between.", "in-between"))
        other.load_gate.clear()  # the next load of the job's engine waits
        other.release(1)  # the job's chunk 1 ends: it waits for its turn and lets its engine go
        assert await asyncio.to_thread(default.wait_started) == "The default engine, in between."
        default.release(10)
        assert (await asyncio.wait_for(speech, 30)).status == 200
        await asyncio.wait_for(loading.get(), 10)  # the job's turn: its engine loads again

        cancel = await asyncio.wait_for(client.delete(f"/audio/speech/long/{job_id}"), 10)
        assert cancel.status == 200
        job = await (await client.get(f"/audio/speech/long/{job_id}")).json()
        assert job["status"] == "cancelled" and job["progress"]["completed_chunks"] == 1
        assert other.calls[2:] == ["The first part of the story is here."]  # chunk 2 never ran
    finally:
        for engine in (default, other):
            engine.load_gate.set()
            engine.release(10_000)


async def test_an_engine_that_died_and_failed_to_load_again_keeps_its_error_past_its_keep_alive(make_client, make_scripted, caplog):
    """An idle engine's process dies and the new one fails to load: health shows the load
    error, and still does once the keep-alive that was running has passed (there is
    nothing loaded to unload); the operator's log says why it failed."""
    caplog.set_level(logging.INFO, logger="chatterbox_status.engine_pool")
    engine = make_scripted()
    host = ThreadHost(engine)
    client = await make_client(engine=host, model_keep_alive="0.3s")
    loop = asyncio.get_running_loop()
    keep_alive_passed = loop.create_future()
    loop.call_later(0.3, keep_alive_passed.set_result, None)  # runs after the engine's own 0.3 s timer, set earlier
    seen: list = []
    core_of(client).bus.add_listener(lambda e: seen.append(e.data.get("state")) if e.type == "engine" else None)
    failed = engine_event(client, "scripted", "error")
    engine.load_error = "no device left to load on"
    host.die("engine process killed by SIGKILL")
    assert "no device left to load on" in (await asyncio.wait_for(failed, 10))["error"]
    await keep_alive_passed
    health = await (await client.get("/health")).json()
    assert health["engine"]["state"] == "error" and "no device left to load on" in health["initialization_error"]
    assert [state for state in seen if state] == ["restarting", "loading", "error"]
    logged = [r.getMessage() for r in caplog.records if r.name == "chatterbox_status.engine_pool"]
    assert "engine scripted failed to load: no device left to load on" in logged


async def test_an_engine_process_that_fails_to_load_is_not_restarted_but_tried_again_when_asked(make_client):
    """The engine's process reports that its model failed to load, then exits: that is no
    death to restart from. The engine shows its load error until it is asked to load again."""
    broken = in_process_of_its_own(ScriptedEngine, load_error="no weights here")
    client = await make_client(engine=[engine_process("hibari", Settings(engine_threads=1)), broken])
    seen: list = []
    core_of(client).bus.add_listener(
        lambda e: seen.append(e.data["state"]) if e.type == "engine" and e.data.get("name") == "scripted" and "state" in e.data else None
    )
    response = await client.post("/v1/models/scripted/load")
    assert response.status == 503 and "no weights here" in (await response.json())["error"]["message"]
    await asyncio.wait_for(broken.ended(), 10)  # its process has exited, and the server knows it
    state = (await models(client))["scripted"]["engine_state"]
    assert state["state"] == "error" and "no weights here" in state["error"], state
    assert seen == ["loading", "error"]
    assert (await client.post("/v1/models/scripted/load")).status == 503  # asked again: tried again
    assert seen == ["loading", "error", "loading", "error"]


async def test_unloading_an_engine_that_keeps_dying_ends_its_restarts_and_clears_its_error(make_client):
    host = in_process_of_its_own(GatedEngine, die_on_load=True)
    client = await make_client(engine=host, wait_loaded=False)
    seen: asyncio.Queue = asyncio.Queue()
    core_of(client).bus.add_listener(lambda e: seen.put_nowait(dict(e.data)) if e.type == "engine" and "state" in e.data else None)
    while not (event := await asyncio.wait_for(seen.get(), 30))["state"] == "restarting" or not event["error"].endswith("in 1 s"):
        pass  # the second restart waits 1 s: the unload comes within it, while the error shows
    assert (await models(client))["scripted"]["engine_state"]["error"] == event["error"]
    response = await client.post("/v1/models/scripted/unload")
    assert response.status == 200
    state = (await response.json())["engine_state"]
    assert (state["state"], state["error"], state["load_progress"]) == ("unloaded", None, 0.0)
    assert [(await seen.get())["state"] for _ in range(seen.qsize())] == ["unloading", "unloaded"]  # no load in between
    assert host.memory_pid() is None  # no engine process left, and none started again


async def test_max_loaded_models_unloads_the_engine_used_longest_ago_of_several_idle_ones(make_client, make_scripted):
    """Three engines, room for two: first and second are loaded, first was used last; the
    third makes room by unloading second, the one whose last use is older."""
    first, second, third = make_scripted(), make_scripted(), make_scripted()
    first.name, second.name, third.name = "first", "second", "third"
    client = await make_client(engine=[first, second, third], max_loaded_models=2)
    for model in ("second", "first"):
        assert (await speak(client, f"Spoken by {model}.", model=model)).status == 200
    out = engine_event(client, "second", "unloaded")
    assert (await speak(client, "Spoken by the third.", model="third")).status == 200
    assert "making room for third" in (await asyncio.wait_for(out, 10))["unload_reason"]
    states = {name: m["engine_state"]["state"] for name, m in (await models(client)).items() if name in ("first", "second", "third")}
    assert states == {"first": "ready", "second": "unloaded", "third": "ready"}


async def test_max_loaded_models_unloads_an_engine_loaded_at_start_and_never_used_before_one_used(make_client, make_scripted):
    """Three engines, room for two: the default one is loaded at start and never used, the
    second is used; the third makes room by unloading the default one, never used counting
    as used longest ago."""
    first, second, third = make_scripted(), make_scripted(), make_scripted()
    first.name, second.name, third.name = "first", "second", "third"
    client = await make_client(engine=[first, second, third], max_loaded_models=2)
    assert (await speak(client, "Spoken by the second.", model="second")).status == 200
    out = engine_event(client, "first", "unloaded")
    assert (await speak(client, "Spoken by the third.", model="third")).status == 200
    assert "making room for third" in (await asyncio.wait_for(out, 10))["unload_reason"]
    states = {name: m["engine_state"]["state"] for name, m in (await models(client)).items() if name in ("first", "second", "third")}
    assert states == {"first": "unloaded", "second": "ready", "third": "ready"}


async def test_a_job_cancelled_while_it_waits_for_room_leaves_the_pool_working(make_long):
    """MAX_LOADED_MODELS=1 and two long-text jobs: the second job's engine cannot load while
    the first job speaks on the other one, so it waits for room. Cancelled there, it ends;
    the first job finishes, and later requests load and use engines as ever."""
    first, second = ScriptedEngine(), ScriptedEngine()
    first.name, second.name = "first", "second"
    client = await make_long([first, second], settings={"max_loaded_models": 1}, max_concurrent_jobs=2)
    try:
        core = core_of(client)
        waiting = asyncio.Queue()
        core.bus.add_listener(
            lambda e: waiting.put_nowait(e.data["request_id"]) if e.type == "status" and e.data["status"] == "initializing" else None
        )
        first.hold()

        async def submit(text: str, model: str) -> str:
            response = await client.post("/audio/speech/long", json={"input": text, "response_format": "wav", "chunk_size": 45, "model": model})
            assert response.status == 200, await response.text()
            return (await response.json())["job_id"]

        speaking = await submit("The first job speaks on its own engine.", "first")
        assert await asyncio.to_thread(first.wait_started) == "The first job speaks on its own engine."
        waiting_for_room = await submit("The second job needs the other engine.", "second")
        while await asyncio.wait_for(waiting.get(), 10) != waiting_for_room:
            pass
        cancel = await asyncio.wait_for(client.delete(f"/audio/speech/long/{waiting_for_room}"), 10)
        assert cancel.status == 200
        assert (await (await client.get(f"/audio/speech/long/{waiting_for_room}")).json())["status"] == "cancelled"
        first.release(10)
        await asyncio.wait_for(client.server.app[LONG_TEXT].wait(speaking), 30)
        assert (await (await client.get(f"/audio/speech/long/{speaking}")).json())["status"] == "completed"
        for model in ("first", "second", "first"):
            response = await asyncio.wait_for(speak(client, f"Then {model} again.", model=model), 30)
            assert response.status == 200
        assert second.calls[2:] == ["Then second again."]  # the cancelled job never spoke
    finally:
        for engine in (first, second):
            engine.release(10_000)


async def test_loading_an_engine_a_request_uses_does_not_let_it_be_unloaded_under_the_request(make_client, scripted):
    """POST /v1/models/{model}/load holds the engine for a moment too: once it lets go, the
    request that still speaks keeps the engine in use, so an unload is refused."""
    client = await make_client(engine=scripted)
    scripted.hold()
    speech = asyncio.ensure_future(speak(client, "Held while the model is loaded again.", "held-in-use-01"))
    assert await asyncio.to_thread(scripted.wait_started) == "Held while the model is loaded again."
    loaded = await client.post("/v1/models/scripted/load")
    assert loaded.status == 200 and (await loaded.json())["engine_state"]["in_use"] == 1
    busy = await client.post("/v1/models/scripted/unload")
    assert busy.status == 409 and (await busy.json())["error"]["code"] == "model_in_use"
    scripted.release()
    response = await asyncio.wait_for(speech, 30)
    assert response.status == 200 and rate_of(await response.read()) == 16_000
    state = (await models(client))["scripted"]["engine_state"]
    assert (state["state"], state["in_use"]) == ("ready", 0)
