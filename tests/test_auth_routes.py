"""With API_KEY set, every registered route and alias refuses a request without the key.

The routes come from the app's own router, so a route or alias added later is guarded by
this test the day it is added. The few open paths are written out here, not read from the
server, so widening them is a change this test notices.
"""

from __future__ import annotations

import re

from conftest import assert_error_shape

KEY = "walk-every-route-key-1"
# Liveness checks and the dashboard page with its static files: they carry no data.
OPEN_PATHS = {"/health", "/v1/health", "/ping", "/v1/ping", "/"}
OPEN_PREFIX = "/web/"
# The aliases of the event stream, the path that once slipped through, must be among the walked.
MUST_BE_WALKED = {"/status/stream", "/v1/status/stream", "/events", "/v1/audio/speech", "/status/requests/{request_id}"}


def is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIX)


def concrete(canonical: str) -> str:
    """The route's path with every {parameter} filled with a harmless value."""
    return re.sub(r"\{[^}]+\}", "dummy-value-1", canonical)


async def test_every_route_but_the_open_ones_answers_401_without_the_key(make_client, scripted):
    client = await make_client(engine=scripted, api_key=KEY)
    routes = sorted({(route.method, route.resource.canonical) for route in client.server.app.router.routes()})
    walked = {canonical for _, canonical in routes}
    assert MUST_BE_WALKED <= walked
    assert OPEN_PATHS <= walked  # the open set names real routes
    guarded = [(method, canonical) for method, canonical in routes if not is_open(concrete(canonical))]
    assert len(guarded) > 150  # every alias of every endpoint, with its HEAD

    let_through = []
    for method, canonical in guarded:
        response = await client.request(method, concrete(canonical))
        if response.status != 401:
            let_through.append((method, canonical, response.status))
            continue
        assert response.headers["WWW-Authenticate"] == "Bearer", (method, canonical)
        if method != "HEAD":
            body = await response.json()
            assert_error_shape(body)
            assert body["error"]["code"] == "missing_api_key", (method, canonical)
    assert let_through == []

    for path in sorted(OPEN_PATHS) + ["/web/app.js"]:
        response = await client.get(path)
        assert response.status == 200, path


async def test_the_key_is_found_in_each_way_a_client_may_send_it(make_client, scripted):
    client = await make_client(engine=scripted, api_key=KEY)
    accepted = [
        {"Authorization": f"Bearer {KEY}"},
        {"Authorization": f"bearer {KEY}"},  # the scheme is case-insensitive (RFC 7235)
        {"Authorization": f"Bearer  {KEY} "},  # spaces around the token
        # Another scheme (a proxy's Basic credentials) or an empty Bearer: the key comes from X-API-Key.
        {"Authorization": "Basic dXNlcjpwYXNz", "X-API-Key": KEY},
        {"Authorization": "Bearer ", "X-API-Key": KEY},
        {"X-API-Key": KEY},
    ]
    for headers in accepted:
        assert (await client.get("/status", headers=headers)).status == 200, headers
    assert (await client.get(f"/status?api_key={KEY}")).status == 200
    refused = await client.get("/status", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert refused.status == 401
    assert (await refused.json())["error"]["code"] == "missing_api_key"
