"""Service endpoints: /health, /ping, /v1/models and /config."""

from __future__ import annotations

import asyncio
import dataclasses
import time

from aiohttp import web

from .. import __version__, memory, metrics
from ..exceptions import InvalidInput
from ..state import CORE, METRICS
from .params import aliased, query_bool
from .status import engine_view

routes = web.RouteTableDef()

# OpenAI's speech model names, accepted so OpenAI clients work unchanged.
OPENAI_MODELS = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")


@aliased(routes, "GET", "/health", "/v1/health")
async def health(request: web.Request) -> web.Response:
    """Ready, initializing or failed, always 200 as chatterbox-tts-api answers (its frontend
    reads ``status`` and ``initialization_error`` rather than the code); /ping is liveness."""
    core = request.app[CORE]
    engine = engine_view(core)
    if engine["state"] == "error":
        status, initialization_state = "error", "error"
    elif engine["state"] == "ready":
        status, initialization_state = "healthy", "ready"
    else:
        status, initialization_state = "initializing", "initializing"
    settings = core.settings
    body = {
        "status": status,
        "model_loaded": engine["state"] == "ready",
        "device": core.engine.device,
        "initialization_state": initialization_state,
        "initialization_progress": f"{engine['load_progress']:.0f}%",
        "initialization_error": engine["error"],
        "engine": engine,
        "queue_length": len(core.tracker.queued()),
        "version": __version__,
        "config": {
            "max_chunk_length": settings.max_chunk_length,
            "max_total_length": settings.max_total_length,
            "voice_sample_path": settings.voice_sample_path,
            "default_exaggeration": settings.exaggeration,
            "default_cfg_weight": settings.cfg_weight,
            "default_temperature": settings.temperature,
        },
        "memory_info": memory.report(settings.enable_memory_monitoring),
    }
    return web.json_response(body)


@aliased(routes, "GET", "/ping", "/v1/ping")
async def ping(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "message": "pong", "timestamp": time.time()})


@aliased(routes, "GET", "/v1/models", "/models")
async def models(request: web.Request) -> web.Response:
    core = request.app[CORE]
    created = int(core.started_at)
    ids = (core.engine.name, *OPENAI_MODELS)
    return web.json_response(
        {
            "object": "list",
            "data": [{"id": model_id, "object": "model", "created": created, "owned_by": "chatterbox-status"} for model_id in ids],
        }
    )


@aliased(routes, "GET", "/config", "/v1/config")
async def config(request: web.Request) -> web.Response:
    core = request.app[CORE]
    settings = dataclasses.asdict(core.settings)
    return web.json_response(
        {
            "server": {"host": settings["host"], "port": settings["port"], "version": __version__},
            "model": {
                "engine": core.choice.name,
                "requested_engine": settings["engine"],
                "device": core.engine.device,
                "voice_sample_path": settings["voice_sample_path"],
                "model_cache_dir": settings["model_cache_dir"],
            },
            "defaults": {
                name: settings[name]
                for name in ("exaggeration", "cfg_weight", "temperature", "max_chunk_length", "max_total_length")
            },
            "memory_management": {"enable_memory_monitoring": settings["enable_memory_monitoring"]},
            "limits": {
                name: settings[name] for name in ("max_queue_size", "history_size", "max_body_size")
            },
            "cors_origins": settings["cors_origins"],
        }
    )


@aliased(routes, "GET", "/metrics")
async def prometheus_metrics(request: web.Request) -> web.Response:
    return web.Response(body=request.app[METRICS].render(), headers={"Content-Type": metrics.CONTENT_TYPE})


@aliased(routes, "GET", "/memory", "/v1/memory")
async def memory_status(request: web.Request) -> web.Response:
    """Memory in use now: process and system RAM, and CUDA's allocated, reserved and peak."""
    return web.json_response({"memory_info": memory.snapshot(), "engine": request.app[CORE].engine.name})


@aliased(routes, "POST", "/memory/reset", "/v1/memory/reset")
async def memory_reset(request: web.Request) -> web.Response:
    """Collect garbage and empty torch's CUDA cache (resetting its peak), on confirm=true."""
    if not query_bool(request, "confirm"):
        raise InvalidInput("Releasing memory needs confirm=true", param="confirm", code="confirmation_required")
    before = memory.snapshot()
    await asyncio.to_thread(memory.release, True)
    return web.json_response({"success": True, "memory_before": before, "memory_after": memory.snapshot()})


@aliased(routes, "GET", "/languages", "/v1/languages")
async def languages(request: web.Request) -> web.Response:
    """The languages the engine speaks (all of Chatterbox Multilingual's once it has loaded)."""
    engine = request.app[CORE].engine
    codes = engine.languages
    return web.json_response(
        {
            "engine": engine.name,
            "multilingual": len(codes) > 1,
            "languages": [{"code": code, "name": name} for code, name in sorted(codes.items())],
            "count": len(codes),
        }
    )


@aliased(routes, "GET", "/endpoints", "/v1/endpoints", "/routes")
async def endpoints(request: web.Request) -> web.Response:
    """Every path the server answers, with its methods (aliases listed as paths of their own)."""
    methods: dict[str, set[str]] = {}
    for route in request.app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        if path and route.method != "HEAD":
            methods.setdefault(path, set()).add(route.method)
    listed = [{"path": path, "methods": sorted(found)} for path, found in sorted(methods.items())]
    return web.json_response({"endpoints": listed, "count": len(listed)})
