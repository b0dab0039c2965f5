"""CORS: local origins by default, CORS_ORIGINS to change it, on every kind of response."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize(
    "setting,origin,allowed",
    [
        ("", "http://localhost:3000", "http://localhost:3000"),
        ("", "http://127.0.0.1:5173", "http://127.0.0.1:5173"),
        ("", "http://localhost", "http://localhost"),
        ("", "https://evil.example", None),
        ("", "http://localhost.evil.example", None),
        ("https://app.example, https://other.example", "https://app.example", "https://app.example"),
        ("https://app.example", "http://localhost:3000", None),
        ("https://app.example/", "https://app.example", "https://app.example"),  # as copied from an address bar
        ("*", "https://anything.example", "*"),
    ],
)
async def test_origin_policy(make_client, scripted, setting, origin, allowed):
    client = await make_client(engine=scripted, cors_origins=setting)
    response = await client.get("/status/progress", headers={"Origin": origin})
    assert response.headers.get("Access-Control-Allow-Origin") == allowed
    assert "Origin" in response.headers.getall("Vary")


async def test_errors_and_streams_carry_cors_headers(make_client, scripted):
    client = await make_client(engine=scripted)
    origin = {"Origin": "http://localhost:3000"}
    error = await client.get("/no/such/route", headers=origin)
    assert error.status == 404
    assert error.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
    bad = await client.post("/v1/audio/speech", json={"input": ""}, headers=origin)
    assert bad.status == 400 and bad.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
    stream = await client.get("/status/stream", headers=origin)
    assert stream.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
    stream.close()
    speech = await client.post("/v1/audio/speech/stream", json={"input": "Streamed."}, headers=origin)
    assert speech.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
    assert "X-Request-ID" in speech.headers["Access-Control-Expose-Headers"]
    await speech.read()


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "GET"])
async def test_preflight_allows_what_a_frontend_sends(make_client, scripted, method):
    client = await make_client(engine=scripted)
    response = await client.options(
        "/v1/audio/speech",
        headers={
            "Origin": "http://localhost:3000",
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "content-type, authorization",
        },
    )
    assert response.status == 204
    assert response.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
    assert method in response.headers["Access-Control-Allow-Methods"]
    assert response.headers["Access-Control-Allow-Headers"] == "content-type, authorization"


async def test_preflight_from_a_foreign_origin_gets_no_permission(make_client, scripted):
    client = await make_client(engine=scripted)
    response = await client.options(
        "/v1/audio/speech", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    )
    assert "Access-Control-Allow-Origin" not in response.headers
    assert "Access-Control-Allow-Methods" not in response.headers


async def test_preflight_needs_no_api_key(make_client, scripted):
    client = await make_client(engine=scripted, api_key="k" * 20)
    response = await client.options(
        "/status", headers={"Origin": "http://localhost:3000", "Access-Control-Request-Method": "GET"}
    )
    assert response.status == 204
    denied = await client.get("/status", headers={"Origin": "http://localhost:3000"})
    assert denied.status == 401 and denied.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
