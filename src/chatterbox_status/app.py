"""The app factory: one Core (bus, tracker, worker, engine) behind the HTTP resources."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from .api import dashboard, docs, long_text, meta, speech, status, stream, voices
from .auth import api_key_middleware
from .config import Settings
from .core import Core
from .cors import OriginPolicy, setup_cors
from .engine_pool import EngineHost
from .errors import error_middleware
from .guard import HostPolicy, setup_guard
from .metrics import Metrics
from .protocol import setup_server_header
from .slow_clients import slow_client_middleware
from .state import CORE, METRICS, SETTINGS, VOICE_LIBRARY
from .wyoming_server import WyomingServer


def create_app(settings: Settings, host: EngineHost | None = None) -> web.Application:
    """Build the application; the engine starts loading (in its own process, unless a
    test hands in another ``host``) when the app starts."""
    middlewares = [error_middleware, slow_client_middleware(settings.body_read_timeout, settings.send_timeout)]
    if settings.api_key:
        middlewares.append(api_key_middleware(settings.api_key))
    app = web.Application(middlewares=middlewares, client_max_size=settings.max_body_size)
    origins = OriginPolicy(settings.cors_origins)
    setup_cors(app, origins)
    setup_guard(app, HostPolicy(settings.host, settings.allowed_hosts), origins)  # runs first
    setup_server_header(app)
    app[SETTINGS] = settings
    core = app[CORE] = Core(settings, host)
    app[METRICS] = Metrics(core.bus, core.tracker)
    app[VOICE_LIBRARY] = core.voices
    for module in (speech, status, stream, voices, meta, docs, dashboard):
        app.router.add_routes(module.routes)
    app.cleanup_ctx.append(_run_core)
    long_text.setup(app)  # its job runner starts after the core and stops before it
    if settings.wyoming_port:
        app.cleanup_ctx.append(_run_wyoming)  # starts after the core and stops before it
    app.on_shutdown.append(_drain)
    return app


async def _drain(app: web.Application) -> None:
    """At shutdown (no longer listening): finish or cancel in-flight work, end the streams."""
    await app[CORE].shutdown()


async def _run_core(app: web.Application) -> AsyncIterator[None]:
    core = app[CORE]
    await core.start()
    yield
    await core.stop()


async def _run_wyoming(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    server = WyomingServer(app[CORE], settings.host, settings.wyoming_port)
    await server.start()
    yield
    await server.stop()
