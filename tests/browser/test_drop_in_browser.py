"""A chatterbox-tts-api style browser client, on another origin, against a real server.

The page (tests/browser/drop_in_page/index.html, written for this test) is served by a
second aiohttp app on its own 127.0.0.1 port and is given the API endpoint
``http://127.0.0.1:PORT/v1``, as the old frontend's API endpoint setting would be. With the
default CORS setting (any http://127.0.0.1 port) it fetches /v1/health and
/v1/status/progress, follows /v1/status/stream with EventSource, posts the upload form
(input and session_id, as the frontend sends it), waits for its request's completed event,
plays the audio from a blob URL, and makes the frontend's preflighted JSON SSE call.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote, urlsplit

from aiohttp import web
from playwright.async_api import expect

from chatterbox_status.app import create_app
from chatterbox_status.config import Settings

from .dashboard_harness import PageLog

PAGE = Path(__file__).parent / "drop_in_page" / "index.html"
STEPS = ["health", "progress", "upload", "events", "audio", "speech-sse"]


def page_errors(log: PageLog) -> list[str]:
    # The page server has no favicon: Chromium's request for it fails, which is no fault.
    return [error for error in log.errors if "Failed to load resource" not in error]


def page_app(seen: list) -> web.Application:
    """Serves the client page, and nothing else, on an origin of its own."""

    async def index(request: web.Request) -> web.FileResponse:
        return web.FileResponse(PAGE, headers={"Cache-Control": "no-store"})

    app = web.Application()
    app.router.add_get("/", index)
    app.on_response_prepare.append(lambda request, response: _note(seen, request, response))
    return app


async def _note(seen: list, request: web.Request, response: web.StreamResponse) -> None:
    seen.append((request.method, request.path, response.status, request.headers.get("Origin")))


async def test_old_frontend_style_page_on_another_origin(serve, open_page, tmp_path):
    api_seen: list = []
    page_seen: list = []
    api_app = create_app(Settings(enable_memory_monitoring=True, voice_library_dir=str(tmp_path / "voices")))
    api_app.on_response_prepare.append(lambda request, response: _note(api_seen, request, response))
    api = await serve(api_app)  # default CORS_ORIGINS: any http://127.0.0.1 port
    pages = await serve(page_app(page_seen))
    page_origin = pages.url.rstrip("/")
    assert urlsplit(api.url).netloc != urlsplit(pages.url).netloc
    endpoint = f"{api.url}v1"  # the frontend's API endpoint setting: http://HOST:PORT/v1

    page, log = await open_page(f"{pages.url}?api={quote(endpoint, safe='')}", wait_live=False)
    summary = page.locator("#summary")
    await expect(summary).not_to_have_attribute("data-state", "running", timeout=60_000)
    report = await page.evaluate("window.report")
    assert await summary.get_attribute("data-state") == "done", report

    # The page reports success for each step, in order.
    assert report["order"] == STEPS, report
    for step in STEPS:
        await expect(page.locator(f'#steps li[data-step="{step}"]')).to_have_attribute("data-state", "ok")
    assert report["steps"]["health"]["detail"]["health"] == "healthy"
    assert report["steps"]["progress"]["detail"]["body"]["status"] == "idle"
    request_id = report["requestId"]
    statuses = report["statuses"]
    assert statuses[0] == "queued" and statuses[-1] == "completed" and "generating_audio" in statuses, statuses
    assert report["percents"] == sorted(report["percents"]) and report["percents"][-1] == 100, report["percents"]
    assert report["duration"] > 0.5, report["duration"]
    for snapshot in report["polled"]:  # progress polled while the request ran, if any came back busy
        assert "error" not in snapshot, snapshot
        assert isinstance(snapshot["status"], str) and isinstance(snapshot["progress_percentage"], (int, float))
        assert snapshot["request_id"] == request_id

    # The server saw those requests, from the page's origin, and tracked the request.
    record = api.core.tracker.find(request_id)
    assert record is not None and record.status == "completed"
    assert record.fields["text_length"] == len(
        "Hello from a page on another origin. It calls the server the way the old frontend did."
    )
    from_page = [(method, path, status) for method, path, status, origin in api_seen if origin == page_origin]
    assert ("GET", "/v1/health", 200) in from_page, api_seen
    assert ("GET", "/v1/status/progress", 200) in from_page, api_seen
    assert ("GET", "/v1/status/stream", 200) in from_page, api_seen
    assert ("POST", "/v1/audio/speech/upload", 200) in from_page, api_seen
    assert ("OPTIONS", "/v1/audio/speech", 204) in from_page, api_seen  # the JSON call's preflight
    assert ("POST", "/v1/audio/speech", 200) in from_page, api_seen
    assert not any(status >= 400 for _, _, status in from_page), from_page
    assert ("OPTIONS", "/v1/audio/speech/upload", 204) not in from_page  # a form post needs no preflight
    assert page_seen[0][:3] == ("GET", "/", 200)
    assert {path for _, path, _, _ in page_seen} <= {"/", "/favicon.ico"}, page_seen

    api_calls = [r for r in log.http() if r.url.startswith(api.url)]
    assert {urlsplit(r.url).path for r in api_calls} >= {
        "/v1/health", "/v1/status/progress", "/v1/status/stream", "/v1/audio/speech/upload", "/v1/audio/speech"
    }
    assert page_errors(log) == []
