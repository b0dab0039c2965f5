"""Drop-in compatibility with chatterbox-tts-api: its web frontend and its scripts keep working.

The frontend is configured with an API endpoint such as ``http://HOST:4123/v1`` and calls
paths under it; scripts call the same paths. These are contract tests against a running
app: every /v1 route answers with chatterbox-tts-api's status code, the request fields it
sends are taken (bad ones are a 400 in our error shape, never FastAPI's 422), and the
response fields its frontend reads (its ``types/index.ts`` and ``services/tts.ts``) are
there with the types it expects. The field lists below are written from those files as
facts about the wire format; nothing of that code is reused.

Where timing or state must be controlled the scripted engine stands in for a model; where
the real voice matters (audio that decodes, a real load) the embedded hibari voice runs.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import pytest
from conftest import core_of, decode_wav
from doubles import ScriptedEngine
from helpers import wav_tone

from chatterbox_status import memory
from chatterbox_status.config import Settings

LOCAL_ORIGIN = "http://localhost:5173"  # where the frontend's dev server runs

# -- what the frontend sends ---------------------------------------------------------------


def frontend_form(**overrides: str) -> dict[str, str]:
    """The fields the frontend's generateSpeech puts in its FormData (numbers as text)."""
    fields = {
        "input": "Hello from the frontend.",
        "exaggeration": "0.5",
        "cfg_weight": "0.5",
        "temperature": "0.8",
        "session_id": "session_1712345678_abcdef",
    }
    fields.update(overrides)
    return fields


def form_data(fields: dict[str, str], voice_file: bytes | None = None, filename: str = "voice.wav",
              content_type: str = "audio/wav") -> aiohttp.FormData:
    data = aiohttp.FormData()
    for name, value in fields.items():
        data.add_field(name, value)
    if voice_file is not None:
        data.add_field("voice_file", voice_file, filename=filename, content_type=content_type)
    return data


def frontend_sse_events(text: str) -> list[dict]:
    """Speech SSE events parsed exactly as the frontend does: split on "\\n", JSON after "data: "."""
    events = []
    for line in text.split("\n"):
        if line.startswith("data: "):
            events.append(json.loads(line[len("data: "):]))
    return events


# -- what the frontend reads ---------------------------------------------------------------

NUMBER, STRING, BOOL, LIST, DICT = "number", "string", "bool", "list", "dict"
OPTIONAL_STRING = "string or null"


def _is(value: Any, kind: str) -> bool:
    if kind == NUMBER:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == STRING:
        return isinstance(value, str)
    if kind == OPTIONAL_STRING:
        return value is None or isinstance(value, str)
    if kind == BOOL:
        return isinstance(value, bool)
    if kind == LIST:
        return isinstance(value, list)
    if kind == DICT:
        return isinstance(value, dict)
    raise AssertionError(kind)


def shape_problems(body: Any, spec: dict, where: str = "") -> list[str]:
    """Fields of ``spec`` missing from ``body`` or of the wrong type (nested dicts recurse)."""
    problems = []
    for name, kind in spec.items():
        path = f"{where}.{name}" if where else name
        if not isinstance(body, dict) or name not in body:
            problems.append(f"{path} missing")
        elif isinstance(kind, dict):
            problems += shape_problems(body[name], kind, path)
        elif not _is(body[name], kind):
            problems.append(f"{path} is {body[name]!r}, not a {kind}")
    return problems


MEMORY_FIELDS = {"cpu_memory_mb": NUMBER, "gpu_memory_allocated_mb": NUMBER}
PARAMETERS = {"exaggeration": NUMBER, "cfg_weight": NUMBER, "temperature": NUMBER}
# The frontend's HealthResponse (initialization_error is null unless loading failed).
HEALTH = {
    "status": STRING,
    "model_loaded": BOOL,
    "device": STRING,
    "config": DICT,
    "memory_info": MEMORY_FIELDS,
    "initialization_state": STRING,
    "initialization_progress": STRING,
    "initialization_error": OPTIONAL_STRING,
}
# TTSStatistics, as /status/statistics?include_memory=true answers it.
STATISTICS = {
    "total_requests": NUMBER,
    "completed_requests": NUMBER,
    "error_requests": NUMBER,
    "success_rate": NUMBER,
    "average_duration_seconds": NUMBER,
    "average_text_length": NUMBER,
    "is_processing": BOOL,
}
# TTSProgress while a request runs (the frontend's progress overlay and status header).
PROGRESS_RUNNING = {
    "is_processing": BOOL,
    "status": STRING,
    "current_step": STRING,
    "current_chunk": NUMBER,
    "total_chunks": NUMBER,
    "progress_percentage": NUMBER,
    "duration_seconds": NUMBER,
    "estimated_completion": NUMBER,
    "text_preview": STRING,
    "request_id": STRING,
}
PROGRESS_IDLE = {"is_processing": BOOL, "status": STRING, "message": STRING}
# TTSStatus while a request runs.
STATUS_RUNNING = {
    "status": STRING,
    "is_processing": BOOL,
    "request_id": STRING,
    "start_time": NUMBER,
    "duration_seconds": NUMBER,
    "text_length": NUMBER,
    "text_preview": STRING,
    "voice_source": STRING,
    "parameters": PARAMETERS,
    "progress": {
        "current_chunk": NUMBER,
        "total_chunks": NUMBER,
        "current_step": STRING,
        "progress_percentage": NUMBER,
        "estimated_completion": NUMBER,
    },
    "total_requests": NUMBER,
}
STATUS_IDLE = {"status": STRING, "is_processing": BOOL, "total_requests": NUMBER, "message": STRING}
# TTSRequestHistory: entries of /status/history and of /info's recent_requests.
HISTORY_ENTRY = {
    "request_id": STRING,
    "status": STRING,
    "start_time": NUMBER,
    "end_time": NUMBER,
    "duration_seconds": NUMBER,
    "text_length": NUMBER,
    "text_preview": STRING,
    "voice_source": STRING,
    "parameters": PARAMETERS,
}
# APIInfo (the status header also shows version or api_version).
API_INFO = {
    "api_name": STRING,
    "version": STRING,
    "api_version": STRING,
    "status": STRING,
    "tts_status": {"status": STRING, "is_processing": BOOL, "total_requests": NUMBER},
    "statistics": STATISTICS,
    "memory_info": MEMORY_FIELDS,
    "recent_requests": LIST,
    "uptime_info": {"total_requests": NUMBER, "success_rate": NUMBER, "is_processing": BOOL},
}
# VoiceLibraryItem. Its "path" (the server's file path) is left out on purpose, as the
# README's "Different" list says; the frontend does not read it.
VOICE_ITEM = {
    "name": STRING,
    "filename": STRING,
    "original_filename": STRING,
    "file_extension": STRING,
    "file_size": NUMBER,
    "upload_date": STRING,
    "aliases": LIST,
    "language": STRING,
}


# -- fixtures ------------------------------------------------------------------------------


async def upload_voice(client, name: str = "Narrator", path: str = "/v1/voices") -> dict:
    response = await client.post(path, data=form_data({"voice_name": name, "language": "en"}, wav_tone(1.5)))
    assert response.status == 201, await response.text()
    return await response.json()


async def library_client(make_client, engine=None):
    """A scripted app whose library holds Narrator (alias storyteller), after one request."""
    client = await make_client(engine=engine or ScriptedEngine(cloning=True))
    await upload_voice(client)
    added = await client.post("/v1/voices/Narrator/aliases", data=form_data({"alias": "storyteller"}))
    assert added.status == 201, await added.text()
    spoken = await client.post("/v1/audio/speech", json={"input": "A first request."},
                               headers={"X-Request-ID": "drop-in-walk-1"})
    assert spoken.status == 200
    await spoken.read()
    return client


async def hold_one_request(client, engine: ScriptedEngine, request_id: str, text: str):
    """Start a request whose first chunk is held in the engine; returns its pending response."""
    engine.hold()
    pending = asyncio.ensure_future(
        client.post("/v1/audio/speech", json={"input": text}, headers={"X-Request-ID": request_id})
    )
    await asyncio.to_thread(engine.wait_started)
    return pending


async def finish(pending, engine: ScriptedEngine, chunks: int = 10) -> aiohttp.ClientResponse:
    engine.release(chunks)
    response = await pending
    await response.read()
    return response


# -- every /v1 route answers -----------------------------------------------------------------

VOICE = ("voice", None)  # a multipart voice upload (voice_name, voice_file, language)

# (method, path, body, expected status): every route chatterbox-tts-api serves under /v1
# (its long-text routes excepted, which the README lists as not built), plus the /v1 paths
# its frontend calls, with the input the frontend or a script sends.
V1_ROUTES = [
    ("GET", "/v1/health", None, 200),
    ("GET", "/v1/ping", None, 200),
    ("GET", "/v1/info", None, 200),
    ("GET", "/v1/config", None, 200),
    ("GET", "/v1/models", None, 200),
    ("GET", "/v1/languages", None, 200),
    ("GET", "/v1/endpoints", None, 200),
    ("GET", "/v1/memory", None, 200),
    ("POST", "/v1/memory/reset?confirm=true", None, 200),
    ("GET", "/v1/status", None, 200),
    ("GET", "/v1/status?include_memory=true&include_history=true&include_stats=true&history_limit=5", None, 200),
    ("GET", "/v1/status/progress", None, 200),
    ("GET", "/v1/status/statistics", None, 200),
    ("GET", "/v1/status/statistics?include_memory=true", None, 200),
    ("GET", "/v1/status/history", None, 200),
    ("GET", "/v1/status/history?limit=3", None, 200),
    ("POST", "/v1/status/history/clear?confirm=true", None, 200),
    ("GET", "/v1/status/requests/drop-in-walk-1", None, 200),
    ("GET", "/v1/voices", None, 200),
    ("GET", "/v1/audio/voices", None, 200),
    ("POST", "/v1/voices", VOICE, 201),
    ("GET", "/v1/voices/default", None, 200),
    ("POST", "/v1/voices/default", ("form", {"voice_name": "Narrator"}), 200),
    ("DELETE", "/v1/voices/default", None, 200),
    ("GET", "/v1/voices/all-names", None, 200),
    ("POST", "/v1/voices/cleanup", None, 200),
    ("GET", "/v1/voices/Narrator", None, 200),
    ("GET", "/v1/voices/storyteller", None, 200),
    ("PUT", "/v1/voices/Narrator", ("form", {"new_name": "Announcer"}), 200),
    ("DELETE", "/v1/voices/Narrator", None, 200),
    ("GET", "/v1/voices/Narrator/download", None, 200),
    ("GET", "/v1/voices/Narrator/aliases", None, 200),
    ("POST", "/v1/voices/Narrator/aliases", ("form", {"alias": "reader"}), 201),
    ("DELETE", "/v1/voices/Narrator/aliases/storyteller", None, 200),
    # generateSpeechJSON posts the whole TTSRequest: session_id, and voice_file as JSON makes a File ({}).
    ("POST", "/v1/audio/speech", ("json", {"input": "Hello.", "voice": "alloy", "exaggeration": 0.5, "cfg_weight": 0.5,
                                           "temperature": 0.8, "session_id": "s1", "voice_file": {}}), 200),
    ("POST", "/v1/audio/speech", ("json", {"input": "Hello.", "stream_format": "sse"}), 200),
    ("POST", "/v1/audio/speech", ("json", {"input": "Hello.", "stream_format": "audio"}), 200),
    ("POST", "/v1/audio/speech/upload", ("form", frontend_form()), 200),
    ("POST", "/v1/audio/speech/stream", ("json", {"input": "Hello.", "streaming_chunk_size": 100}), 200),
    ("POST", "/v1/audio/speech/stream/upload", ("form", frontend_form(streaming_strategy="word")), 200),
]


async def send(client, method: str, path: str, body, headers: dict | None = None) -> aiohttp.ClientResponse:
    kwargs: dict[str, Any] = {"headers": headers or {}}
    if body is VOICE:
        kwargs["data"] = form_data({"voice_name": "Second voice", "language": "en"}, wav_tone(1.5))
    elif body is not None:
        kind, value = body
        if kind == "json":
            kwargs["json"] = value
        else:
            kwargs["data"] = form_data(value)
    return await client.request(method, path, **kwargs)


@pytest.mark.parametrize("method,path,body,expected", V1_ROUTES, ids=[f"{m} {p}" for m, p, _, _ in V1_ROUTES])
async def test_every_v1_route_answers_as_chatterbox_tts_api_does(make_client, method, path, body, expected):
    client = await library_client(make_client)
    response = await send(client, method, path, body)
    payload = await response.read()
    assert response.status == expected, payload[:500]
    if "/audio/speech" in path:
        assert response.content_type.startswith("audio/") or response.content_type == "text/event-stream"
        assert len(payload) > 0
    elif "/download" in path:
        assert response.content_type.startswith("audio/") and len(payload) > 1000
    else:
        assert response.content_type == "application/json"
        assert isinstance(json.loads(payload), dict)


def test_the_walk_covers_every_v1_path_of_chatterbox_tts_api():
    """The paths the issue names are all walked (with aliases and sub-routes)."""
    walked = {path.split("?")[0] for _, path, _, _ in V1_ROUTES}
    required = {
        "/v1/health", "/v1/info", "/v1/config", "/v1/models", "/v1/status", "/v1/status/progress",
        "/v1/status/statistics", "/v1/status/history", "/v1/status/history/clear", "/v1/voices",
        "/v1/voices/default", "/v1/voices/Narrator/download", "/v1/voices/Narrator/aliases",
        "/v1/voices/Narrator/aliases/storyteller", "/v1/voices/all-names", "/v1/voices/cleanup",
        "/v1/voices/Narrator", "/v1/audio/speech", "/v1/audio/speech/upload", "/v1/audio/speech/stream",
        "/v1/audio/speech/stream/upload", "/v1/memory", "/v1/memory/reset", "/v1/endpoints", "/v1/ping",
        "/v1/languages",
    }
    assert required <= walked, required - walked


async def test_endpoints_lists_the_v1_routes(make_client, scripted):
    client = await make_client(engine=scripted)
    listed = {e["path"]: set(e["methods"]) for e in (await (await client.get("/v1/endpoints")).json())["endpoints"]}
    for method, path, _, _ in V1_ROUTES:
        template = path.split("?")[0]
        template = template.replace("/drop-in-walk-1", "/{request_id}").replace("/storyteller", "/{alias}")
        template = template.replace("/Narrator", "/{voice_name}")
        if template == "/v1/voices/{alias}":
            template = "/v1/voices/{voice_name}"
        assert method in listed.get(template, set()), (method, template)


# -- bad input: 400 with our error shape, never 422 ------------------------------------------

BAD_INPUT = [
    ("POST", "/v1/audio/speech", ("json", {"voice": "alloy"}), "input"),
    ("POST", "/v1/audio/speech", ("json", {"input": "Hi.", "exaggeration": 3.0}), "exaggeration"),
    ("POST", "/v1/audio/speech", ("json", {"input": "Hi.", "cfg_weight": "high"}), "cfg_weight"),
    ("POST", "/v1/audio/speech", ("json", {"input": "Hi.", "stream_format": "video"}), "stream_format"),
    ("POST", "/v1/audio/speech/upload", ("form", {"voice": "alloy", "session_id": "s"}), "input"),
    ("POST", "/v1/audio/speech/upload", ("form", frontend_form(temperature="hot")), "temperature"),
    ("POST", "/v1/audio/speech/stream", ("json", {"input": "Hi.", "streaming_chunk_size": 10}), "streaming_chunk_size"),
    ("POST", "/v1/audio/speech/stream/upload", ("form", frontend_form(streaming_quality="ultra")), "streaming_quality"),
    ("POST", "/v1/voices", ("form", {"voice_name": "No file"}), "voice_file"),
    ("PUT", "/v1/voices/Narrator", ("form", {}), "new_name"),
    ("POST", "/v1/voices/Narrator/aliases", ("form", {}), "alias"),
    ("POST", "/v1/voices/default", ("form", {}), "voice_name"),
    ("GET", "/v1/status/history?limit=0", None, "limit"),
    ("GET", "/v1/status?history_limit=99", None, "history_limit"),
    ("GET", "/v1/status/statistics?include_memory=perhaps", None, "include_memory"),
    ("POST", "/v1/status/history/clear", None, "confirm"),
]


@pytest.mark.parametrize("method,path,body,param", BAD_INPUT, ids=[f"{m} {p} {q}" for m, p, _, q in BAD_INPUT])
async def test_bad_input_is_a_400_in_our_error_shape(make_client, method, path, body, param):
    client = await library_client(make_client)
    response = await send(client, method, path, body, headers={"Origin": LOCAL_ORIGIN})
    assert response.status == 400, await response.text()
    error = (await response.json())["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert isinstance(error["message"], str) and error["message"]
    assert response.headers["Access-Control-Allow-Origin"] == LOCAL_ORIGIN


# -- /health ----------------------------------------------------------------------------------


async def test_health_when_ready_on_the_real_engine(make_client):
    client = await make_client()
    response = await client.get("/v1/health")
    assert response.status == 200
    body = await response.json()
    assert shape_problems(body, HEALTH) == []
    assert body["status"] == "healthy" and body["model_loaded"] is True
    assert body["device"] == core_of(client).engine.device
    assert body["initialization_state"] == "ready"


async def test_health_while_the_model_loads(make_client):
    engine = ScriptedEngine()
    engine.load_gate.clear()
    client = await make_client(engine=engine, wait_loaded=False)
    try:
        response = await client.get("/v1/health")
        assert response.status == 200
        body = await response.json()
        assert body["status"] == "initializing"
        assert body["model_loaded"] is False
        assert isinstance(body["device"], str) and isinstance(body["initialization_state"], str)
    finally:
        engine.load_gate.set()
    await asyncio.wait_for(core_of(client).worker.wait_loaded(), 10)
    assert (await (await client.get("/v1/health")).json())["status"] == "healthy"


async def failed_client(make_client):
    client = await make_client(engine=ScriptedEngine(load_error="weights missing"), wait_loaded=False)
    await asyncio.wait_for(core_of(client).engines.default.loaded.wait(), 10)  # its load has failed
    return client


async def test_health_when_loading_failed(make_client):
    """200 with status "error", as chatterbox-tts-api answers: its frontend throws on a
    non-ok /health, and would then never show initialization_error."""
    client = await failed_client(make_client)
    response = await client.get("/v1/health", headers={"Origin": LOCAL_ORIGIN})
    assert response.status == 200
    body = await response.json()
    assert body["status"] == "error" and body["model_loaded"] is False
    assert "weights missing" in body["initialization_error"]
    assert response.headers["Access-Control-Allow-Origin"] == LOCAL_ORIGIN


@pytest.mark.parametrize("phase,expected", [("loading", "initializing"), ("ready", "ready"), ("failed", "error")])
async def test_initialization_state_takes_chatterbox_tts_api_values(make_client, phase, expected):
    """chatterbox-tts-api reports initialization_state as not_started, initializing, ready or
    error, and its frontend's status header shows "Initializing Model" (with
    initialization_progress) only when it reads "initializing"."""
    engine = ScriptedEngine()
    if phase == "failed":
        client = await failed_client(make_client)
    else:
        if phase == "loading":
            engine.load_gate.clear()
        client = await make_client(engine=engine, wait_loaded=phase == "ready")
    try:
        body = await (await client.get("/v1/health")).json()
    finally:
        engine.load_gate.set()
    assert body["initialization_state"] == expected


async def test_health_config_uses_chatterbox_tts_api_names(make_client, scripted):
    """chatterbox-tts-api's /health config names the defaults default_exaggeration,
    default_cfg_weight and default_temperature; scripts that read them keep working."""
    client = await make_client(engine=scripted, exaggeration=0.7, cfg_weight=0.4, temperature=0.9)
    config = (await (await client.get("/v1/health")).json())["config"]
    expected = {"max_chunk_length": 280, "max_total_length": 4096, "voice_sample_path": None,
                "default_exaggeration": 0.7, "default_cfg_weight": 0.4, "default_temperature": 0.9}
    assert {name: config.get(name, "(missing)") for name in expected} == expected


# -- /status/statistics and /status/progress ---------------------------------------------------


def test_memory_monitoring_is_on_by_default():
    assert Settings().enable_memory_monitoring is True
    assert Settings.from_sources({}, {}).enable_memory_monitoring is True


def assert_memory(current: dict) -> None:
    assert shape_problems(current, MEMORY_FIELDS) == [], current
    assert current["cpu_memory_mb"] > 0
    if not memory.snapshot()["gpu_available"]:
        assert current["gpu_memory_allocated_mb"] == 0


async def test_statistics_are_numbers_before_the_first_request(make_client, scripted):
    client = await make_client(engine=scripted)
    body = await (await client.get("/v1/status/statistics?include_memory=true")).json()
    assert shape_problems(body, STATISTICS) == [], body
    assert body["total_requests"] == 0
    assert body["success_rate"] == 0 and body["average_duration_seconds"] == 0 and body["average_text_length"] == 0
    assert_memory(body["current_memory"])


async def test_statistics_after_requests_on_the_real_engine(make_client):
    client = await make_client()
    response = await client.post("/v1/audio/speech/upload", data=form_data(frontend_form()))
    assert response.status == 200
    await response.read()
    body = await (await client.get("/v1/status/statistics?include_memory=true")).json()
    assert shape_problems(body, STATISTICS) == [], body
    assert body["total_requests"] == 1 and body["completed_requests"] == 1
    assert body["success_rate"] == 100
    assert body["average_duration_seconds"] > 0
    assert body["average_text_length"] == len(frontend_form()["input"])
    assert_memory(body["current_memory"])


async def test_progress_when_idle(make_client, scripted):
    client = await make_client(engine=scripted)
    body = await (await client.get("/v1/status/progress")).json()
    assert shape_problems(body, PROGRESS_IDLE) == []
    assert body["status"] == "idle" and body["is_processing"] is False


async def test_progress_and_status_while_a_request_runs(make_client):
    engine = ScriptedEngine()
    client = await make_client(engine=engine, max_chunk_length=40)
    pending = await hold_one_request(
        client, engine, "drop-in-running", "The first sentence is here. The second one follows it. A third ends."
    )
    try:
        now = time.time()
        progress = await (await client.get("/v1/status/progress")).json()
        assert shape_problems(progress, PROGRESS_RUNNING) == [], progress
        assert progress["request_id"] == "drop-in-running" and progress["is_processing"] is True
        assert progress["status"] == "generating_audio"
        assert now - 5 <= progress["estimated_completion"] <= now + 600, (progress["estimated_completion"], now)
        assert 0 <= progress["progress_percentage"] < 100
        status = await (await client.get("/v1/status?include_memory=true&include_stats=true")).json()
        assert shape_problems(status, STATUS_RUNNING) == [], status
        assert shape_problems(status["statistics"], STATISTICS) == []
        assert shape_problems(status["memory_info"], MEMORY_FIELDS) == []
    finally:
        response = await finish(pending, engine)
    assert response.status == 200
    done = await (await client.get("/v1/status/progress")).json()
    assert done["status"] == "idle"


async def test_progress_of_a_request_waiting_for_the_model(make_client):
    """Before the model has loaded there is no measured throughput to estimate from: the
    request is reported (status, id, numbers) and estimated_completion is a number or null."""
    engine = ScriptedEngine()
    engine.load_gate.clear()
    client = await make_client(engine=engine, wait_loaded=False)
    pending = asyncio.ensure_future(
        client.post("/v1/audio/speech", json={"input": "Waiting for the model."}, headers={"X-Request-ID": "drop-in-early"})
    )
    try:
        deadline = time.monotonic() + 10
        while not (body := await (await client.get("/v1/status/progress")).json())["is_processing"]:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        assert body["status"] == "initializing" and body["request_id"] == "drop-in-early"
        assert shape_problems(body, {k: v for k, v in PROGRESS_RUNNING.items() if k != "estimated_completion"}) == []
        assert body["estimated_completion"] is None or _is(body["estimated_completion"], NUMBER)
    finally:
        engine.load_gate.set()
    response = await pending
    assert response.status == 200
    await response.read()


# -- /info, /voices/default and the other bodies the frontend reads ---------------------------


async def test_info_carries_version_and_api_version(make_client, scripted):
    client = await make_client(engine=scripted)
    await (await client.post("/v1/audio/speech", json={"input": "For the history."})).read()
    body = await (await client.get("/v1/info")).json()
    assert shape_problems(body, API_INFO) == [], body
    assert body["version"] and body["api_version"]
    assert [shape_problems(entry, HISTORY_ENTRY) for entry in body["recent_requests"]] == [[]]


async def test_default_voice_get_answers_default_voice(make_client, scripted):
    client = await make_client(engine=scripted)
    body = await (await client.get("/v1/voices/default")).json()
    assert body["default_voice"] is None and body["source"] == "file_system"
    await upload_voice(client)
    chosen = await client.post("/v1/voices/default", data=form_data({"voice_name": "Narrator"}))
    assert chosen.status == 200 and (await chosen.json())["default_voice"] == "Narrator"
    body = await (await client.get("/v1/voices/default")).json()
    assert body["default_voice"] == "Narrator" and body["source"] == "voice_library"
    assert shape_problems(body["voice_info"], VOICE_ITEM) == []
    cleared = await (await client.delete("/v1/voices/default")).json()
    assert cleared["default_voice"] is None


async def test_response_fields_the_frontend_reads(make_client):
    """Each service call of the frontend, and the fields it reads from the answer."""
    client = await library_client(make_client)
    problems: dict[str, list[str]] = {}

    async def check(name: str, path: str, spec: dict, method: str = "GET", **kwargs) -> Any:
        response = await client.request(method, path, **kwargs)
        assert response.status < 300, (path, await response.text())
        body = await response.json()
        problems[name] = shape_problems(body, spec)
        return body

    await check("health", "/v1/health", HEALTH)
    await check("ping", "/v1/ping", {"status": STRING, "message": STRING})
    voices = await check("voices", "/v1/audio/voices", {"voices": LIST, "count": NUMBER})
    problems["voice item"] = shape_problems(voices["voices"][0], VOICE_ITEM)
    await check("voices (v1)", "/v1/voices", {"voices": LIST, "count": NUMBER})
    await check("voice info", "/v1/voices/Narrator", {"voice": VOICE_ITEM})
    languages = await check("languages", "/v1/languages", {"languages": LIST, "count": NUMBER})
    problems["language item"] = shape_problems(languages["languages"][0], {"code": STRING, "name": STRING})
    await check("aliases", "/v1/voices/Narrator/aliases", {"voice_name": STRING, "aliases": LIST, "count": NUMBER})
    await check("all names", "/v1/voices/all-names", {"voice_names": LIST, "count": NUMBER})
    await check("default voice", "/v1/voices/default", {"default_voice": OPTIONAL_STRING, "source": STRING})
    await check("progress", "/v1/status/progress", PROGRESS_IDLE)
    await check("status", "/v1/status", STATUS_IDLE)
    await check("statistics", "/v1/status/statistics?include_memory=true", {**STATISTICS, "current_memory": MEMORY_FIELDS})
    history = await check("history", "/v1/status/history", {"request_history": LIST})
    problems["history entry"] = shape_problems(history["request_history"][0], HISTORY_ENTRY)
    await check("info", "/v1/info", API_INFO)
    await check("memory", "/v1/memory", {"memory_info": MEMORY_FIELDS})
    await check("upload voice", "/v1/voices", {"message": STRING, "voice": {"name": STRING, "filename": STRING,
                "file_size": NUMBER, "upload_date": STRING, "language": STRING}},
                method="POST", data=form_data({"voice_name": "Third", "language": "en"}, wav_tone(1.5)))
    await check("add alias", "/v1/voices/Third/aliases", {"message": STRING, "voice_name": STRING, "alias": STRING,
                "aliases": LIST}, method="POST", data=form_data({"alias": "third-alias"}))
    await check("remove alias", "/v1/voices/Third/aliases/third-alias", {"voice_name": STRING, "aliases": LIST},
                method="DELETE")
    await check("rename", "/v1/voices/Third", {"message": STRING, "old_name": STRING, "new_name": STRING},
                method="PUT", data=form_data({"new_name": "Fourth"}))
    await check("delete", "/v1/voices/Fourth", {"message": STRING, "voice_name": STRING}, method="DELETE")
    assert {name: found for name, found in problems.items() if found} == {}


async def test_error_bodies_carry_the_message_the_frontend_shows(make_client, scripted):
    """The frontend shows errorData.error.message for voice-library failures."""
    client = await make_client(engine=scripted)
    for method, path in (("DELETE", "/v1/voices/nobody"), ("PUT", "/v1/voices/nobody"),
                         ("GET", "/v1/voices/nobody/aliases"), ("DELETE", "/v1/voices/nobody/aliases/x")):
        response = await client.request(method, path, data=form_data({"new_name": "x"}) if method == "PUT" else None)
        assert response.status == 404, (method, path)
        assert (await response.json())["error"]["message"]


# -- the upload route --------------------------------------------------------------------------


async def test_upload_takes_every_frontend_field_on_the_real_engine(make_client):
    client = await make_client()
    fields = frontend_form(voice="alloy", response_format="wav", speed="1.25", exaggeration="0.7",
                           cfg_weight="0.3", temperature="0.9", stream_format="", unknown_field="ignored")
    response = await client.post("/v1/audio/speech/upload", data=form_data(fields))
    assert response.status == 200, await response.text()
    assert response.content_type == "audio/wav"
    rate, channels, frames = decode_wav(await response.read())
    assert channels == 1 and frames / rate > 0.3
    record = await (await client.get(f"/v1/status/requests/{response.headers['X-Request-ID']}")).json()
    assert record["status"] == "completed"
    assert record["parameters"] | {"exaggeration": 0.7, "cfg_weight": 0.3, "temperature": 0.9, "speed": 1.25} == record["parameters"]


async def test_upload_with_a_voice_file_clones_for_that_request(make_client):
    engine = ScriptedEngine(cloning=True)
    client = await make_client(engine=engine)
    response = await client.post("/v1/audio/speech/upload", data=form_data(frontend_form(), wav_tone(2.0)))
    assert response.status == 200, await response.text()
    await response.read()
    assert engine.voices[-1][0] == "upload" and engine.voices[-1][2]


@pytest.mark.parametrize("path", ["/v1/audio/speech/upload", "/v1/audio/speech/stream/upload"])
@pytest.mark.parametrize("payload,filename", [(b"%PDF-1.4 not audio at all" * 50, "notes.pdf"),
                                              (b"RIFF\x00\x00\x00\x00WAVEjunk" * 40, "broken.wav")])
async def test_voice_file_that_is_not_audio_is_a_400(make_client, path, payload, filename):
    engine = ScriptedEngine(cloning=True)
    client = await make_client(engine=engine)
    calls = len(engine.calls)
    response = await client.post(path, data=form_data(frontend_form(), payload, filename=filename),
                                 headers={"Origin": LOCAL_ORIGIN})
    assert response.status == 400
    error = (await response.json())["error"]
    assert error["param"] == "voice_file" and error["type"] == "invalid_request_error"
    assert response.headers["Access-Control-Allow-Origin"] == LOCAL_ORIGIN
    assert len(engine.calls) == calls


async def test_upload_with_stream_format_sse_as_the_frontend_parses_it(make_client):
    client = await make_client()
    response = await client.post("/v1/audio/speech/upload", data=form_data(frontend_form(stream_format="sse")))
    assert response.status == 200
    assert response.content_type == "text/event-stream"
    events = frontend_sse_events(await response.text())
    assert events and events[-1]["type"] == "speech.audio.done"
    deltas = [e for e in events if e["type"] == "speech.audio.delta"]
    assert deltas and all(isinstance(e["audio"], str) and e["audio"] for e in deltas)
    assert shape_problems(events[-1], {"usage": {"input_tokens": NUMBER, "output_tokens": NUMBER,
                                                 "total_tokens": NUMBER}}) == []


# -- streaming knobs ---------------------------------------------------------------------------

PARAGRAPHS = [
    "Rain fell on the old harbour all night, and the boats rocked.",
    "By morning the men were out. They mended their nets on the quay, slowly.",
    "Gulls circled above. The tide turned at noon, and the whole town woke up.",
    "Children ran along the sea wall until their mothers called them home.",
    "Then night came.",
    "The end.",
]
TEXT = "\n".join(PARAGRAPHS)
LONG_TEXT = " ".join(
    f"Sentence number {n} tells a little more of the story, slowly and with care." for n in range(1, 16)
)
SENTENCE_END = (".", "!", "?")


async def stream_chunks(client, engine: ScriptedEngine, route: str, text: str, **knobs) -> list[str]:
    """Stream ``text`` by one of the three streaming routes; the chunks the engine was given."""
    before = len(engine.calls)
    if route == "audio":
        response = await client.post("/v1/audio/speech/stream", json={"input": text, **knobs})
    elif route == "sse":
        response = await client.post("/v1/audio/speech", json={"input": text, "stream_format": "sse", **knobs})
    else:
        response = await client.post("/v1/audio/speech/stream/upload",
                                     data=form_data(frontend_form(input=text, **{k: str(v) for k, v in knobs.items()})))
    assert response.status == 200, await response.text()
    body = await response.read()
    chunks = engine.calls[before:]
    if route == "sse":
        deltas = [e for e in frontend_sse_events(body.decode()) if e["type"] == "speech.audio.delta"]
        assert len(deltas) >= 1
    else:
        assert response.headers.get("Transfer-Encoding") == "chunked"
    assert " ".join(chunks).split() == text.split()  # every word, in order
    return chunks


ROUTES = ["audio", "sse", "form"]


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("size", [50, 200, 500])
async def test_streaming_chunk_size_bounds_every_chunk(make_client, route, size):
    engine = ScriptedEngine()
    client = await make_client(engine=engine)
    chunks = await stream_chunks(client, engine, route, LONG_TEXT, streaming_chunk_size=size)
    assert max(map(len, chunks)) <= size, chunks
    # The size is used, not a default: chunks fill up to it (whole 74-character sentences
    # for 200 and 500, clauses and words for 50).
    assert max(map(len, chunks)) > 0.6 * size, chunks


@pytest.mark.parametrize("route", ROUTES)
async def test_streaming_strategies(make_client, route):
    engine = ScriptedEngine()
    client = await make_client(engine=engine)
    size = 100
    by_strategy = {
        strategy: await stream_chunks(client, engine, route, TEXT, streaming_chunk_size=size, streaming_strategy=strategy)
        for strategy in ("sentence", "paragraph", "word", "fixed")
    }
    for strategy, chunks in by_strategy.items():
        assert max(map(len, chunks)) <= size, (strategy, chunks)
    # sentence: chunks end where sentences end
    assert all(c.endswith(SENTENCE_END) for c in by_strategy["sentence"]), by_strategy["sentence"]
    # paragraph: every chunk is whole paragraphs (consecutive ones packed while they fit)
    joins = {" ".join(PARAGRAPHS[i:j]) for i in range(len(PARAGRAPHS)) for j in range(i + 1, len(PARAGRAPHS) + 1)}
    assert all(c in joins for c in by_strategy["paragraph"]), by_strategy["paragraph"]
    assert by_strategy["paragraph"] != by_strategy["sentence"]
    # word and fixed: packed by words regardless of punctuation, so some chunk ends mid-sentence
    for strategy in ("word", "fixed"):
        assert any(not c.endswith(SENTENCE_END) for c in by_strategy[strategy]), (strategy, by_strategy[strategy])
    assert by_strategy["word"] != by_strategy["sentence"]


@pytest.mark.parametrize("route", ROUTES)
async def test_streaming_quality_sets_the_chunk_size(make_client, route):
    engine = ScriptedEngine()
    client = await make_client(engine=engine)
    longest = {}
    for quality in ("fast", "balanced", "high"):
        longest[quality] = max(map(len, await stream_chunks(client, engine, route, LONG_TEXT, streaming_quality=quality)))
    assert longest["fast"] <= 100 < longest["balanced"] <= 200 < longest["high"] <= 300, longest


OUT_OF_RANGE = [
    ("streaming_chunk_size", 49),
    ("streaming_chunk_size", 501),
    ("streaming_chunk_size", 0),
    ("streaming_strategy", "line"),
    ("streaming_quality", "ultra"),
]


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("field,value", OUT_OF_RANGE)
async def test_out_of_range_streaming_knobs_are_400s(make_client, route, field, value):
    engine = ScriptedEngine()
    client = await make_client(engine=engine)
    calls = len(engine.calls)
    if route == "audio":
        response = await client.post("/v1/audio/speech/stream", json={"input": "Hi there.", field: value})
    elif route == "sse":
        response = await client.post("/v1/audio/speech", json={"input": "Hi there.", "stream_format": "sse", field: value})
    else:
        response = await client.post("/v1/audio/speech/stream/upload", data=form_data(frontend_form(**{field: str(value)})))
    assert response.status == 400
    error = (await response.json())["error"]
    assert error["param"] == field and error["type"] == "invalid_request_error"
    assert len(engine.calls) == calls
    assert (await (await client.get("/v1/status/statistics")).json())["total_requests"] == 0


# -- CORS --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "setting,origin,allowed",
    [
        ("", "http://localhost:5173", "http://localhost:5173"),
        ("", "http://localhost:4321", "http://localhost:4321"),
        ("", "http://127.0.0.1:3000", "http://127.0.0.1:3000"),
        ("", "http://localhost", "http://localhost"),
        ("", "http://192.168.1.20:5173", None),
        ("", "https://example.com", None),
        ("http://192.168.1.20:5173", "http://192.168.1.20:5173", "http://192.168.1.20:5173"),
        ("http://192.168.1.20:5173", "http://localhost:5173", None),
        ("http://tts.lan, http://localhost:5173", "http://localhost:5173", "http://localhost:5173"),
        ("*", "https://example.com", "*"),
        ("*", "http://localhost:5173", "*"),
    ],
)
async def test_cors_origins(make_client, scripted, setting, origin, allowed):
    client = await make_client(engine=scripted, cors_origins=setting)
    response = await client.get("/v1/health", headers={"Origin": origin})
    assert response.headers.get("Access-Control-Allow-Origin") == allowed


async def test_every_kind_of_response_carries_cors_headers(make_client):
    client = await library_client(make_client)
    origin = {"Origin": LOCAL_ORIGIN}
    seen = {}
    for name, method, path, body in [
        ("json", "GET", "/v1/status/progress", None),
        ("unknown route", "GET", "/v1/no/such/route", None),
        ("wrong method", "PATCH", "/v1/audio/speech", None),
        ("bad input", "POST", "/v1/audio/speech", ("json", {"input": ""})),
        ("not found", "GET", "/v1/voices/nobody", None),
        ("whole file", "POST", "/v1/audio/speech/upload", ("form", frontend_form())),
        ("audio stream", "POST", "/v1/audio/speech/stream/upload", ("form", frontend_form())),
        ("sse speech", "POST", "/v1/audio/speech", ("json", {"input": "Hi.", "stream_format": "sse"})),
        ("voice download", "GET", "/v1/voices/Narrator/download", None),
    ]:
        response = await send(client, method, path, body, headers=origin)
        await response.read()
        seen[name] = (response.status, response.headers.get("Access-Control-Allow-Origin"))
        assert "X-Request-ID" in response.headers.get("Access-Control-Expose-Headers", ""), name
    stream = await client.get("/v1/status/stream", headers=origin)
    seen["status stream"] = (stream.status, stream.headers.get("Access-Control-Allow-Origin"))
    stream.close()
    assert {name: allowed for name, (_, allowed) in seen.items() if allowed != LOCAL_ORIGIN} == {}, seen
    assert seen["unknown route"][0] == 404 and seen["wrong method"][0] == 405 and seen["bad input"][0] == 400


async def test_refusals_carry_cors_headers(make_client, scripted):
    """413, 401 and 503 too: a browser client can read why it was refused."""
    origin = {"Origin": LOCAL_ORIGIN}
    client = await make_client(engine=scripted, max_body_size=4096)
    too_large = await client.post("/v1/audio/speech", json={"input": "x" * 8000}, headers=origin)
    assert too_large.status == 413 and too_large.headers["Access-Control-Allow-Origin"] == LOCAL_ORIGIN
    keyed = await make_client(engine=ScriptedEngine(), api_key="drop-in-key-123")
    denied = await keyed.get("/v1/status/progress", headers=origin)
    assert denied.status == 401 and denied.headers["Access-Control-Allow-Origin"] == LOCAL_ORIGIN
    failed = await failed_client(make_client)
    unavailable = await failed.post("/v1/audio/speech/upload", data=form_data(frontend_form()), headers=origin)
    assert unavailable.status == 503 and unavailable.headers["Access-Control-Allow-Origin"] == LOCAL_ORIGIN
    assert (await unavailable.json())["error"]["message"]


PREFLIGHTS = [
    ("POST", "/v1/audio/speech", "content-type"),  # axios and fetch JSON posts
    ("POST", "/v1/audio/speech", "content-type, accept"),
    ("POST", "/v1/audio/speech/upload", "authorization"),
    ("PUT", "/v1/voices/Narrator", None),
    ("DELETE", "/v1/voices/Narrator", None),
    ("DELETE", "/v1/voices/default", None),
    ("DELETE", "/v1/voices/Narrator/aliases/storyteller", None),
    ("GET", "/v1/status?include_memory=true", "authorization"),
    ("POST", "/v1/memory/reset", "content-type, authorization, x-request-id"),
]


@pytest.mark.parametrize("setting", ["", "*"])
@pytest.mark.parametrize("method,path,headers", PREFLIGHTS)
async def test_preflight_allows_what_the_frontend_sends(make_client, scripted, setting, method, path, headers):
    client = await make_client(engine=scripted, cors_origins=setting)
    request_headers = {"Origin": LOCAL_ORIGIN, "Access-Control-Request-Method": method}
    if headers:
        request_headers["Access-Control-Request-Headers"] = headers
    response = await client.options(path, headers=request_headers)
    assert response.status in (200, 204)
    assert response.headers["Access-Control-Allow-Origin"] in (LOCAL_ORIGIN, "*")
    assert method in [m.strip() for m in response.headers["Access-Control-Allow-Methods"].split(",")]
    if headers:
        allowed = {h.strip().lower() for h in response.headers["Access-Control-Allow-Headers"].split(",")}
        assert {h.strip() for h in headers.split(",")} <= allowed or "*" in allowed


async def test_authorization_header_from_another_origin(make_client, scripted):
    client = await make_client(engine=scripted, api_key="drop-in-key-123")
    headers = {"Origin": LOCAL_ORIGIN, "Authorization": "Bearer drop-in-key-123"}
    response = await client.get("/v1/status/progress", headers=headers)
    assert response.status == 200
    assert response.headers["Access-Control-Allow-Origin"] == LOCAL_ORIGIN
    speech = await client.post("/v1/audio/speech/upload", data=form_data(frontend_form()), headers=headers)
    assert speech.status == 200 and speech.headers["Access-Control-Allow-Origin"] == LOCAL_ORIGIN
    await speech.read()
    health = await client.get("/v1/health", headers={"Origin": LOCAL_ORIGIN})  # no key needed
    assert health.status == 200 and health.headers["Access-Control-Allow-Origin"] == LOCAL_ORIGIN
