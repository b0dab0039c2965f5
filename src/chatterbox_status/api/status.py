"""The status API document's endpoints, with every alias, plus one request by id.

Every handler renders a view of the tracker's in-memory state: no I/O, no locks, so
polling stays fast while the model works.
"""

from __future__ import annotations

import time

from aiohttp import web

from .. import __version__
from ..core import Core
from ..exceptions import InvalidInput, NotFound
from ..schemas.status import (
    EngineResidency,
    EngineView,
    History,
    HistoryCleared,
    Info,
    MemoryInfo,
    Progress,
    RequestDetail,
    RequestRecord,
    Statistics,
    StatisticsResponse,
    Status,
    UptimeInfo,
)
from ..state import CORE
from .params import bool_param, int_param, query_bool, query_int
from .routing import api_route, json_model

routes = web.RouteTableDef()

API_NAME = "Chatterbox TTS API"
API_VERSION = "1.0.0"
INCLUDE_MEMORY = bool_param("include_memory", "Add the memory figures")
REQUEST_ID = {"request_id": "The speech request's id"}


def memory_info(core: Core) -> MemoryInfo:
    return MemoryInfo.model_validate(core.memory_report())


@api_route(
    routes,
    "GET",
    "/status",
    "/v1/status",
    "/processing",
    "/processing/status",
    operation_id="getStatus",
    summary="The current request (or idle), its progress and the queue",
    tag="status",
    responses={200: Status},
    errors=(InvalidInput,),
    params=(
        INCLUDE_MEMORY,
        bool_param("include_history", "Add request_history"),
        bool_param("include_stats", "Add statistics"),
        int_param("history_limit", 5, 1, 20, "How many finished requests request_history lists"),
    ),
)
async def status(request: web.Request) -> web.Response:
    core = request.app[CORE]
    include_memory = query_bool(request, "include_memory")
    include_history = query_bool(request, "include_history")
    include_stats = query_bool(request, "include_stats")
    history_limit = query_int(request, "history_limit", 5, 1, 20)
    body = core.tracker.status()
    if include_memory:
        body["memory_info"] = core.memory_report()
    if include_history:
        body["request_history"] = core.tracker.history(history_limit)
    if include_stats:
        body["statistics"] = core.tracker.statistics()
    return json_model(Status.model_validate(body))


@api_route(
    routes,
    "GET",
    "/status/progress",
    "/v1/status/progress",
    "/progress",
    operation_id="getProgress",
    summary="The light progress body for polling",
    tag="status",
    responses={200: Progress},
)
async def progress(request: web.Request) -> web.Response:
    return json_model(Progress.model_validate(request.app[CORE].tracker.progress()))


@api_route(
    routes,
    "GET",
    "/status/statistics",
    "/v1/status/statistics",
    "/stats",
    operation_id="getStatistics",
    summary="Lifetime request counters",
    tag="status",
    responses={200: StatisticsResponse},
    errors=(InvalidInput,),
    params=(INCLUDE_MEMORY,),
)
async def statistics(request: web.Request) -> web.Response:
    core = request.app[CORE]
    include_memory = query_bool(request, "include_memory")
    body = StatisticsResponse.model_validate(core.tracker.statistics())
    if include_memory:
        body.current_memory = memory_info(core)
    return json_model(body)


@api_route(
    routes,
    "GET",
    "/status/history",
    "/v1/status/history",
    "/history",
    operation_id="getHistory",
    summary="Finished requests, newest first",
    tag="status",
    responses={200: History},
    errors=(InvalidInput,),
    params=(int_param("limit", 10, 1, 50, "How many requests to list"),),
)
async def history(request: web.Request) -> web.Response:
    limit = query_int(request, "limit", 10, 1, 50)
    records = [RequestRecord.model_validate(r) for r in request.app[CORE].tracker.history(limit)]
    return json_model(History(request_history=records, total_records=len(records), limit=limit))


@api_route(
    routes,
    "POST",
    "/status/history/clear",
    "/v1/status/history/clear",
    "/history/clear",
    operation_id="clearHistory",
    summary="Clear the request history (statistics stay)",
    tag="status",
    responses={200: HistoryCleared},
    errors=(InvalidInput,),
    params=(bool_param("confirm", "Must be true, or the call is a 400"),),
)
async def clear_history(request: web.Request) -> web.Response:
    if not query_bool(request, "confirm"):
        raise InvalidInput("Clearing the history needs confirm=true", param="confirm", code="confirmation_required")
    core = request.app[CORE]
    cleared = core.tracker.history(core.settings.history_size)
    core.bus.publish("history_cleared", {})
    return json_model(HistoryCleared(success=True, message="TTS request history cleared", cleared_records=len(cleared)))


@api_route(
    routes,
    "GET",
    "/status/requests/{request_id}",
    "/v1/status/requests/{request_id}",
    operation_id="getRequest",
    summary="One request: queued, running or in the history",
    tag="status",
    responses={200: RequestDetail},
    errors=(NotFound,),
    path_params=REQUEST_ID,
)
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
    return json_model(RequestDetail.model_validate(body))


@api_route(
    routes,
    "GET",
    "/info",
    "/v1/info",
    "/api/info",
    operation_id="getInfo",
    summary="Status, statistics, memory, the last 3 requests and uptime",
    tag="status",
    responses={200: Info},
)
async def info(request: web.Request) -> web.Response:
    core = request.app[CORE]
    tracker = core.tracker
    stats = Statistics.model_validate(tracker.statistics())
    engine = engine_view(core)
    state = {"error": "error", "ready": "operational", "unloading": "operational", "unloaded": "operational"}.get(
        engine.state, "initializing"
    )
    return json_model(
        Info(
            api_name=API_NAME,
            server="chatterbox-status",
            version=__version__,
            api_version=API_VERSION,
            status=state,  # type: ignore[arg-type]
            engine=engine,
            tts_status=Status.model_validate(tracker.status()),
            statistics=stats,
            memory_info=memory_info(core),
            recent_requests=[RequestRecord.model_validate(r) for r in tracker.history(3)],
            uptime_info=UptimeInfo(
                uptime_seconds=round(time.time() - core.started_at, 1),
                total_requests=stats.total_requests,
                success_rate=stats.success_rate,
                is_processing=stats.is_processing,
            ),
        )
    )


def engine_view(core: Core) -> EngineView:
    """The default engine: which it is, why it was chosen, how far its model has loaded
    and when it unloads."""
    state = core.tracker.engine
    return EngineView(
        **{name: state[name] for name in EngineResidency.model_fields if name in state},
        requested=core.choice.requested,
        reason=core.choice.reason,
        device=core.engine.device,
        sample_rate=core.engine.sample_rate,
        max_batch_size=core.engine.max_batch_size,
    )
