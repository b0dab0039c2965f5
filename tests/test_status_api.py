"""The status API contract (spec/000_44a88d72cb54e240.txt): endpoints, aliases, fields, types.

Requests are held mid-generation with the ScriptedEngine (hold/release/wait_started) and
waited for through the bus, never with sleeps; the real hibari engine serves /info.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from conftest import assert_error_shape, core_of, decode_wav
from doubles import ScriptedEngine

from chatterbox_status.exceptions import EngineUnavailable

# Two sentences that split into two chunks with max_chunk_length=60.
HELD_TEXT = "The first sentence is held here. The second sentence follows it."
HELD_CHUNKS = ["The first sentence is held here.", "The second sentence follows it."]
# Long enough that a queued request's estimated duration shows after rounding to ms.
LONG_TEXT = " ".join(f"word{i}" for i in range(450))


# -- helpers -----------------------------------------------------------------------


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def shape(value):
    """The JSON shape of a body: keys and value kinds, numbers treated alike."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(item) for item in value]
    if is_number(value):
        return "number"
    return type(value).__name__


async def get_json(client, path: str, status: int = 200) -> dict:
    response = await client.get(path)
    assert response.status == status, (path, response.status, await response.text())
    assert response.content_type == "application/json"
    return await response.json()


async def post_speech(client, text: str, request_id: str | None = None, **fields):
    """POST a speech request and read the whole response (usable in a task)."""
    headers = {"X-Request-ID": request_id} if request_id else {}
    response = await client.post("/v1/audio/speech", json={"input": text, **fields}, headers=headers)
    await response.read()
    return response


async def speak(client, text: str, request_id: str | None = None, **fields) -> str:
    """A request that must succeed; returns its id."""
    response = await post_speech(client, text, request_id, **fields)
    assert response.status == 200, await response.text()
    return response.headers["X-Request-ID"]


async def until_status(client, request_id: str, status: str, timeout: float = 10.0) -> None:
    """Wait, through the bus, until the request has reached ``status``."""
    core = core_of(client)
    record = core.tracker.find(request_id)
    if record is not None and record.status == status:
        return
    reached = asyncio.Event()

    def listener(event) -> None:
        if event.data.get("request_id") == request_id and event.data.get("status") == status:
            reached.set()

    core.bus.add_listener(listener)
    await asyncio.wait_for(reached.wait(), timeout)


@pytest.fixture
def engine(scripted):
    """The scripted engine, never left holding a thread when the test ends."""
    yield scripted
    scripted.load_gate.set()
    scripted.release(10_000)


async def held_request(client, engine, request_id: str = "running-0001", text: str = HELD_TEXT, **fields):
    """Start a request and return its task once its first chunk is inside the engine."""
    engine.hold()
    task = asyncio.create_task(post_speech(client, text, request_id, **fields))
    started = await asyncio.to_thread(engine.wait_started)
    assert started in text
    return task


async def queued_request(client, request_id: str, text: str = LONG_TEXT):
    task = asyncio.create_task(post_speech(client, text, request_id))
    await until_status(client, request_id, "queued")
    return task


# -- every endpoint and alias ------------------------------------------------------


def check_status_fields(body: dict) -> None:
    assert body["status"] == "idle"
    assert body["is_processing"] is False
    assert isinstance(body["total_requests"], int) and body["total_requests"] == 1


def check_progress_fields(body: dict) -> None:
    assert body == {"is_processing": False, "status": "idle", "message": "No active TTS requests"}


def check_history_fields(body: dict) -> None:
    assert isinstance(body["request_history"], list) and len(body["request_history"]) == 1
    assert body["request_history"][0]["request_id"] == "alias-done-01"
    assert body["request_history"][0]["status"] == "completed"
    assert body["total_records"] == 1
    assert body["limit"] == 10


def check_statistics_fields(body: dict) -> None:
    for name in ("total_requests", "completed_requests", "error_requests"):
        assert isinstance(body[name], int), name
    for name in ("success_rate", "average_duration_seconds", "average_text_length"):
        assert is_number(body[name]), name
    assert isinstance(body["is_processing"], bool)
    assert (body["total_requests"], body["completed_requests"], body["error_requests"]) == (1, 1, 0)
    assert body["success_rate"] == 100.0


def check_info_fields(body: dict) -> None:
    assert body["api_name"] == "Chatterbox TTS API"
    assert isinstance(body["version"], str) and body["version"]
    assert body["status"] == "operational"
    for name in ("tts_status", "statistics", "memory_info", "uptime_info"):
        assert isinstance(body[name], dict), name
    assert isinstance(body["recent_requests"], list)
    assert body["recent_requests"][0]["request_id"] == "alias-done-01"


ALIASES = {
    "/status": (("/status", "/v1/status", "/processing", "/processing/status"), check_status_fields),
    "/status/progress": (("/status/progress", "/v1/status/progress", "/progress"), check_progress_fields),
    "/status/history": (("/status/history", "/v1/status/history", "/history"), check_history_fields),
    "/status/statistics": (("/status/statistics", "/v1/status/statistics", "/stats"), check_statistics_fields),
    "/info": (("/info", "/v1/info", "/api/info"), check_info_fields),
}


@pytest.mark.parametrize(
    "primary, path", [(primary, path) for primary, (paths, _) in ALIASES.items() for path in paths]
)
async def test_every_endpoint_and_alias_answers_the_documented_fields(make_client, engine, primary, path):
    client = await make_client(engine=engine)
    await speak(client, "One finished request.", "alias-done-01")
    body = await get_json(client, path)
    ALIASES[primary][1](body)
    if path != primary:
        assert shape(body) == shape(await get_json(client, primary))


# -- /status -----------------------------------------------------------------------


async def test_status_is_idle_when_nothing_runs(make_client, engine):
    client = await make_client(engine=engine)
    body = await get_json(client, "/status")
    assert body["status"] == "idle"
    assert body["is_processing"] is False
    assert body["total_requests"] == 0


async def test_status_reports_the_request_being_generated_and_its_progress(make_client, engine):
    client = await make_client(engine=engine, max_chunk_length=60)
    before = time.time()
    task = await held_request(client, engine, exaggeration=0.7, cfg_weight=0.3, temperature=0.9)

    body = await get_json(client, "/status")
    assert body["status"] == "generating_audio"
    assert body["is_processing"] is True
    assert body["request_id"] == "running-0001"
    assert is_number(body["start_time"]) and before <= body["start_time"] <= time.time()
    assert is_number(body["duration_seconds"]) and body["duration_seconds"] >= 0
    assert body["text_length"] == len(HELD_TEXT)
    assert body["text_preview"] == HELD_TEXT
    assert body["voice_source"] == "default"
    parameters = body["parameters"]
    assert (parameters["exaggeration"], parameters["cfg_weight"], parameters["temperature"]) == (0.7, 0.3, 0.9)
    progress = body["progress"]
    assert progress["current_chunk"] == 1
    assert progress["total_chunks"] == 2
    assert progress["current_step"] == "Generating audio for chunk 1/2"
    assert is_number(progress["progress_percentage"]) and 0 <= progress["progress_percentage"] < 50
    # estimates are rounded to the millisecond
    assert is_number(progress["estimated_completion"]) and progress["estimated_completion"] >= body["start_time"] - 0.001
    assert body["total_requests"] == 1
    first_percentage = progress["progress_percentage"]

    engine.release()
    assert await asyncio.to_thread(engine.wait_started) == HELD_CHUNKS[1]
    body = await get_json(client, "/status")
    assert body["request_id"] == "running-0001"
    assert body["progress"]["current_chunk"] == 2
    assert body["progress"]["current_step"] == "Generating audio for chunk 2/2"
    assert first_percentage < body["progress"]["progress_percentage"] < 100

    engine.release()
    assert (await task).status == 200
    body = await get_json(client, "/status")
    assert (body["status"], body["is_processing"], body["total_requests"]) == ("idle", False, 1)


async def test_status_lists_a_queued_request_with_its_position_and_estimates(make_client, engine):
    client = await make_client(engine=engine)
    running = await held_request(client, engine)
    queued = await queued_request(client, "queued-0001")

    body = await get_json(client, "/status")
    assert body["request_id"] == "running-0001"
    assert body["status"] == "generating_audio"
    assert body["total_requests"] == 2
    entries = body["queue"]["requests"]
    assert [entry["request_id"] for entry in entries] == ["queued-0001"]
    entry = entries[0]
    assert entry["position"] == 1
    assert is_number(entry["estimated_start"]) and is_number(entry["estimated_completion"])
    assert entry["estimated_completion"] > entry["estimated_start"]
    assert entry["estimated_start"] >= body["start_time"]

    engine.release(10_000)
    assert (await running).status == 200
    assert (await queued).status == 200
    assert (await get_json(client, "/status"))["queue"]["requests"] == []


async def test_status_sections_appear_only_when_asked_for(make_client, engine):
    client = await make_client(engine=engine)
    request_id = await speak(client, "Something to remember.")
    sections = {"include_memory": "memory_info", "include_history": "request_history", "include_stats": "statistics"}

    plain = await get_json(client, "/status")
    assert not set(sections.values()) & set(plain)
    for flag, section in sections.items():
        body = await get_json(client, f"/status?{flag}=true")
        assert section in body, flag
        assert not (set(sections.values()) - {section}) & set(body), flag
        off = await get_json(client, f"/status?{flag}=false")
        assert section not in off, flag

    memory = (await get_json(client, "/status?include_memory=true"))["memory_info"]
    assert is_number(memory["cpu_memory_mb"]) and memory["cpu_memory_mb"] > 0
    history = (await get_json(client, "/status?include_history=true"))["request_history"]
    assert isinstance(history, list) and [r["request_id"] for r in history] == [request_id]
    statistics = (await get_json(client, "/status?include_stats=true"))["statistics"]
    assert isinstance(statistics, dict)
    assert (statistics["total_requests"], statistics["completed_requests"]) == (1, 1)

    everything = await get_json(client, "/status?include_memory=true&include_history=true&include_stats=true")
    assert set(sections.values()) <= set(everything)


async def test_status_history_limit_bounds_the_history(make_client, engine):
    client = await make_client(engine=engine)
    ids = [await speak(client, f"Request number {n}.") for n in range(3)]
    body = await get_json(client, "/status?include_history=true&history_limit=2")
    assert [r["request_id"] for r in body["request_history"]] == ids[::-1][:2]
    body = await get_json(client, "/status?include_history=true&history_limit=20")
    assert [r["request_id"] for r in body["request_history"]] == ids[::-1]


# -- /status/progress ------------------------------------------------------------------


async def test_progress_idle_body_is_exactly_the_documented_one(make_client, engine):
    client = await make_client(engine=engine)
    expected = {"is_processing": False, "status": "idle", "message": "No active TTS requests"}
    assert await get_json(client, "/status/progress") == expected
    await speak(client, "Come and go.")
    assert await get_json(client, "/status/progress") == expected


async def test_progress_while_processing_has_the_documented_fields(make_client, engine):
    client = await make_client(engine=engine, max_chunk_length=60)
    task = await held_request(client, engine)
    body = await get_json(client, "/status/progress")
    assert body["is_processing"] is True
    assert body["status"] == "generating_audio"
    assert body["current_step"] == "Generating audio for chunk 1/2"
    assert body["current_chunk"] == 1 and body["total_chunks"] == 2
    assert isinstance(body["current_chunk"], int) and isinstance(body["total_chunks"], int)
    assert is_number(body["progress_percentage"]) and 0 <= body["progress_percentage"] < 100
    assert is_number(body["duration_seconds"]) and body["duration_seconds"] >= 0
    assert is_number(body["estimated_completion"]) and body["estimated_completion"] > time.time() - 60
    assert body["text_preview"] == HELD_TEXT
    engine.release(2)
    assert (await task).status == 200


# -- /status/statistics ----------------------------------------------------------------


async def test_statistics_count_completed_and_failed_requests(make_client):
    engine = ScriptedEngine(fail_on="explode")
    client = await make_client(engine=engine)
    texts = ["A short one.", "A somewhat longer sentence to speak."]
    for text in texts:
        await speak(client, text)
    failed = await post_speech(client, "This one will explode.")
    assert failed.status == 500
    assert_error_shape(await failed.json())

    body = await get_json(client, "/status/statistics")
    for name in ("total_requests", "completed_requests", "error_requests"):
        assert isinstance(body[name], int) and not isinstance(body[name], bool), name
    for name in ("success_rate", "average_duration_seconds", "average_text_length"):
        assert is_number(body[name]), name
    assert body["total_requests"] == 3
    assert body["completed_requests"] == 2
    assert body["error_requests"] == 1
    assert body["success_rate"] == round(100 * 2 / 3, 1)
    assert body["average_text_length"] == sum(map(len, texts)) / 2
    assert is_number(body["average_duration_seconds"]) and body["average_duration_seconds"] > 0
    assert body["is_processing"] is False
    assert "current_memory" not in body

    with_memory = await get_json(client, "/status/statistics?include_memory=true")
    memory = with_memory["current_memory"]
    assert is_number(memory["cpu_memory_mb"]) and memory["cpu_memory_mb"] > 0
    assert is_number(memory["gpu_memory_allocated_mb"]) and memory["gpu_memory_allocated_mb"] >= 0


async def test_statistics_memory_says_disabled_when_monitoring_is_off(make_client, engine):
    client = await make_client(engine=engine, enable_memory_monitoring=False)
    memory = (await get_json(client, "/status/statistics?include_memory=true"))["current_memory"]
    assert memory["enabled"] is False
    assert isinstance(memory["note"], str) and memory["note"]
    assert "cpu_memory_mb" not in memory and "gpu_memory_allocated_mb" not in memory


# -- /status/history -------------------------------------------------------------------


async def test_history_is_newest_first_bounded_by_limit_with_the_documented_records(make_client, engine):
    client = await make_client(engine=engine)
    texts = [f"History entry number {n} says hello." for n in range(12)]
    ids = [await speak(client, text, exaggeration=0.6, temperature=1.1) for text in texts]
    newest_first = ids[::-1]

    default = await get_json(client, "/status/history")
    assert [r["request_id"] for r in default["request_history"]] == newest_first[:10]
    assert default["limit"] == 10 and default["total_records"] == 10

    three = await get_json(client, "/status/history?limit=3")
    assert [r["request_id"] for r in three["request_history"]] == newest_first[:3]
    assert three["limit"] == 3 and three["total_records"] == 3

    everything = await get_json(client, "/status/history?limit=50")
    assert [r["request_id"] for r in everything["request_history"]] == newest_first

    record = everything["request_history"][0]
    assert record["status"] == "completed"
    assert is_number(record["start_time"]) and is_number(record["end_time"])
    assert record["end_time"] >= record["start_time"]
    assert record["duration_seconds"] == pytest.approx(record["end_time"] - record["start_time"], abs=0.002)
    assert record["text_length"] == len(texts[-1])
    assert record["text_preview"] == texts[-1]
    assert record["voice_source"] == "default"
    parameters = record["parameters"]
    assert (parameters["exaggeration"], parameters["cfg_weight"], parameters["temperature"]) == (
        0.6,
        core_of(client).settings.cfg_weight,
        1.1,
    )
    ends = [r["end_time"] for r in everything["request_history"]]
    assert ends == sorted(ends, reverse=True)


async def test_clearing_history_needs_confirmation_and_keeps_lifetime_statistics(make_client, engine):
    client = await make_client(engine=engine)
    ids = [await speak(client, f"Keep me {n}.") for n in range(2)]
    stats_before = await get_json(client, "/status/statistics")

    for query in ("", "?confirm=false"):
        response = await client.post(f"/status/history/clear{query}")
        assert response.status == 400
        assert_error_shape(await response.json(), param="confirm")
    history = await get_json(client, "/status/history")
    assert [r["request_id"] for r in history["request_history"]] == ids[::-1]

    response = await client.post("/status/history/clear?confirm=true")
    assert response.status == 200
    assert (await get_json(client, "/status/history"))["request_history"] == []
    assert (await get_json(client, "/status?include_history=true"))["request_history"] == []
    stats_after = await get_json(client, "/status/statistics")
    assert stats_after == stats_before
    assert stats_after["total_requests"] == stats_after["completed_requests"] == 2


# -- /info (on the real embedded voice) ------------------------------------------------


async def test_info_on_hibari_shows_the_last_three_requests_and_uptime(make_client):
    client = await make_client()
    ids = [await speak(client, f"Hello number {n}.") for n in range(4)]

    body = await get_json(client, "/info")
    assert body["api_name"] == "Chatterbox TTS API"
    assert isinstance(body["version"], str) and body["version"]
    assert isinstance(body["api_version"], str) and body["api_version"]
    assert body["status"] == "operational"
    assert body["tts_status"]["status"] == "idle" and body["tts_status"]["is_processing"] is False
    assert body["statistics"]["total_requests"] == 4
    assert body["statistics"]["completed_requests"] == 4
    assert is_number(body["memory_info"]["cpu_memory_mb"])
    assert [r["request_id"] for r in body["recent_requests"]] == ids[::-1][:3]
    assert all(r["status"] == "completed" for r in body["recent_requests"])
    assert body["uptime_info"]["total_requests"] == 4
    assert body["uptime_info"]["success_rate"] == 100.0
    assert body["uptime_info"]["is_processing"] is False
    assert body["engine"]["name"] == "hibari"
    assert isinstance(body["engine"]["reason"], str) and body["engine"]["reason"]


# -- one request by id -----------------------------------------------------------------


async def test_request_by_id_while_queued_running_and_finished(make_client, engine):
    client = await make_client(engine=engine)
    running = await held_request(client, engine)
    queued = await queued_request(client, "queued-0001")

    body = await get_json(client, "/status/requests/queued-0001")
    assert body["request_id"] == "queued-0001"
    assert body["status"] == "queued"
    assert body["queue_position"] == 1
    assert is_number(body["estimated_start"])
    assert body["text_length"] == len(LONG_TEXT)

    body = await get_json(client, "/status/requests/running-0001")
    assert body["status"] == "generating_audio"
    assert body["queue_position"] is None
    assert body["end_time"] is None

    engine.release(10_000)
    assert (await running).status == 200
    assert (await queued).status == 200
    body = await get_json(client, "/status/requests/running-0001")
    assert body["status"] == "completed"
    assert is_number(body["end_time"]) and body["end_time"] >= body["start_time"]
    assert body["progress"]["progress_percentage"] == 100.0
    history_ids = [r["request_id"] for r in (await get_json(client, "/status/history"))["request_history"]]
    assert history_ids == ["queued-0001", "running-0001"]

    missing = await get_json(client, "/status/requests/no-such-request", status=404)
    assert_error_shape(missing, param="request_id")


async def test_cancelled_queued_request_ends_cancelled_and_is_counted(make_client, engine):
    client = await make_client(engine=engine)
    running = await held_request(client, engine)
    queued = await queued_request(client, "cancel-me-01", text="Never to be spoken aloud.")

    response = await client.delete("/v1/audio/speech/cancel-me-01")
    assert response.status == 200
    assert (await response.json())["status"] == "cancelled"
    cancelled_response = await queued
    assert cancelled_response.status == 409
    assert_error_shape(await cancelled_response.json())

    engine.release(10_000)
    assert (await running).status == 200
    history = (await get_json(client, "/status/history"))["request_history"]
    assert [(r["request_id"], r["status"]) for r in history] == [
        ("running-0001", "completed"),
        ("cancel-me-01", "cancelled"),
    ]
    stats = await get_json(client, "/status/statistics")
    assert stats["cancelled_requests"] == 1
    assert (stats["total_requests"], stats["completed_requests"], stats["error_requests"]) == (2, 1, 0)
    assert "Never to be spoken aloud." not in engine.calls


async def test_cancelled_running_request_stops_and_ends_cancelled(make_client, engine):
    client = await make_client(engine=engine, max_chunk_length=60)
    running = await held_request(client, engine)

    response = await client.delete("/v1/audio/speech/running-0001")
    assert response.status == 200
    assert (await response.json())["cancelled"] is True
    cancelled_response = await running
    assert cancelled_response.status == 409
    assert_error_shape(await cancelled_response.json())
    assert HELD_CHUNKS[1] not in engine.calls  # the second chunk was never generated

    history = (await get_json(client, "/status/history"))["request_history"]
    assert [(r["request_id"], r["status"]) for r in history] == [("running-0001", "cancelled")]
    assert (await get_json(client, "/status/progress"))["is_processing"] is False
    stats = await get_json(client, "/status/statistics")
    assert (stats["cancelled_requests"], stats["completed_requests"], stats["error_requests"]) == (1, 0, 0)

    again = await client.delete("/v1/audio/speech/running-0001")
    assert again.status == 409
    assert_error_shape(await again.json())
    unknown = await client.delete("/v1/audio/speech/never-existed")
    assert unknown.status == 404
    assert_error_shape(await unknown.json(), param="request_id")


# -- /health, /ping, /v1/models, /config ---------------------------------------------


@pytest.mark.parametrize("path", ["/health", "/v1/health"])
async def test_health_when_ready(make_client, engine, path):
    client = await make_client(engine=engine)
    body = await get_json(client, path)
    assert body["status"] == "healthy"
    assert body["model_loaded"] is True
    assert body["device"] == engine.device
    assert body["engine"]["name"] == "scripted"
    assert isinstance(body["engine"]["reason"], str) and body["engine"]["reason"]
    assert body["engine"]["load_progress"] == 100.0


async def test_health_while_loading_and_a_request_waits_for_the_model(make_client, engine):
    engine.load_gate.clear()
    client = await make_client(engine=engine, wait_loaded=False)
    body = await get_json(client, "/health")
    assert body["status"] == "initializing"
    assert body["model_loaded"] is False
    deadline = time.monotonic() + 10
    while not (is_number(body["engine"]["load_progress"]) and body["engine"]["load_progress"] > 0):
        assert time.monotonic() < deadline, f"the load's progress never showed: {body['engine']}"
        await asyncio.sleep(0.02)  # poll interval; the deadline decides
        body = await get_json(client, "/health")
    assert body["engine"]["load_progress"] == 33.3  # the engine's third, as a percentage to one decimal

    task = asyncio.create_task(post_speech(client, "Waiting for the model.", "early-bird-01"))
    await until_status(client, "early-bird-01", "initializing")
    progress = await get_json(client, "/status/progress")
    assert progress["is_processing"] is True
    assert progress["status"] == "initializing"
    assert (await get_json(client, "/health"))["model_loaded"] is False

    engine.load_gate.set()
    response = await asyncio.wait_for(task, 10)
    assert response.status == 200
    rate, channels, frames = decode_wav(await response.read())
    assert (rate, channels) == (engine.sample_rate, 1) and frames > 0
    body = await get_json(client, "/health")
    assert (body["status"], body["model_loaded"]) == ("healthy", True)


async def test_speech_is_503_and_health_says_error_when_the_engine_failed_to_load(make_client):
    engine = ScriptedEngine(load_error="boom")
    engine.load_gate.clear()
    client = await make_client(engine=engine, wait_loaded=False)
    early = asyncio.create_task(post_speech(client, "Waiting in vain.", "early-bird-01"))
    await until_status(client, "early-bird-01", "initializing")
    engine.load_gate.set()
    with pytest.raises(EngineUnavailable):
        await asyncio.wait_for(core_of(client).worker.wait_loaded(), 10)

    early_response = await early
    assert early_response.status == 503
    assert_error_shape(await early_response.json())
    record = await get_json(client, "/status/requests/early-bird-01")
    assert record["status"] == "error" and "boom" in record["error_message"]
    assert (await get_json(client, "/info"))["status"] == "error"
    body = await get_json(client, "/health")
    assert body["status"] == "error"
    assert body["model_loaded"] is False
    assert "boom" in body["initialization_error"]

    response = await post_speech(client, "Anyone there?")
    assert response.status == 503
    error = await response.json()
    assert_error_shape(error)
    assert "boom" in error["error"]["message"]
    # Refused at the door: only the request that was already waiting is counted.
    assert (await get_json(client, "/status/statistics"))["total_requests"] == 1


async def test_ping_models_and_config(make_client, engine):
    client = await make_client(engine=engine, exaggeration=0.9, cfg_weight=0.2, max_total_length=1234)
    ping = await get_json(client, "/ping")
    assert ping["status"] == "ok"

    models = await get_json(client, "/v1/models")
    assert models["object"] == "list"
    assert isinstance(models["data"], list) and models["data"]
    for item in models["data"]:
        assert isinstance(item["id"], str) and item["id"]
        assert item["object"] == "model"
        assert isinstance(item["created"], int)
        assert isinstance(item["owned_by"], str)
    assert "scripted" in [item["id"] for item in models["data"]]

    for path in ("/config", "/v1/config"):
        defaults = (await get_json(client, path))["defaults"]
        settings = core_of(client).settings
        assert defaults == {
            "exaggeration": 0.9,
            "cfg_weight": 0.2,
            "temperature": settings.temperature,
            "max_chunk_length": settings.max_chunk_length,
            "max_total_length": 1234,
        }


@pytest.mark.parametrize("prefix", ["", "/v1"])
async def test_memory_endpoint_and_reset_needing_confirmation(make_client, scripted, prefix):
    client = await make_client(engine=scripted)
    body = await (await client.get(f"{prefix}/memory")).json()
    assert body["memory_info"]["cpu_memory_mb"] > 0
    assert body["memory_info"]["gpu_memory_allocated_mb"] == 0.0  # no CUDA here
    refused = await client.post(f"{prefix}/memory/reset")
    assert refused.status == 400
    assert (await refused.json())["error"]["param"] == "confirm"
    done = await client.post(f"{prefix}/memory/reset?confirm=true")
    assert done.status == 200
    result = await done.json()
    assert result["success"] is True
    assert {"memory_before", "memory_after"} <= set(result)


async def test_health_carries_chatterbox_tts_api_fields(make_client, scripted):
    client = await make_client(engine=scripted)
    body = await (await client.get("/health")).json()
    assert body["config"]["max_chunk_length"] == 280
    assert body["config"]["default_exaggeration"] == 0.5
    assert isinstance(body["memory_info"]["cpu_memory_mb"], float)
