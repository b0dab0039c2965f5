"""The dashboard in a real browser, against a real server on the embedded voice.

Every test records each request the page makes: live updates must come from the event
stream alone, with the panels fetched only when the stream starts and when a request
ends, never on a timer.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from urllib.parse import quote, urlsplit

import aiohttp
from aiohttp import web
from doubles import ScriptedEngine, ThreadHost
from playwright.async_api import Page, expect

from chatterbox_status.app import create_app
from chatterbox_status.config import Settings
from chatterbox_status.supervisor import engine_process

from .dashboard_harness import PageLog, dashboard_app, with_dashboard

expect.set_options(timeout=30_000)

SENTENCES = (
    "The morning train left the station on time. Passengers read their papers quietly. "
    "A child waved at the cows in the field. Then the rain began to fall."
)
LONG_TEXT = " ".join(
    [
        "The lighthouse keeper climbed the stairs every evening at dusk.",
        "He polished the great lens until it shone like a second moon.",
        "Ships passed in the night, and none of them ever knew his name.",
        "In winter the storms came early and stayed until the spring.",
        "He wrote letters to his sister, who lived far away in the city.",
    ]
    * 13
)[:4000]

# Endpoints of the status API: the page may fetch them only when the stream starts
# (a snapshot) and when a request ends, never on a timer.
STATUS_PATHS = ("status", "status/history", "status/statistics", "status/progress", "info", "health")

AUDIO_METADATA = """() => new Promise((resolve, reject) => {
  const audio = document.getElementById("player");
  if (audio.readyState >= 1) return resolve(audio.duration);
  audio.addEventListener("loadedmetadata", () => resolve(audio.duration), { once: true });
  audio.addEventListener("error", () => reject(new Error(audio.error?.message || "audio error")), { once: true });
})"""

def card(page: Page, request_id: str):
    return page.locator(f'#requests .request[data-request-id="{request_id}"]')


async def submit(page: Page, text: str) -> str:
    """Fill the text, press Synthesize; the id the page chose for the request."""
    await page.fill("#text", text)
    await page.click("#synthesize")
    request_id = await page.get_attribute("#form-status", "data-request-id")
    assert request_id and re.fullmatch(r"[A-Za-z0-9._-]{8,64}", request_id), request_id
    return request_id


async def cards_seen(page: Page, request_id: str) -> list[dict]:
    """Every distinct state the page showed for one request's card, in order."""
    return [entry for entry in await page.evaluate("window.__cards") if entry["id"] == request_id]


def distinct(values: list) -> list:
    out: list = []
    for value in values:
        if not out or out[-1] != value:
            out.append(value)
    return out


def page_errors(log: PageLog) -> list[str]:
    # Failed responses the tests provoke (409 for a cancelled request, 404 for a server
    # without a voice library) show as console errors; the tests check those statuses.
    return [error for error in log.errors if "Failed to load resource" not in error]


async def expect_audio(page: Page, request_id: str, response_format: str = "wav") -> float:
    result = page.locator("#result")
    await expect(result).to_be_visible()
    await expect(result).to_have_attribute("data-request-id", request_id)
    duration = await page.evaluate(AUDIO_METADATA)
    assert duration > 0.5, duration
    assert await page.evaluate("document.getElementById('player').play().then(() => true)") is True
    href = await page.get_attribute("#download", "href")
    assert href.startswith("blob:"), href
    async with page.expect_download() as started:
        await page.click("#download")
    download = await started.value
    assert download.suggested_filename == f"speech-{request_id}.{response_format}"
    data = Path(await download.path()).read_bytes()
    assert len(data) > 1000
    if response_format == "wav":
        assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    return duration


async def test_synthesize_with_live_progress_and_no_polling(serve, open_page):
    served = await serve(dashboard_app(max_chunk_length=60, sse_ping_interval=0.2))
    page, log = await open_page(served.url)

    await page.select_option("#format", "wav")
    await page.fill("#speed", "1.1")
    await page.fill("#temperature", "0.7")
    await page.fill("#seed", "7")
    request_id = await submit(page, SENTENCES)

    await expect(card(page, request_id)).to_have_attribute("data-status", "completed")
    await expect(page.locator("#form-status")).to_have_attribute("data-kind", "ok")
    await expect_audio(page, request_id)

    # What the page showed along the way came from the events: steps, chunks, percentages.
    seen = await cards_seen(page, request_id)
    statuses = distinct([entry["status"] for entry in seen])
    assert "generating_audio" in statuses and statuses[-1] == "completed", statuses
    assert set(statuses) <= {"queued", "initializing", "processing_text", "chunking", "generating_audio",
                             "concatenating", "finalizing", "completed"}, statuses
    chunks = [re.fullmatch(r"chunk (\d+)/(\d+)", entry["chunk"]) for entry in seen if entry["chunk"]]
    assert chunks and all(chunks), [entry["chunk"] for entry in seen]
    assert int(chunks[-1][2]) >= 2 and {int(m[1]) for m in chunks} >= {1, int(chunks[-1][2])}
    percents = [float(entry["percent"].rstrip("%")) for entry in seen if entry["percent"]]
    assert percents == sorted(percents), percents
    assert percents[-1] == 100.0 and any(0 < p < 100 for p in percents), percents
    assert any(entry["eta"] for entry in seen if entry["status"] == "generating_audio"), seen
    assert any(entry["step"].startswith("Generating audio for chunk") for entry in seen)
    # The form's own line follows the request too (a phone sees it without scrolling).
    lines = await page.evaluate("window.__formStatus")
    assert any(re.match(rf"Request {request_id}: generating audio · chunk \d+/\d+ · [\d.]+%$", line)
               for line in lines), lines
    assert lines[-1] == f"Request {request_id} completed."

    # The form's values reached the server.
    record = served.core.tracker.find(request_id)
    assert record.status == "completed"
    assert record.fields["parameters"]["speed"] == 1.1
    assert record.fields["parameters"]["temperature"] == 0.7
    assert record.fields["parameters"]["seed"] == 7

    # History and statistics were refreshed when the request ended.
    row = page.locator(f'#history tr[data-request-id="{request_id}"]')
    await expect(row).to_have_attribute("data-status", "completed")
    await expect(page.locator("#statistics")).to_contain_text("Completed1")
    await expect(page.locator("#memory")).to_contain_text("MB")

    # No polling: with keep-alive pings every 0.2 s, a quiet while brings no request.
    before = len(log.http())
    await asyncio.sleep(2.0)
    assert len(log.http()) == before, log.paths()[before:]

    assert log.count("status/stream") == 1
    assert log.count("status") == 1  # the queue, once, when the snapshot arrived
    # Once for the snapshot, once for the one request that ended.
    assert log.count("status/history") == 2, log.paths()
    assert log.count("status/statistics") == 2, log.paths()
    assert log.count("status/progress") == 0 and log.count("info") == 0
    assert log.count("health") <= 1 and log.count("config") <= 1
    assert log.count("v1/audio/speech", "POST") == 1
    statistics_urls = [r.url for r in log.http() if urlsplit(r.url).path.endswith("/status/statistics")]
    assert all("include_memory=true" in url for url in statistics_urls), statistics_urls
    assert page_errors(log) == []


async def test_queue_positions_and_cancel(serve, open_page):
    served = await serve(dashboard_app(max_chunk_length=40))
    page, log = await open_page(served.url)
    await page.fill("#speed", "0.5")  # slower speech: more audio to generate, a longer run

    running = await submit(page, LONG_TEXT)
    await expect(card(page, running)).to_have_attribute("data-status", "generating_audio")
    await page.fill("#speed", "1")
    second = await submit(page, "A second request waits in the queue.")
    third = await submit(page, "A third request waits behind it.")

    # Queue positions, from /status at the snapshot and then from the events alone.
    await expect(card(page, second).locator(".queue-position")).to_have_text("next in queue")
    await expect(card(page, third).locator(".queue-position")).to_have_text("#2 in queue")
    await expect(page.locator("#queue-length")).to_contain_text("2 waiting")

    await card(page, second).locator(".cancel").click()
    await expect(card(page, second)).to_have_attribute("data-status", "cancelled")
    await expect(card(page, third).locator(".queue-position")).to_have_text("next in queue")
    await expect(card(page, second).locator(".cancel")).to_be_hidden()

    # The long request is still generating: cancel it in the middle.
    assert await card(page, running).get_attribute("data-status") == "generating_audio"
    await card(page, running).locator(".cancel").click()
    await expect(card(page, running)).to_have_attribute("data-status", "cancelled")
    await expect(card(page, third)).to_have_attribute("data-status", "completed")
    await expect(card(page, third).locator(".queue-position")).to_have_text("")
    await expect(page.locator("#idle")).to_be_visible()

    assert served.core.tracker.find(running).status == "cancelled"
    assert served.core.tracker.find(second).status == "cancelled"
    assert served.core.tracker.find(third).status == "completed"
    assert {entry["status"] for entry in await cards_seen(page, second)} == {"queued", "cancelled"}
    running_percents = [float(e["percent"].rstrip("%")) for e in await cards_seen(page, running) if e["percent"]]
    assert 0 < max(running_percents) < 95, running_percents

    for request_id, status in ((running, "cancelled"), (second, "cancelled"), (third, "completed")):
        await expect(page.locator(f'#history tr[data-request-id="{request_id}"]')).to_have_attribute(
            "data-status", status
        )
    await expect(page.locator("#statistics")).to_contain_text("Cancelled2")
    await expect(page.locator("#form-status")).to_have_attribute("data-request-id", third)

    assert log.count(f"v1/audio/speech/{running}", "DELETE") == 1
    assert log.count(f"v1/audio/speech/{second}", "DELETE") == 1
    assert log.count("status/stream") == 1 and log.count("status") == 1
    ended = 3
    assert 2 <= log.count("status/history") <= 1 + ended, log.paths()
    assert 2 <= log.count("status/statistics") <= 1 + ended, log.paths()
    assert log.count("status/progress") == 0
    assert page_errors(log) == []


async def test_dashboard_under_a_path_prefix(serve, open_page):
    """Behind a proxy that serves the app at /tts/, every URL the page uses stays under it."""
    app = dashboard_app(max_chunk_length=60)
    root = web.Application()
    root.add_subapp("/tts/", app)
    served = await serve(root, path="/tts/", core_app=app)
    page, log = await open_page(served.url)

    request_id = await submit(page, "Spoken from under a path prefix.")
    await expect(card(page, request_id)).to_have_attribute("data-status", "completed")
    await expect_audio(page, request_id)
    await expect(page.locator(f'#history tr[data-request-id="{request_id}"]')).to_be_visible()

    outside = [r.url for r in log.http() if not r.url.startswith(served.url)]
    assert outside == [], outside
    assert log.count("status/stream") == 1
    assert page_errors(log) == []


async def test_dashboard_calls_an_api_on_another_origin(serve, open_page):
    """?api= points the page at another origin, which CORS_ORIGINS allows."""
    pages = await serve(with_dashboard(web.Application()))  # static files only
    page_origin = pages.url.rstrip("/")
    api = await serve(dashboard_app(cors_origins=page_origin, max_chunk_length=60))
    assert urlsplit(api.url).netloc != urlsplit(pages.url).netloc
    page, log = await open_page(f"{pages.url}?api={quote(api.url, safe='')}")
    await expect(page.locator("#api-base")).to_have_text(f"API: {api.url}")
    await expect(page.locator("#engine")).to_contain_text("ready")

    request_id = await submit(page, "Spoken across origins.")
    await expect(card(page, request_id)).to_have_attribute("data-status", "completed")
    await expect_audio(page, request_id)

    to_pages = {urlsplit(r.url).path for r in log.http() if r.url.startswith(pages.url)}
    assert to_pages <= {"/", "/web/app.js", "/web/api.js", "/web/live.js", "/web/render.js", "/web/format.js",
                        "/web/wav.js", "/web/style.css", "/web/icon.svg"}, to_pages
    api_calls = [r for r in log.http() if r.url.startswith(api.url)]
    assert any(urlsplit(r.url).path == "/status/stream" for r in api_calls)
    assert any(r.method == "POST" for r in api_calls)
    assert page_errors(log) == []


async def test_dashboard_asks_for_the_api_key(serve, open_page):
    served = await serve(dashboard_app(api_key="open-sesame-123", max_chunk_length=60))
    page, log = await open_page(served.url, wait_live=False)

    await expect(page.locator("#key-form")).to_be_visible()
    await expect(page.locator("#key-message")).to_have_text("This server needs an API key.")
    await page.fill("#api-key", "open-sesame-123")
    await page.click("#key-form button")
    await expect(page.locator("#connection")).to_have_attribute("data-state", "live")
    await expect(page.locator("#key-form")).to_be_hidden()

    request_id = await submit(page, "Spoken with a key.")
    await expect(card(page, request_id)).to_have_attribute("data-status", "completed")
    await expect_audio(page, request_id)
    assert served.core.tracker.find(request_id).status == "completed"


async def test_live_state_folds_events_into_queue_positions(serve, open_page):
    """live.js on its own: positions from events, /status merged without undoing newer events."""
    served = await serve(dashboard_app())
    page, _ = await open_page(served.url)
    result = await page.evaluate(
        """async () => {
          const { LiveRequests } = await import("./web/live.js");
          const live = new LiveRequests({ keepFinished: 1 });
          const out = {};
          for (const id of ["aaaaaaaa", "bbbbbbbb", "cccccccc"]) live.apply({ request_id: id, status: "queued" }, 1);
          out.queued = ["aaaaaaaa", "bbbbbbbb", "cccccccc"].map((id) => live.position(id));
          live.apply({ request_id: "aaaaaaaa", status: "initializing" }, 2);
          live.apply({ request_id: "cccccccc", status: "cancelled" }, 3);
          out.afterLeaving = [live.position("aaaaaaaa"), live.position("bbbbbbbb"), live.position("cccccccc")];
          live.apply({ request_id: "cccccccc", status: "generating_audio" }, 4);
          out.finishedStays = live.get("cccccccc").status;

          // /status fetched at t=10; an event at t=20 said dddddddd started: it stays started.
          live.apply({ request_id: "dddddddd", status: "queued" }, 5);
          live.apply({ request_id: "dddddddd", status: "initializing" }, 20);
          live.apply({ request_id: "ffffffff", status: "queued" }, 21);
          live.mergeStatus({ request_id: "aaaaaaaa", status: "generating_audio", progress: { current_chunk: 1 },
                             queue: { requests: [{ request_id: "dddddddd", position: 1 },
                                                 { request_id: "eeeeeeee", position: 2, estimated_completion: 99 }] } }, 10);
          out.merged = ["dddddddd", "eeeeeeee", "ffffffff"].map((id) => live.position(id));
          out.mergedStatus = [live.get("aaaaaaaa").status, live.get("dddddddd").status, live.get("eeeeeeee").eta];

          // A fresh snapshot: bbbbbbbb ended while we were away (history says so), gggggggg is gone.
          live.apply({ request_id: "gggggggg", status: "generating_audio" }, 6);
          live.reconcile({ request_id: "aaaaaaaa", queue: { requests: [{ request_id: "eeeeeeee" }] } },
                         [{ request_id: "bbbbbbbb", status: "completed", progress: { progress_percentage: 100 } }], 30);
          out.reconciled = [live.get("bbbbbbbb")?.status, live.get("gggggggg") ?? null, live.get("dddddddd")?.status];
          out.listed = live.list().map((record) => record.id);
          return out;
        }"""
    )
    assert result["queued"] == [1, 2, 3]
    assert result["afterLeaving"] == [None, 1, None]
    assert result["finishedStays"] == "cancelled"
    # dddddddd started after the fetch; ffffffff joined after it; bbbbbbbb is not waiting any more.
    assert result["merged"] == [None, 1, 2]
    assert result["mergedStatus"] == ["generating_audio", "initializing", 99]
    assert result["reconciled"] == ["completed", None, None]
    assert result["listed"] == ["aaaaaaaa", "eeeeeeee", "bbbbbbbb"]


async def test_dashboard_shows_each_engine_loading_idle_and_unloaded_as_it_happens(serve, open_page):
    """A second engine, chosen by a request's model: its badge follows its events live."""
    engines = [engine_process("hibari", Settings(engine_threads=1)), ThreadHost(ScriptedEngine())]
    served = await serve(with_dashboard(create_app(Settings(enable_memory_monitoring=True), engines)))
    page, log = await open_page(served.url)
    badge = page.locator('#engines .badge[data-engine="scripted"]')
    await expect(page.locator("#engine")).to_contain_text("hibari · ready")
    await expect(badge).to_have_text("scripted · not_started")

    async with aiohttp.ClientSession() as session:
        body = {"input": "Spoken by the second engine.", "model": "scripted"}
        async with session.post(f"{served.url}v1/audio/speech", json=body) as response:
            assert response.status == 200
        await expect(badge).to_have_text("scripted · ready · idle")
        async with session.post(f"{served.url}v1/models/scripted/unload") as response:
            assert response.status == 200
    await expect(badge).to_have_text("scripted · unloaded")
    await expect(badge).to_have_attribute("title", re.compile("unloaded on request"))
    assert page_errors(log) == []
