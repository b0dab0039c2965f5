"""The status API document's endpoints, with every alias, plus one request by id.

Every handler renders a view of the tracker's in-memory state: no I/O, no locks, so
polling stays fast while the model works.
"""

from __future__ import annotations

import time

from aiohttp import web

from .. import __version__, memory
from ..core import Core
from ..exceptions import InvalidInput, NotFound
from ..state import CORE
from .params import aliased, query_bool, query_int

routes = web.RouteTableDef()

API_NAME = "Chatterbox TTS API"
API_VERSION = "1.0.0"


def memory_info(core: Core) -> dict:
    return memory.report(core.settings.enable_memory_monitoring)


@aliased(routes, "GET", "/status", "/v1/status", "/processing", "/processing/status")
async def status(request: web.Request) -> web.Response:
    core = request.app[CORE]
    include_memory = query_bool(request, "include_memory")
    include_history = query_bool(request, "include_history")
    include_stats = query_bool(request, "include_stats")
    history_limit = query_int(request, "history_limit", 5, 1, 20)
    body = core.tracker.status()
    if include_memory:
        body["memory_info"] = memory_info(core)
    if include_history:
        body["request_history"] = core.tracker.history(history_limit)
    if include_stats:
        body["statistics"] = core.tracker.statistics()
    return web.json_response(body)


@aliased(routes, "GET", "/status/progress", "/v1/status/progress", "/progress")
async def progress(request: web.Request) -> web.Response:
    return web.json_response(request.app[CORE].tracker.progress())


@aliased(routes, "GET", "/status/statistics", "/v1/status/statistics", "/stats")
async def statistics(request: web.Request) -> web.Response:
    core = request.app[CORE]
    include_memory = query_bool(request, "include_memory")
    body = core.tracker.statistics()
    if include_memory:
        body["current_memory"] = memory_info(core)
    return web.json_response(body)


@aliased(routes, "GET", "/status/history", "/v1/status/history", "/history")
async def history(request: web.Request) -> web.Response:
    limit = query_int(request, "limit", 10, 1, 50)
    records = request.app[CORE].tracker.history(limit)
    return web.json_response({"request_history": records, "total_records": len(records), "limit": limit})


@aliased(routes, "POST", "/status/history/clear", "/v1/status/history/clear", "/history/clear")
async def clear_history(request: web.Request) -> web.Response:
    if not query_bool(request, "confirm"):
        raise InvalidInput("Clearing the history needs confirm=true", param="confirm", code="confirmation_required")
    core = request.app[CORE]
    cleared = core.tracker.history(core.settings.history_size)
    core.bus.publish("history_cleared", {})
    return web.json_response(
        {"success": True, "message": "TTS request history cleared", "cleared_records": len(cleared)}
    )


@aliased(routes, "GET", "/status/requests/{request_id}", "/v1/status/requests/{request_id}")
async def one_request(request: web.Request) -> web.Response:
    core = request.app[CORE]
    request_id = request.match_info["request_id"]
    record = core.tracker.find(request_id)
    if record is None:
        raise NotFound(f"Request {request_id!r} not found (it may have left the history)", param="request_id")
    body = record.view(time.time())
    entry = next((e for e in core.tracker.queue_view()["requests"] if e["request_id"] == request_id), None)
    body["queue_position"] = None if entry is None else entry["position"]
    if entry is not None:
        body["estimated_start"] = entry["estimated_start"]
        body["progress"]["estimated_completion"] = entry["estimated_completion"]
    return web.json_response(body)


@aliased(routes, "GET", "/info", "/v1/info", "/api/info")
async def info(request: web.Request) -> web.Response:
    core = request.app[CORE]
    tracker = core.tracker
    stats = tracker.statistics()
    engine = engine_view(core)
    state = {"error": "error", "ready": "operational"}.get(engine["state"], "initializing")
    return web.json_response(
        {
            "api_name": API_NAME,
            "server": "chatterbox-status",
            "version": __version__,
            "api_version": API_VERSION,
            "status": state,
            "engine": engine,
            "tts_status": tracker.status(),
            "statistics": stats,
            "memory_info": memory_info(core),
            "recent_requests": tracker.history(3),
            "uptime_info": {
                "uptime_seconds": round(time.time() - core.started_at, 1),
                "total_requests": stats["total_requests"],
                "success_rate": stats["success_rate"],
                "is_processing": stats["is_processing"],
            },
        }
    )


def engine_view(core: Core) -> dict:
    """Which engine runs, why it was chosen, and how far its model has loaded."""
    state = core.tracker.engine
    return {
        "name": core.choice.name,
        "requested": core.choice.requested,
        "reason": core.choice.reason,
        "device": core.engine.device,
        "sample_rate": core.engine.sample_rate,
        "state": state.get("state"),
        "load_progress": state.get("load_progress", 0.0),
        "error": state.get("error"),
    }

