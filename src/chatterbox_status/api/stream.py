"""GET /status/stream (aliases /v1/status/stream, /events): the event bus as Server-Sent Events.

A ``snapshot`` comes first (the /status/progress body, with the id of the last event it
reflects), then every ``status`` and ``progress`` event as the bus publishes it. A
reconnect with ``Last-Event-ID`` replays what was missed, or gets a fresh snapshot when
the gap has left the replay buffer. ``?request_id=`` narrows the stream to one request
(which may not exist yet: subscribe first, then post with that X-Request-ID) and ends it
after that request's terminal event.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp_sse import sse_response

from ..core import Core
from ..events import Event, Subscription
from ..exceptions import InvalidInput, TooManyStreams
from ..schemas.status import StatusEventData
from ..state import CORE
from ..tracker import TERMINAL_STATUSES
from .routing import Events, Param, Reply, api_route

routes = web.RouteTableDef()

REQUEST_EVENTS = frozenset({"status", "progress"})
# Events a whole-server stream carries besides request events: the model's load progress.
SERVER_EVENTS = frozenset({"engine"})


def last_event_id(request: web.Request) -> int | None:
    raw = request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
    if raw is None or raw == "":
        return None
    if not (raw.isascii() and raw.isdigit()):
        raise InvalidInput(f"Last-Event-ID must be an event id (an integer), got {raw!r}", param="Last-Event-ID")
    return int(raw)


def snapshot(core: Core, request_id: str | None) -> Event:
    """What a new subscriber needs before the live events, as of the bus's latest event."""
    now = time.time()
    if request_id is None:
        data = {"request_id": None, **core.tracker.progress()}
    elif (record := core.tracker.find(request_id)) is None:
        data = {"request_id": request_id, "status": "unknown", "is_processing": False}
    else:
        view = record.view(now)
        data = {
            "request_id": request_id,
            "status": record.status,
            "is_processing": record.status not in TERMINAL_STATUSES,
            **view["progress"],
            "duration_seconds": view["duration_seconds"],
            "text_preview": view["text_preview"],
        }
    return Event(core.bus.last_id, "snapshot", {"timestamp": now, **data})


def wanted(event: Event, request_id: str | None) -> bool:
    if event.type == "snapshot":
        return True
    if request_id is None:
        return event.type in REQUEST_EVENTS or event.type in SERVER_EVENTS
    return event.type in REQUEST_EVENTS and event.data.get("request_id") == request_id


def ends_stream(event: Event, request_id: str | None) -> bool:
    """A narrowed stream ends with its request's terminal event (or a snapshot showing it)."""
    return request_id is not None and event.type != "engine" and event.data.get("status") in TERMINAL_STATUSES


async def _events(first: list[Event], subscription: Subscription) -> AsyncIterator[Event]:
    for event in first:
        yield event
    while (live := await subscription.get()) is not None:
        yield live


EVENT_ID = {"type": "string", "pattern": "^[0-9]*$"}


@api_route(
    routes, "GET", "/status/stream", "/v1/status/stream", "/events",
    operation_id="streamStatus",
    summary="Push progress as Server-Sent Events",
    tag="events",
    responses={
        200: Reply(
            "A `snapshot` event first (the /status/progress body), then `status`, `progress` and `engine` events, "
            "each with an integer id; comment pings keep it open. With request_id the stream ends after that "
            "request's terminal event.",
            events=Events(
                {name: StatusEventData for name in ("snapshot", *sorted(REQUEST_EVENTS | SERVER_EVENTS))}, with_id=True
            ),
        )
    },
    errors=(InvalidInput, TooManyStreams),
    params=(
        Param("request_id", {"type": "string"}, "Narrow the stream to one request (it need not exist yet)"),
        Param("last_event_id", EVENT_ID, "Resume after this event id (for clients that cannot send Last-Event-ID)"),
        Param(
            "Last-Event-ID",
            EVENT_ID,
            "Resume after this event id: missed events are replayed, or a fresh snapshot is sent when they have "
            "left the replay buffer",
            where="header",
        ),
    ),
)
async def status_stream(request: web.Request) -> web.StreamResponse:
    core = request.app[CORE]
    request_id = request.query.get("request_id") or None
    resume_after = last_event_id(request)
    # Subscribe, then read the snapshot or the replay, with no await in between: nothing
    # published later is missed and nothing earlier is sent twice.
    subscription = core.bus.subscribe()
    try:
        replay = core.bus.since(resume_after) if resume_after is not None else None
        first = replay if replay is not None else [snapshot(core, request_id)]
        async with sse_response(
            request,
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            ping_interval=core.settings.sse_ping_interval,
        ) as sse:
            try:
                async for event in _events(first, subscription):
                    if not wanted(event, request_id):
                        continue
                    await sse.send(event.json, id=str(event.id), event=event.type)
                    if ends_stream(event, request_id):
                        break
            except ConnectionResetError:
                pass  # the subscriber left: nothing to send it any more
        return sse
    finally:
        core.bus.unsubscribe(subscription)
