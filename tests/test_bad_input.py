"""The bad-input matrix: every bad request gets an honest status code and the error shape.

DESIGN.md, "Errors": every error is ``{"error": {"message", "type", "param", "code"}}``,
400 for bad input (never 422), and bad input never reaches the engine nor the statistics.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from conftest import assert_error_shape, core_of, decode_wav

from chatterbox_status.engine_pool import WARM_UP_TEXT

MAX_TOTAL_LENGTH = 50
MAX_BODY_SIZE = 2048
SPEECH = "/v1/audio/speech"
GOOD_TEXT = "Hello there."


async def assert_error(response, status: int, param=None) -> dict:
    text = await response.text()
    assert response.status == status, (response.status, text)
    assert response.content_type == "application/json", text
    body = json.loads(text)
    assert_error_shape(body, param)
    return body


def spoken(engine) -> list[str]:
    """What the scripted engine was asked to speak, besides the worker's warm-up."""
    return [text for text in engine.calls if text != WARM_UP_TEXT]


@pytest.fixture
def engine(scripted):
    yield scripted
    scripted.load_gate.set()
    scripted.release(10_000)


async def limited_client(make_client, engine=None):
    return await make_client(engine=engine, max_total_length=MAX_TOTAL_LENGTH, max_body_size=MAX_BODY_SIZE)


def raw(body: bytes | str, content_type: str = "application/json") -> dict:
    return {"data": body.encode() if isinstance(body, str) else body, "headers": {"Content-Type": content_type}}


def fields(**extra) -> dict:
    return {"json": {"input": GOOD_TEXT, **extra}}


# (post kwargs, status, param naming the field or None)
SPEECH_CASES = [
    pytest.param(raw('{"input": "Hello"'), 400, None, id="malformed-json"),
    pytest.param(raw(""), 400, None, id="empty-body"),
    pytest.param(raw(b'{"input": "caf\xe9"}'), 400, None, id="invalid-utf8"),
    pytest.param(raw("[" * 1020 + "]" * 1020), 400, None, id="deeply-nested-json"),
    pytest.param(raw('["Hello"]'), 400, None, id="json-list"),
    pytest.param(raw('"Hello"'), 400, None, id="json-string"),
    pytest.param(raw("42"), 400, None, id="json-number"),
    pytest.param(raw("null"), 400, None, id="json-null"),
    pytest.param(raw(json.dumps({"input": GOOD_TEXT}), "text/plain"), 415, None, id="text-plain"),
    pytest.param(raw("input=Hello+there", "application/x-www-form-urlencoded"), 415, None, id="form-encoded"),
    pytest.param({"json": {"voice": "alloy"}}, 400, "input", id="missing-input"),
    pytest.param({"json": {"input": ""}}, 400, "input", id="empty-input"),
    pytest.param({"json": {"input": " \t\n\r  \n"}}, 400, "input", id="whitespace-input"),
    pytest.param({"json": {"input": "\x00\x07\x1b \u200b\ufeff\n"}}, 400, "input", id="control-char-input"),
    pytest.param({"json": {"input": "x" * (MAX_TOTAL_LENGTH + 1)}}, 400, "input", id="input-too-long"),
    pytest.param(fields(exaggeration=0.1), 400, "exaggeration", id="exaggeration-low"),
    pytest.param(fields(exaggeration=2.5), 400, "exaggeration", id="exaggeration-high"),
    pytest.param(fields(cfg_weight=-0.1), 400, "cfg_weight", id="cfg-weight-low"),
    pytest.param(fields(cfg_weight=1.5), 400, "cfg_weight", id="cfg-weight-high"),
    pytest.param(fields(temperature=0.01), 400, "temperature", id="temperature-low"),
    pytest.param(fields(temperature=6), 400, "temperature", id="temperature-high"),
    pytest.param(fields(speed=0.1), 400, "speed", id="speed-low"),
    pytest.param(fields(speed=5), 400, "speed", id="speed-high"),
    pytest.param({"json": {"input": 123}}, 400, "input", id="input-number"),
    pytest.param({"json": {"input": ["Hello"]}}, 400, "input", id="input-list"),
    pytest.param(fields(exaggeration="0.5"), 400, "exaggeration", id="exaggeration-string"),
    pytest.param(fields(exaggeration=True), 400, "exaggeration", id="exaggeration-bool"),
    pytest.param(fields(seed=1.5), 400, "seed", id="seed-float"),
    pytest.param(fields(seed=-1), 400, "seed", id="seed-negative"),
    pytest.param(fields(seed="7"), 400, "seed", id="seed-string"),
    pytest.param(fields(voice=None), 400, "voice", id="voice-null"),
    pytest.param(fields(voice=""), 400, "voice", id="voice-empty"),
    pytest.param(fields(stream_format="video"), 400, "stream_format", id="stream-format-video"),
    pytest.param(raw('{"input": "Hello", "exaggeration": NaN}'), 400, None, id="nan-literal"),
    pytest.param(raw('{"input": "Hello", "temperature": Infinity}'), 400, None, id="infinity-literal"),
    pytest.param(raw('{"input": "Hello", "cfg_weight": -Infinity}'), 400, None, id="minus-infinity-literal"),
    pytest.param(raw('{"input": "Hello", "temperature": 1e999}'), 400, "temperature", id="overflowing-number"),
    pytest.param(fields(voice="nobody"), 404, "voice", id="unknown-voice"),
    pytest.param(fields(response_format="avi"), 400, "response_format", id="unsupported-format"),
    pytest.param({**fields(), "headers": {"X-Request-ID": "abc"}}, 400, "X-Request-ID", id="request-id-too-short"),
    pytest.param(
        {**fields(), "headers": {"X-Request-ID": "bad id with spaces!"}}, 400, "X-Request-ID", id="request-id-bad-chars"
    ),
    pytest.param(
        {**fields(), "headers": {"X-Request-ID": "-starts-with-dash"}}, 400, "X-Request-ID", id="request-id-leading-dash"
    ),
    pytest.param(
        {**fields(), "headers": {"X-Request-ID": "r" * 65}}, 400, "X-Request-ID", id="request-id-too-long"
    ),
    pytest.param({"json": {"input": "x" * 4096}}, 413, None, id="body-too-large"),
]


@pytest.mark.parametrize("request_kwargs, status, param", SPEECH_CASES)
async def test_bad_speech_request_is_rejected_with_the_error_shape(make_client, engine, request_kwargs, status, param):
    client = await limited_client(make_client, engine)
    response = await client.post(SPEECH, **request_kwargs)
    await assert_error(response, status, param)

    # Rejected before the queue: the engine never saw it and no statistic moved.
    assert spoken(engine) == []
    stats = await (await client.get("/status/statistics")).json()
    assert (stats["total_requests"], stats["error_requests"]) == (0, 0)
    history = await (await client.get("/status/history")).json()
    assert history["request_history"] == []


async def test_duplicate_request_id_of_a_finished_request_is_409(make_client, engine):
    client = await limited_client(make_client, engine)
    first = await client.post(SPEECH, json={"input": GOOD_TEXT}, headers={"X-Request-ID": "taken-id-0001"})
    assert first.status == 200
    again = await client.post(SPEECH, json={"input": "Another text."}, headers={"X-Request-ID": "taken-id-0001"})
    await assert_error(again, 409, "X-Request-ID")
    assert spoken(engine) == [GOOD_TEXT]
    history = (await (await client.get("/status/history")).json())["request_history"]
    assert [(r["request_id"], r["text_preview"]) for r in history] == [("taken-id-0001", GOOD_TEXT)]


async def test_duplicate_request_id_of_a_request_in_flight_is_409(make_client, engine):
    client = await limited_client(make_client, engine)
    engine.hold()
    first = asyncio.create_task(
        client.post(SPEECH, json={"input": GOOD_TEXT}, headers={"X-Request-ID": "in-flight-0001"})
    )
    assert await asyncio.to_thread(engine.wait_started) == GOOD_TEXT
    again = await client.post(SPEECH, json={"input": "Another text."}, headers={"X-Request-ID": "in-flight-0001"})
    await assert_error(again, 409, "X-Request-ID")
    engine.release()
    assert (await first).status == 200
    assert spoken(engine) == [GOOD_TEXT]
    stats = await (await client.get("/status/statistics")).json()
    assert (stats["total_requests"], stats["completed_requests"]) == (1, 1)


@pytest.mark.parametrize(
    "path, param",
    [
        ("/status?history_limit=0", "history_limit"),
        ("/status?history_limit=21", "history_limit"),
        ("/status?history_limit=abc", "history_limit"),
        ("/status?history_limit=2.5", "history_limit"),
        ("/status?include_memory=maybe", "include_memory"),
        ("/status?include_history=", "include_history"),
        ("/status?include_stats=2", "include_stats"),
        ("/status/history?limit=51", "limit"),
        ("/status/history?limit=0", "limit"),
        ("/status/history?limit=-3", "limit"),
        ("/status/statistics?include_memory=maybe", "include_memory"),
        ("/v1/status/history?limit=x", "limit"),
    ],
)
async def test_bad_query_parameter_on_status_endpoints_is_400(make_client, engine, path, param):
    client = await make_client(engine=engine)
    await assert_error(await client.get(path), 400, param)


@pytest.mark.parametrize("method, path", [("GET", "/no/such/route"), ("POST", "/v1/audio/speak"), ("GET", "/status/nope")])
async def test_unknown_route_is_404_in_the_error_shape(make_client, engine, method, path):
    client = await make_client(engine=engine)
    await assert_error(await client.request(method, path), 404)


@pytest.mark.parametrize(
    "method, path, allowed",
    [("PUT", "/status", "GET"), ("GET", SPEECH, "POST"), ("DELETE", "/status/history", "GET"), ("GET", "/status/history/clear", "POST")],
)
async def test_wrong_method_is_405_with_allow_in_the_error_shape(make_client, engine, method, path, allowed):
    client = await make_client(engine=engine)
    response = await client.request(method, path)
    await assert_error(response, 405)
    assert allowed in [m.strip() for m in response.headers["Allow"].split(",")]


BAD_AMONG_GOOD = [
    raw('{"input": '),
    raw('["not", "an", "object"]'),
    raw(json.dumps({"input": "Plain text body."}), "text/plain"),
    {"json": {"input": "   "}},
    {"json": {"input": "y" * (MAX_TOTAL_LENGTH + 1)}},
    fields(exaggeration=3),
    fields(temperature="hot"),
    fields(seed=-5),
    raw('{"input": "Hello", "cfg_weight": NaN}'),
    fields(voice="nobody"),
    fields(response_format="avi"),
    {**fields(), "headers": {"X-Request-ID": "abc"}},
    {"json": {"input": "z" * 4096}},
]


@pytest.mark.parametrize("engine_kind", ["hibari", "scripted"])
async def test_bad_requests_between_good_ones_leave_no_trace(make_client, engine, engine_kind):
    client = await limited_client(make_client, engine if engine_kind == "scripted" else None)
    good_texts = [
        "Good morning.",
        "The weather is fine today.",
        "A".ljust(MAX_TOTAL_LENGTH - 1, "a") + ".",  # exactly at the limit: accepted
        "See you tomorrow.",
    ]
    good_ids = []
    bad = iter(BAD_AMONG_GOOD)
    for n, text in enumerate(good_texts):
        for request_kwargs in [next(bad, None) for _ in range(4)]:
            if request_kwargs is not None:
                response = await client.post(SPEECH, **request_kwargs)
                assert 400 <= response.status < 500, (request_kwargs, response.status)
                assert_error_shape(await response.json())
        response = await client.post(SPEECH, json={"input": text}, headers={"X-Request-ID": f"good-request-{n}"})
        assert response.status == 200, await response.text()
        assert decode_wav(await response.read())[2] > 0
        good_ids.append(response.headers["X-Request-ID"])
        if n == 0:  # reusing a finished request's id is refused too
            duplicate = await client.post(SPEECH, json={"input": "Twice."}, headers={"X-Request-ID": good_ids[0]})
            await assert_error(duplicate, 409, "X-Request-ID")
        await assert_error(await client.get("/status?history_limit=99"), 400, "history_limit")
    assert next(bad, None) is None

    stats = await (await client.get("/status/statistics")).json()
    assert stats["total_requests"] == stats["completed_requests"] == len(good_texts)
    assert stats["error_requests"] == 0
    assert stats["success_rate"] == 100.0
    assert stats["average_text_length"] == sum(map(len, good_texts)) / len(good_texts)
    history = (await (await client.get("/status/history")).json())["request_history"]
    assert [r["request_id"] for r in history] == good_ids[::-1]
    assert [r["text_preview"] for r in history] == good_texts[::-1]
    assert all(r["status"] == "completed" for r in history)
    if engine_kind == "scripted":
        assert spoken(engine) == good_texts
    else:
        assert core_of(client).engine.name == "hibari"


async def test_the_length_limit_counts_the_text_as_normalised(make_client, scripted):
    """'㎯ ' is 2 characters as sent and 7 once NFKC spells it out: the limit counts what
    the engine would speak, so 400 of them are refused under a 1000-character limit."""
    client = await make_client(engine=scripted, max_total_length=1000)
    resp = await client.post("/v1/audio/speech", json={"input": "\u33af " * 400})
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert (error["param"], error["code"]) == ("input", "input_too_long")
    assert "normalised" in error["message"]
    stats = await (await client.get("/status/statistics")).json()
    assert stats["total_requests"] == 0
    assert (await client.post("/v1/audio/speech", json={"input": "\u33af " * 100})).status == 200
