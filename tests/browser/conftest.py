"""Fixtures for the dashboard in a real browser: Debian's chromium driven by Playwright.

Playwright never downloads a browser here: it launches /usr/bin/chromium, which the tox
env `browser` installs first (tests/browser/ensure_chromium.sh); when it is missing the
tests fail and say so. Servers run on real TCP ports on 127.0.0.1 inside the test's event
loop, on the real embedded voice.

These tests belong to the tox env `browser`, the one that installs Playwright: an env
without Playwright (the default `tests`) does not collect this folder.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from .dashboard_harness import (
    CHROMIUM,
    CHROMIUM_ARGS,
    CORE,
    ENSURE_SCRIPT,
    RECORD_CARDS,
    PageLog,
    Served,
)

try:
    from playwright.async_api import Browser, Page, async_playwright
except ImportError:  # not the `browser` env: run these with `tox -e browser`
    collect_ignore_glob = ["test_*.py"]


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: the browser tests drive Debian's chromium and never download one. "
            f"Run them through tox (`tox -e browser` runs {ENSURE_SCRIPT} first) or run {ENSURE_SCRIPT} as root."
        )
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[Served]]]:
    """Start apps on free ports; ``core_app`` (the one holding the Core) defaults to ``app``."""
    runners: list[web.AppRunner] = []

    async def start(app: web.Application, path: str = "/", core_app: web.Application | None = None) -> Served:
        runner = web.AppRunner(app, shutdown_timeout=5)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        served = Served(core_app or app, f"http://127.0.0.1:{port}{path}")
        if CORE in served.app:
            await asyncio.wait_for(served.core.worker.wait_loaded(), 60)
        return served

    yield start
    for runner in reversed(runners):
        await runner.cleanup()


@pytest.fixture
async def open_page(browser: Browser) -> AsyncIterator[Callable[..., Awaitable[tuple[Page, PageLog]]]]:
    contexts = []

    async def open_(url: str, width: int = 1280, height: int = 900, wait_live: bool = True) -> tuple[Page, PageLog]:
        context = await browser.new_context(viewport={"width": width, "height": height})
        contexts.append(context)
        page = await context.new_page()
        page.set_default_timeout(30_000)
        log = PageLog()
        page.on("request", lambda request: log.requests.append(request))
        page.on("pageerror", lambda error: log.errors.append(f"page error: {error}"))
        page.on("console", lambda message: log.errors.append(f"console.{message.type}: {message.text} at {message.location}")
                if message.type in ("error", "warning") else None)
        await page.add_init_script(RECORD_CARDS)
        await page.goto(url)
        if wait_live:
            await page.wait_for_selector("#connection[data-state=live]")
        return page, log

    yield open_
    for context in contexts:
        await context.close()
