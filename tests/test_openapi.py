"""The OpenAPI document: it covers every route, it is valid OpenAPI 3.1, and it is true.

"True" is checked by property-based fuzzing with schemathesis: the schema is loaded from a
running server (on the scripted engine, so generation is instant) and every operation is
called with generated requests, valid and invalid; no answer may be a 5xx, and every answer
must have a documented status code, content type, headers and body schema. A failure is
either a wrong document or a server bug: the report says which request shows it.

The server runs in a thread with its own event loop, on 127.0.0.1 and a free port, so the
fuzzer's blocking HTTP client never meets pytest-aiohttp's loop; every request goes through
a session that refuses any other address. Event streams are documented but not fuzzed: the
whole-server stream never ends.

FUZZ_EXAMPLES (default 30) sets the examples per operation and generation mode;
FUZZ_RANDOM=1 explores new examples instead of the same derandomized ones every run.
"""

from __future__ import annotations

import asyncio
import copy
import importlib
import io
import json
import os
import pkgutil
import tempfile
import threading
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import hypothesis
import pytest
import requests
import schemathesis
from aiohttp import web
from doubles import ScriptedEngine, hosted
from helpers import wav_tone as tone
from hypothesis import HealthCheck, Phase, given
from hypothesis import strategies as st
from openapi_spec_validator import validate as validate_spec
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Ok

import chatterbox_status.api
from chatterbox_status import __version__
from chatterbox_status.api import docs
from chatterbox_status.api.openapi import UndocumentedRoute, all_paths, document
from chatterbox_status.app import create_app
from chatterbox_status.config import Settings
from chatterbox_status.schemas.long_text import BulkRequest, UpdateRequest
from chatterbox_status.schemas.speech import LongTextRequest, SpeechRequest
from chatterbox_status.state import CORE

API_KEY = "openapi-test-key"
FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "30"))
FUZZ_RANDOM = os.environ.get("FUZZ_RANDOM", "") not in ("", "0")
SEEDED_VOICE = "fuzz-voice"
# The live server's engine fails on a chunk with this word, so failures can be checked too.
FAILING_WORD = "Kaboom"
HTTP_METHODS = ("get", "put", "post", "delete", "patch", "options", "head", "trace")


# -- building apps -----------------------------------------------------------------------


def build_app(settings: Settings, engine=None, every_module: bool = False) -> web.Application:
    """create_app, plus the docs route while app.py does not wire it yet; with every_module,
    the routes of every module in chatterbox_status.api, wired or not."""
    app = create_app(settings, hosted(engine if engine is not None else ScriptedEngine()))
    modules = [docs]
    if every_module:
        for info in pkgutil.iter_modules(chatterbox_status.api.__path__):
            module = importlib.import_module(f"chatterbox_status.api.{info.name}")
            if isinstance(getattr(module, "routes", None), web.RouteTableDef):
                modules.append(module)
    wired = {route.handler for route in app.router.routes()}
    for module in modules:
        missing = [d for d in module.routes if isinstance(d, web.RouteDef) and d.handler not in wired]
        app.router.add_routes(missing)
        wired.update(d.handler for d in missing)
    return app


def served_routes(app: web.Application) -> set[tuple[str, str]]:
    """(METHOD, path) of every route the router holds, except HEAD (aiohttp adds it to GET)."""
    return {(route.method, route.resource.canonical) for route in app.router.routes() if route.method != "HEAD"}


def settings_for(tmp: Path, **overrides) -> Settings:
    return Settings(**{"voice_library_dir": str(tmp / "voices"), "enable_memory_monitoring": True, **overrides})


def operations(doc: dict):
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                yield method.upper(), path, operation


# -- the document covers the app -----------------------------------------------------------


@pytest.mark.parametrize("every_module", [False, True], ids=["as-built", "every-api-module"])
def test_every_route_is_documented(tmp_path, every_module):
    app = build_app(settings_for(tmp_path), every_module=every_module)
    doc = document(app)
    documented = set(all_paths(doc))
    served = served_routes(app)
    assert served - documented == set(), "routes without documentation"
    assert documented - served == set(), "documented operations the app does not serve"


def test_a_route_without_documentation_cannot_be_served_undocumented(tmp_path):
    app = build_app(settings_for(tmp_path))

    async def undocumented(request: web.Request) -> web.Response:
        return web.json_response({})

    app.router.add_get("/undocumented", undocumented)
    with pytest.raises(UndocumentedRoute, match="/undocumented"):
        document(app)


def _resolve(doc: dict, schema: dict) -> dict:
    prefix = "#/components/schemas/"
    while "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].removeprefix(prefix)]
    return schema


@pytest.mark.parametrize(
    "method, path, model",
    [
        ("POST", "/audio/speech/long", LongTextRequest),
        ("POST", "/v1/audio/speech", SpeechRequest),
        ("PATCH", "/audio/speech/long/{job_id}", UpdateRequest),
        ("POST", "/audio/speech/long/bulk", BulkRequest),
    ],
)
async def test_request_schemas_list_every_field_the_route_accepts(aiohttp_client, tmp_path, method, path, model):
    """What the route parses is what /openapi.json says, field for field, with the same bounds."""
    client = await aiohttp_client(build_app(settings_for(tmp_path)))
    doc = await (await client.get("/openapi.json")).json()
    body = doc["paths"][path][method.lower()]["requestBody"]["content"]["application/json"]["schema"]
    schema = _resolve(doc, body)
    assert set(schema["properties"]) == set(model.model_fields)
    assert set(schema.get("required", [])) == {name for name, field in model.model_fields.items() if field.is_required()}
    own = model.model_json_schema()["properties"]
    for name, prop in own.items():
        for bound in ("minimum", "maximum", "exclusiveMinimum", "enum"):
            if bound in prop:
                assert schema["properties"][name][bound] == prop[bound], (name, bound)


def test_aliases_repeat_their_operation(tmp_path):
    doc = document(build_app(settings_for(tmp_path)))
    by_id = {op["operationId"]: (m, p, op) for m, p, op in operations(doc)}
    assert len(by_id) == len(list(operations(doc))), "operationIds are unique"
    aliases = [(m, p, op) for m, p, op in operations(doc) if "x-alias-of" in op]
    assert {p for _, p, _ in aliases} >= {"/v1/status", "/processing", "/progress", "/stats", "/tts", "/events"}
    for method, path, op in aliases:
        original = doc["paths"][op["x-alias-of"]][method.lower()]
        assert "x-alias-of" not in original
        assert path in original["x-aliases"]
        assert op["responses"] == original["responses"]
        assert op.get("requestBody") == original.get("requestBody")
        assert _parameter_names(op) == _parameter_names(original)


def _parameter_names(operation: dict) -> list[tuple[str, str]]:
    return [(p["name"], p["in"]) for p in operation.get("parameters", [])]


def test_document_header_and_security(tmp_path):
    doc = document(build_app(settings_for(tmp_path)))
    assert doc["openapi"].startswith("3.1")
    assert doc["info"]["version"] == __version__
    bearer = doc["components"]["securitySchemes"]["bearerAuth"]
    assert (bearer["type"], bearer["scheme"]) == ("http", "bearer")
    assert {} in doc["security"], "without API_KEY the bearer scheme is optional"
    assert not any("401" in op["responses"] for _, _, op in operations(doc))


def test_document_with_an_api_key(tmp_path):
    doc = document(build_app(settings_for(tmp_path, api_key=API_KEY)))
    assert {} not in doc["security"]
    for method, path, op in operations(doc):
        if path in ("/health", "/v1/health", "/ping", "/v1/ping", "/", "/web/{name}"):
            assert op["security"] == [{}] and "401" not in op["responses"], (method, path)
        else:
            assert op["responses"]["401"] == {"$ref": "#/components/responses/Unauthorized"}, (method, path)


def test_documented_bounds(tmp_path):
    doc = document(build_app(settings_for(tmp_path, max_total_length=321)))

    def params(path: str, method: str = "get") -> dict:
        return {p["name"]: p for p in doc["paths"][path][method]["parameters"]}

    status = params("/status")
    assert status["history_limit"]["schema"] == {"type": "integer", "minimum": 1, "maximum": 20, "default": 5}
    for name in ("include_memory", "include_history", "include_stats"):
        assert status[name]["schema"]["type"] == "boolean"
    assert params("/status/history")["limit"]["schema"]["maximum"] == 50
    assert params("/status/history/clear", "post")["confirm"]["schema"]["type"] == "boolean"
    assert {"request_id", "last_event_id", "Last-Event-ID"} <= set(params("/status/stream"))
    speech = doc["components"]["schemas"]["SpeechRequest"]
    assert speech["properties"]["input"]["maxLength"] == 321
    assert speech["properties"]["speed"]["minimum"] == 0.25 and speech["properties"]["speed"]["maximum"] == 4.0
    assert set(speech["properties"]["response_format"]["anyOf"][0]["enum"]) == {"wav", "pcm", "mp3", "opus", "aac", "flac"}
    content = doc["paths"]["/v1/audio/speech"]["post"]["responses"]["200"]["content"]
    assert {"audio/wav", "audio/mpeg", "audio/ogg", "audio/aac", "audio/flac", "audio/pcm", "text/event-stream"} <= set(content)
    assert "multipart/form-data" in doc["paths"]["/voices"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in doc["paths"]["/v1/audio/speech/upload"]["post"]["requestBody"]["content"]
    # A fixed path registered first takes these names: /voices/default is not a voice.
    voice = {p["name"]: p for p in doc["paths"]["/voices/{voice_name}"]["get"]["parameters"]}["voice_name"]
    assert set(voice["schema"]["not"]["enum"]) == {"default", "all-names"}


# -- the document is valid OpenAPI ------------------------------------------------------------


@pytest.mark.parametrize("api_key", ["", API_KEY], ids=["open", "api-key"])
def test_document_is_valid_openapi(tmp_path, api_key):
    doc = document(build_app(settings_for(tmp_path, api_key=api_key), every_module=True))
    validate_spec(copy.deepcopy(doc))
    schema = schemathesis.openapi.from_dict(copy.deepcopy(doc))
    problems = [str(result.err()) for result in schema.get_all_operations() if not isinstance(result, Ok)]
    assert problems == []
    assert len(list(schema.get_all_operations())) == len(list(all_paths(doc)))


# -- the route ----------------------------------------------------------------------------------


async def test_openapi_route_serves_the_document_once_per_app(aiohttp_client, tmp_path):
    app = build_app(settings_for(tmp_path))
    client = await aiohttp_client(app)
    first = await client.get("/openapi.json")
    assert first.status == 200
    assert first.content_type == "application/json"
    body = await first.json()
    assert body == json.loads(json.dumps(document(app)))
    again = await client.get("/v1/openapi.json")
    assert await again.read() == await first.read()
    assert docs._documents[app] is docs._documents[app]


async def test_protected_server_answers_as_documented(aiohttp_client, tmp_path):
    app = build_app(settings_for(tmp_path, api_key=API_KEY))
    client = await aiohttp_client(app)
    loaded = await client.get("/openapi.json", headers={"Authorization": f"Bearer {API_KEY}"})
    schema = schemathesis.openapi.from_dict(await loaded.json())
    refused = await client.get("/status")
    assert refused.status == 401
    body = await refused.json()
    schemas = schema.raw_schema["components"]["schemas"]
    assert set(body) == set(schemas["Error"]["required"]) and set(body["error"]) == set(schemas["ErrorDetail"]["required"])
    assert (await client.get("/ping")).status == 200


# Bodies the fuzzer found to crash form parsing (a 500): each must be a 400 in the error shape.
MALFORMED_FORMS = {
    "part header with a control character": (
        "multipart/form-data; boundary=B",
        b'--B\r\nContent-Disposition: form-data; name="a\x1db"\r\n\r\nx\r\n--B--\r\n',
    ),
    "multipart without a boundary": ("multipart/form-data", b""),
    "urlencoded, not UTF-8": ("application/x-www-form-urlencoded", b"input=\xff\xfe"),
    "urlencoded, unknown charset": ("application/x-www-form-urlencoded; charset=no-such-charset", b"input=a"),
}
FORM_ROUTES = [
    ("POST", "/v1/audio/speech/upload"),
    ("POST", "/voices"),
    ("POST", "/voices/default"),
    ("PUT", f"/voices/{SEEDED_VOICE}"),
    ("POST", f"/voices/{SEEDED_VOICE}/aliases"),
]


@pytest.mark.parametrize("method, path", FORM_ROUTES, ids=[f"{m} {p}" for m, p in FORM_ROUTES])
@pytest.mark.parametrize("content_type, body", MALFORMED_FORMS.values(), ids=list(MALFORMED_FORMS))
async def test_malformed_form_bodies_are_a_400(aiohttp_client, tmp_path, method, path, content_type, body):
    client = await aiohttp_client(build_app(settings_for(tmp_path), ScriptedEngine(cloning=True)))
    await asyncio.wait_for(client.server.app[CORE].worker.wait_loaded(), 30)
    seeded = await client.post(
        "/voices", data={"voice_name": SEEDED_VOICE, "voice_file": io.BytesIO(wav_tone())}
    )
    assert seeded.status == 201, await seeded.text()
    response = await client.request(method, path, data=body, headers={"Content-Type": content_type})
    assert response.status == 400, await response.text()
    assert set((await response.json())["error"]) == {"message", "type", "param", "code"}


# -- fuzzing against a live server --------------------------------------------------------------


class LiveServer:
    """The app on 127.0.0.1 in a thread of its own, with its own event loop."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.loop = asyncio.new_event_loop()
        self.started = threading.Event()
        self.error: BaseException | None = None
        self.port = 0
        self.thread = threading.Thread(target=self._run, name="openapi-live-server", daemon=True)

    def start(self) -> LiveServer:
        self.thread.start()
        if not self.started.wait(30) or self.error is not None:
            raise RuntimeError(f"the live server did not start: {self.error!r}")
        self.call(self.app[CORE].worker.wait_loaded(), timeout=60)
        return self

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def call(self, coroutine, timeout: float = 30):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(60)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        runner = web.AppRunner(self.app, handle_signals=False)
        try:
            self.loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, "127.0.0.1", 0)
            self.loop.run_until_complete(site.start())
            self.port = runner.addresses[0][1]
        except Exception as exc:  # reported by start()
            self.error = exc
            self.started.set()
            return
        self.started.set()
        try:
            self.loop.run_forever()
        finally:
            self.loop.run_until_complete(runner.cleanup())
            self.loop.close()


class LocalOnlySession(requests.Session):
    """Sends requests to the live server and nowhere else: no proxies, no redirects away."""

    def __init__(self, base_url: str) -> None:
        super().__init__()
        self.trust_env = False
        self.max_redirects = 0
        parts = urlsplit(base_url)
        self.allowed = (parts.scheme, parts.hostname, parts.port)

    def request(self, method, url, *args, **kwargs):
        parts = urlsplit(url)
        if (parts.scheme, parts.hostname, parts.port) != self.allowed:
            raise AssertionError(f"the fuzzer tried to reach {url!r}; only {self.allowed} is allowed")
        kwargs["allow_redirects"] = False
        kwargs["proxies"] = {}
        return super().request(method, url, *args, **kwargs)


def wav_tone() -> bytes:
    return tone(seconds=1.5, rate=16_000)


FUZZ_SETTINGS = {
    # A short input limit keeps generated speech short; the document states the same limit.
    "max_total_length": 300,
    "max_chunk_length": 100,
    "shutdown_timeout": 2.0,
    "history_size": 20,
}


def _fuzz_targets() -> list[tuple[str, str]]:
    """The operations to fuzz: one per handler and method (aliases repeat it), event streams aside."""
    with tempfile.TemporaryDirectory() as tmp:
        doc = document(build_app(settings_for(Path(tmp), **FUZZ_SETTINGS)))
    targets = []
    for method, path, op in operations(doc):
        content = op["responses"].get("200", {}).get("content", {})
        if "x-alias-of" in op or list(content) == ["text/event-stream"]:
            continue
        targets.append((method, path))
    return targets


FUZZ_TARGETS = _fuzz_targets()


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("openapi-fuzz")
    engine = ScriptedEngine(cloning=True, fail_on=FAILING_WORD)
    app = build_app(settings_for(tmp, **FUZZ_SETTINGS), engine)
    server = LiveServer(app).start()
    session = LocalOnlySession(server.base_url)
    try:
        yield server, session
    finally:
        session.close()
        server.stop()


@pytest.fixture(scope="module")
def live_schema(live):
    server, _ = live
    return schemathesis.openapi.from_url(f"{server.base_url}/openapi.json", timeout=30)


def ensure_voice(server: LiveServer, session: LocalOnlySession) -> None:
    if session.get(f"{server.base_url}/voices/{SEEDED_VOICE}", timeout=30).status_code == 200:
        return
    response = session.post(
        f"{server.base_url}/voices",
        files={"voice_file": ("seed.wav", wav_tone(), "audio/wav")},
        data={"voice_name": SEEDED_VOICE},
        timeout=30,
    )
    assert response.status_code == 201, response.text


def finished_request(server: LiveServer, session: LocalOnlySession) -> str:
    request_id = f"fuzz-{uuid.uuid4().hex[:12]}"
    response = session.post(
        f"{server.base_url}/v1/audio/speech",
        json={"input": "A request to look up."},
        headers={"X-Request-ID": request_id},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return request_id


POSITIVE_CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
NEGATIVE_CHECKS = [*POSITIVE_CHECKS, negative_data_rejection]


@pytest.mark.parametrize("method, path", FUZZ_TARGETS, ids=[f"{m} {p}" for m, p in FUZZ_TARGETS])
def test_fuzz(live, live_schema, method, path):
    server, session = live
    operation = live_schema[path][method]
    fixed: dict[str, str] = {}
    if "{voice_name}" in path:
        fixed["voice_name"] = SEEDED_VOICE
    if "{request_id}" in path:
        fixed["request_id"] = finished_request(server, session)
    # Generated path parameters name nothing that exists, so half the cases use real ones.
    positive = operation.as_strategy(GenerationMode.POSITIVE)
    if fixed:
        positive = st.one_of(positive, operation.as_strategy(GenerationMode.POSITIVE, path_parameters=fixed))
    # Invalid data goes everywhere but the path: a path parameter has no invalid values here,
    # only names that are not there (a 404 the positive cases already cover).
    negative = operation.as_strategy(GenerationMode.NEGATIVE, path_parameters=fixed or None)
    failures = []
    for mode, strategy, checks in (
        ("positive", positive, POSITIVE_CHECKS),
        ("negative", negative, NEGATIVE_CHECKS),
    ):
        try:
            _run_cases(server, session, strategy, checks, voice="{voice_name}" in path)
        except hypothesis.errors.Unsatisfiable:
            if mode == "positive":
                raise
        except (Exception, FailureGroup) as exc:  # every mode runs; all failures are reported together
            failures.append(f"[{mode} data] {exc}")
    assert not failures, "\n\n".join(failures)


def _run_cases(server, session, strategy, checks, voice: bool) -> None:
    @hypothesis.settings(
        max_examples=FUZZ_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=not FUZZ_RANDOM,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        print_blob=False,
    )
    @given(case=strategy)
    def run(case):
        if voice:
            ensure_voice(server, session)
        response = case.call(base_url=server.base_url, session=session, timeout=30)
        case.validate_response(response, checks=checks)

    run()


def test_event_streams_match_the_document(live, live_schema):
    """The event streams are not fuzzed, but what they send must match the document too."""
    server, session = live
    operation = live_schema["/status/stream"]["GET"]
    # The whole-server stream never ends: read it for a second.
    case = operation.Case()
    response = case.call(base_url=server.base_url, session=session, timeout=1)
    case.validate_response(response, checks=POSITIVE_CHECKS)
    assert b"event: snapshot" in response.content
    # Narrowed to one request, it ends after that request's terminal event.
    request_id = f"stream-{uuid.uuid4().hex[:12]}"
    posted: list[int] = []

    def post() -> None:
        with LocalOnlySession(server.base_url) as poster:
            answer = poster.post(
                f"{server.base_url}/v1/audio/speech",
                json={"input": "Watch this one. It has two sentences.", "response_format": "mp3"},
                headers={"X-Request-ID": request_id},
                timeout=30,
            )
            posted.append(answer.status_code)

    poster = threading.Timer(0.3, post)
    poster.start()
    try:
        case = operation.Case(query={"request_id": request_id})
        response = case.call(base_url=server.base_url, session=session, timeout=30)
    finally:
        poster.join(30)
    case.validate_response(response, checks=POSITIVE_CHECKS)
    assert posted == [200]
    assert b'"status": "completed"' in response.content
    # A bad Last-Event-ID is a plain JSON 400, as documented.
    case = operation.Case(query={"last_event_id": "x"})
    case.validate_response(case.call(base_url=server.base_url, session=session, timeout=5), checks=POSITIVE_CHECKS)


@pytest.mark.parametrize("stream_format", [None, "sse"], ids=["whole-file", "sse"])
def test_generation_failures_match_the_document(live, live_schema, stream_format):
    """A failed generation is a documented 500, or an `error` event in a speech event stream."""
    server, session = live
    body = {"input": f"This one goes {FAILING_WORD}.", **({"stream_format": stream_format} if stream_format else {})}
    case = live_schema["/v1/audio/speech"]["POST"].Case(body=body, media_type="application/json")
    response = case.call(base_url=server.base_url, session=session, timeout=30)
    case.validate_response(response, checks=[c for c in POSITIVE_CHECKS if c is not not_a_server_error])
    if stream_format is None:
        assert response.status_code == 500
    else:
        assert response.status_code == 200 and b"event: error" in response.content
