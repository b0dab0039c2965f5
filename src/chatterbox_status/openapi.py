"""The OpenAPI 3.1 document of an app, built from the routes it really serves.

``document(app)`` walks ``app.router.routes()``, so no path or method can be left out by
mistake: every route is described by the entry of its handler in ``_operations()``, and
its aliases (the other paths of the same handler) get a copy of the same operation that
points back at the first path with ``x-alias-of``. A route whose handler has no entry is
left out of the document (serving the document must never fail), and
tests/test_openapi.py fails until it gets one.

Schemas for bodies and errors live once under ``components`` and are shared by reference.
The document describes this app as configured: the speech ``input`` limit comes from
MAX_TOTAL_LENGTH, and with API_KEY set the protected operations require a key and may
answer 401 (without it the bearer scheme is listed as optional).
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from . import __version__, audio
from .api.bodies import REQUEST_ID_PATTERN
from .schemas.speech import SpeechRequest
from .auth import OPEN_PATHS, OPEN_PREFIXES
from .longtext.openapi_ops import operations as long_text_operations
from .state import SETTINGS
from .tracker import STATUS_VALUES, TERMINAL_STATUSES
from .voices import CONTENT_TYPES as VOICE_CONTENT_TYPES

log = logging.getLogger(__name__)

OPENAPI_VERSION = "3.1.0"
JSON = "application/json"
MULTIPART = "multipart/form-data"
URLENCODED = "application/x-www-form-urlencoded"
EVENT_STREAM = "text/event-stream"

# Routes that are not part of the API: the dashboard's static files.
EXCLUDED_HANDLERS = frozenset({"chatterbox_status.api.dashboard.static_file"})

ACTIVE_STATUSES = [s for s in STATUS_VALUES if s != "idle" and s not in TERMINAL_STATUSES]
RECORD_STATUSES = [s for s in STATUS_VALUES if s != "idle"]


def document(app: web.Application) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every route ``app`` serves (HEAD and static files aside)."""
    settings = app[SETTINGS]
    protected = bool(settings.api_key)
    operations = _operations()
    routes = documented_routes(app)
    resources = [r for r in app.router.resources()]

    canonical: dict[tuple[str, str], str] = {}
    taken: set[str] = {spec.operation_id for spec in operations.values()}
    paths: dict[str, dict[str, Any]] = {}
    for method, path, route in routes:
        spec = operations.get(handler_name(route.handler))
        if spec is None:
            log.warning("openapi: %s %s (%s) has no documentation", method, path, handler_name(route.handler))
            continue
        key = (method, handler_name(route.handler))
        first = canonical.setdefault(key, path)
        operation = spec.render(method, path, route, resources, protected, open_path=_is_open(path))
        if first != path:
            operation["operationId"] = _unique(f"{spec.operation_id}__{_slug(path)}", taken)
            operation["x-alias-of"] = first
            operation["summary"] = f"{spec.summary} (alias of {first})"
        paths.setdefault(path, {})[method.lower()] = operation
    # The first path of each handler lists its aliases.
    for (method, _), first in canonical.items():
        aliases = [p for p, item in paths.items() if item.get(method.lower(), {}).get("x-alias-of") == first]
        if aliases and paths[first][method.lower()].get("operationId") is not None:
            paths[first][method.lower()]["x-aliases"] = aliases

    doc: dict[str, Any] = {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "chatterbox-status",
            "version": __version__,
            "summary": "Text-to-speech for Chatterbox with real-time status tracking",
            "description": _DESCRIPTION,
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "tags": _TAGS,
        "paths": paths,
        "components": _components(settings.max_total_length),
    }
    if protected:
        doc["security"] = [{"bearerAuth": []}, {"apiKeyHeader": []}, {"apiKeyQuery": []}]
    else:
        # No API_KEY on this server: a key is accepted by clients' habit and never needed.
        doc["security"] = [{}, {"bearerAuth": []}]
    return doc


def documented_routes(app: web.Application) -> list[tuple[str, str, web.AbstractRoute]]:
    """(method, path, route) of every route the document must describe, in router order."""
    found = []
    for route in app.router.routes():
        resource = route.resource
        if route.method in ("HEAD", "*") or resource is None:
            continue
        if isinstance(resource, web.StaticResource) or handler_name(route.handler) in EXCLUDED_HANDLERS:
            continue
        found.append((route.method, resource.canonical, route))
    return found


def handler_name(handler: Any) -> str:
    return f"{getattr(handler, '__module__', '?')}.{getattr(handler, '__qualname__', repr(handler))}"


def _is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def _slug(path: str) -> str:
    return re.sub(r"[^A-Za-z0-9-]+", "_", path).strip("_") or "root"


def _unique(operation_id: str, taken: set[str]) -> str:
    candidate, n = operation_id, 1
    while candidate in taken:
        n += 1
        candidate = f"{operation_id}_{n}"
    taken.add(candidate)
    return candidate


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def _schema(name: str) -> dict[str, str]:
    return _ref("schemas", name)


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _object(required: dict[str, Any], optional: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """An object schema: every ``required`` property is always sent, ``optional`` ones may be."""
    return {
        "type": "object",
        "properties": {**required, **(optional or {})},
        "required": list(required),
        **extra,
    }


def _json(schema: dict[str, Any], description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description, "content": {JSON: {"schema": schema}}}
    if headers:
        response["headers"] = headers
    return response


# -- operations ------------------------------------------------------------------------

ERROR_RESPONSES = {
    400: "BadRequest",
    401: "Unauthorized",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    413: "PayloadTooLarge",
    415: "UnsupportedMediaType",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
}


@dataclass(frozen=True)
class Operation:
    """What one handler does, whatever path it is reached by."""

    operation_id: str
    summary: str
    tag: str
    responses: dict[int, dict[str, Any]]
    errors: tuple[int, ...] = ()
    parameters: tuple[dict[str, Any], ...] = ()
    body: dict[str, Any] | None = None
    description: str | None = None
    path_params: dict[str, dict[str, Any]] = field(default_factory=dict)

    def render(
        self,
        method: str,
        path: str,
        route: web.AbstractRoute,
        resources: list[web.AbstractResource],
        protected: bool,
        open_path: bool,
    ) -> dict[str, Any]:
        operation: dict[str, Any] = {"operationId": self.operation_id, "summary": self.summary, "tags": [self.tag]}
        if self.description:
            operation["description"] = self.description
        parameters = [*_path_parameters(method, route, resources, self.path_params), *self.parameters]
        if parameters:
            operation["parameters"] = copy.deepcopy(parameters)
        if self.body is not None:
            operation["requestBody"] = copy.deepcopy(self.body)
        responses = {str(status): copy.deepcopy(response) for status, response in self.responses.items()}
        errors = set(self.errors)
        if protected and not open_path:
            errors.add(401)
        for status in sorted(errors):
            responses.setdefault(str(status), _ref("responses", ERROR_RESPONSES[status]))
        operation["responses"] = dict(sorted(responses.items()))
        if open_path:
            operation["security"] = [{}]
        return operation


def _path_parameters(
    method: str, route: web.AbstractRoute, resources: list[web.AbstractResource], described: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    """The path's {parameters}; values that an earlier fixed path would take instead are excluded."""
    resource = route.resource
    names = re.findall(r"\{([^}:]+)", resource.canonical)
    if not names:
        return []
    shadowed = _shadowed_values(method, resource, resources)
    parameters = []
    for name in names:
        base = described.get(name, {"description": name})
        schema: dict[str, Any] = {"type": "string", "minLength": 1, **base.get("schema", {})}
        if shadowed.get(name):
            schema["not"] = {"enum": sorted(shadowed[name])}
        parameters.append(
            {"name": name, "in": "path", "required": True, "description": base["description"], "schema": schema}
        )
    return parameters


def _shadowed_values(
    method: str, resource: web.AbstractResource, resources: list[web.AbstractResource]
) -> dict[str, set[str]]:
    """aiohttp tries resources in order: a fixed path registered earlier with the same method wins."""
    pattern = resource.get_info().get("pattern")
    shadowed: dict[str, set[str]] = {}
    if pattern is None:
        return shadowed
    for other in resources:
        if other is resource:
            break
        info = other.get_info()
        fixed = info.get("path")
        if fixed is None or not any(r.method in (method, "*") for r in other):
            continue
        match = pattern.fullmatch(fixed)
        if match:
            for name, value in match.groupdict().items():
                shadowed.setdefault(name, set()).add(value)
    return shadowed


def _query(name: str, schema: dict[str, Any], description: str, required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "description": description, "schema": schema}


def _bool_query(name: str, description: str) -> dict[str, Any]:
    return _query(
        name,
        {"type": "boolean", "default": False},
        description + " (true, 1, yes or on; false, 0, no or off)",
    )


INCLUDE_MEMORY = _bool_query("include_memory", "Add the memory figures")
X_REQUEST_ID = {
    "name": "X-Request-ID",
    "in": "header",
    "required": False,
    "description": "The id this request should get (8-64 letters, digits, '.', '_', '-'), e.g. to watch it "
    "from its first moment; 409 if the id is in use. The server picks one when it is absent.",
    "schema": {"type": "string", "pattern": REQUEST_ID_PATTERN.pattern},
}
REQUEST_ID_HEADER = {
    "X-Request-ID": {"description": "The id of the speech request", "required": True, "schema": {"type": "string"}}
}
RETRY_AFTER_HEADER = {
    "Retry-After": {"description": "Seconds to wait before trying again", "schema": {"type": "string"}}
}

SPEECH_DESCRIPTION = (
    "The whole audio file in the asked format, or, with `stream_format`, the audio as it is generated: "
    "`audio` sends the file with chunked transfer (a failure midway aborts the transfer), `sse` sends OpenAI's "
    "`speech.audio.delta` events (base64 audio) and a final `speech.audio.done` with `usage`, or an `error` event."
)


def _speech_response() -> dict[str, Any]:
    binary = {"type": "string", "format": "binary"}
    content = {media: {"schema": binary} for media in dict.fromkeys(audio.CONTENT_TYPES.values())}
    content[EVENT_STREAM] = {"schema": _schema("SpeechEvent")}
    return {"description": SPEECH_DESCRIPTION, "headers": REQUEST_ID_HEADER, "content": content}


def _name_body(name: str, description: str) -> dict[str, Any]:
    schema = _object({name: {"type": "string", "description": description}})
    schema["required"] = []
    return {
        "required": False,
        "description": f"`{name}` as a form field; it may come as a query parameter instead.",
        "content": {MULTIPART: {"schema": schema}, URLENCODED: {"schema": copy.deepcopy(schema)}},
    }


def _name_query(name: str, description: str) -> dict[str, Any]:
    return _query(name, {"type": "string"}, description + " (when not sent as a form field)")


VOICE_NAME = {"voice_name": {"description": "A voice's name or one of its aliases (case-insensitive)"}}


def _operations() -> dict[str, Operation]:
    """Every handler's operation, keyed by the handler's qualified name."""
    speech_body = {
        "required": True,
        "content": {JSON: {"schema": _schema("SpeechRequest")}},
    }
    upload_body = {
        "required": True,
        "description": "The speech fields as a form; `voice_file` (optional) is a clip to clone for this request only.",
        "content": {
            MULTIPART: {"schema": _schema("SpeechUploadForm")},
            URLENCODED: {"schema": _schema("SpeechForm")},
        },
    }
    voice_upload_body = {
        "required": True,
        "content": {MULTIPART: {"schema": _schema("VoiceUploadForm")}},
    }
    ops = [
        # speech
        (
            "chatterbox_status.api.speech.create_speech",
            Operation(
                "createSpeech",
                "Generate speech (OpenAI's speech API)",
                "speech",
                {200: _speech_response()},
                (400, 404, 409, 413, 415, 429, 500, 503),
                (X_REQUEST_ID,),
                speech_body,
            ),
        ),
        (
            "chatterbox_status.api.speech.create_speech_stream",
            Operation(
                "createSpeechStream",
                "Generate speech, streamed as it is generated",
                "speech",
                {200: _speech_response()},
                (400, 404, 409, 413, 415, 429, 503),
                (X_REQUEST_ID,),
                speech_body,
                "`stream_format` defaults to `audio` here.",
            ),
        ),
        (
            "chatterbox_status.api.speech.create_speech_upload",
            Operation(
                "createSpeechUpload",
                "Generate speech from a form, optionally cloning an uploaded voice clip",
                "speech",
                {200: _speech_response()},
                (400, 404, 409, 413, 415, 429, 500, 503),
                (X_REQUEST_ID,),
                upload_body,
            ),
        ),
        (
            "chatterbox_status.api.speech.create_speech_stream_upload",
            Operation(
                "createSpeechStreamUpload",
                "The upload form, streamed as it is generated",
                "speech",
                {200: _speech_response()},
                (400, 404, 409, 413, 415, 429, 503),
                (X_REQUEST_ID,),
                upload_body,
                "`stream_format` defaults to `audio` here.",
            ),
        ),
        (
            "chatterbox_status.api.speech.cancel_speech",
            Operation(
                "cancelSpeech",
                "Cancel a queued or running speech request",
                "speech",
                {200: _json(_schema("SpeechCancelled"), "The request is cancelled; its speech call answers 409")},
                (404, 409),
                path_params={"request_id": {"description": "The speech request's id"}},
            ),
        ),
        # status
        (
            "chatterbox_status.api.status.status",
            Operation(
                "getStatus",
                "The current request (or idle), its progress and the queue",
                "status",
                {200: _json(_schema("Status"), "The current status")},
                (400,),
                (
                    INCLUDE_MEMORY,
                    _bool_query("include_history", "Add request_history"),
                    _bool_query("include_stats", "Add statistics"),
                    _query(
                        "history_limit",
                        {"type": "integer", "minimum": 1, "maximum": 20, "default": 5},
                        "How many finished requests request_history lists",
                    ),
                ),
            ),
        ),
        (
            "chatterbox_status.api.status.progress",
            Operation(
                "getProgress",
                "The light progress body for polling",
                "status",
                {200: _json(_schema("Progress"), "Exactly {is_processing, status, message} when idle")},
            ),
        ),
        (
            "chatterbox_status.api.status.statistics",
            Operation(
                "getStatistics",
                "Lifetime request counters",
                "status",
                {200: _json(_schema("StatisticsResponse"), "The counters")},
                (400,),
                (INCLUDE_MEMORY,),
            ),
        ),
        (
            "chatterbox_status.api.status.history",
            Operation(
                "getHistory",
                "Finished requests, newest first",
                "status",
                {200: _json(_schema("History"), "The history")},
                (400,),
                (
                    _query(
                        "limit",
                        {"type": "integer", "minimum": 1, "maximum": 50, "default": 10},
                        "How many requests to list",
                    ),
                ),
            ),
        ),
        (
            "chatterbox_status.api.status.clear_history",
            Operation(
                "clearHistory",
                "Clear the request history (statistics stay)",
                "status",
                {200: _json(_schema("HistoryCleared"), "The history is empty")},
                (400,),
                (_bool_query("confirm", "Must be true, or the call is a 400"),),
            ),
        ),
        (
            "chatterbox_status.api.status.one_request",
            Operation(
                "getRequest",
                "One request: queued, running or in the history",
                "status",
                {200: _json(_schema("RequestDetail"), "The request")},
                (404,),
                path_params={"request_id": {"description": "The speech request's id"}},
            ),
        ),
        (
            "chatterbox_status.api.status.info",
            Operation(
                "getInfo",
                "Status, statistics, memory, the last 3 requests and uptime",
                "status",
                {200: _json(_schema("Info"), "Everything at once")},
            ),
        ),
        # events
        (
            "chatterbox_status.api.stream.status_stream",
            Operation(
                "streamStatus",
                "Push progress as Server-Sent Events",
                "events",
                {
                    200: {
                        "description": "A `snapshot` event first (the /status/progress body), then `status`, `progress` "
                        "and `engine` events, each with an integer id; comment pings keep it open. With request_id "
                        "the stream ends after that request's terminal event.",
                        "content": {EVENT_STREAM: {"schema": _schema("StatusEvent")}},
                    }
                },
                (400, 429),
                (
                    _query("request_id", {"type": "string"}, "Narrow the stream to one request (it need not exist yet)"),
                    _query(
                        "last_event_id",
                        {"type": "string", "pattern": "^[0-9]*$"},
                        "Resume after this event id (for clients that cannot send Last-Event-ID)",
                    ),
                    {
                        "name": "Last-Event-ID",
                        "in": "header",
                        "required": False,
                        "description": "Resume after this event id: missed events are replayed, or a fresh snapshot "
                        "is sent when they have left the replay buffer",
                        "schema": {"type": "string", "pattern": "^[0-9]*$"},
                    },
                ),
            ),
        ),
        # voices
        (
            "chatterbox_status.api.voices.list_voices",
            Operation("listVoices", "The voice library", "voices", {200: _json(_schema("VoiceList"), "Every voice")}),
        ),
        (
            "chatterbox_status.api.voices.upload_voice",
            Operation(
                "uploadVoice",
                "Add a voice to the library",
                "voices",
                {201: _json(_schema("VoiceCreated"), "The voice is stored")},
                (400, 409, 413, 415),
                body=voice_upload_body,
            ),
        ),
        (
            "chatterbox_status.api.voices.get_default_voice",
            Operation(
                "getDefaultVoice",
                "The voice the OpenAI voice names and 'default' speak with",
                "voices",
                {200: _json(_schema("DefaultVoice"), "The library default, or the server's own voice")},
            ),
        ),
        (
            "chatterbox_status.api.voices.set_default_voice",
            Operation(
                "setDefaultVoice",
                "Make a library voice the default",
                "voices",
                {200: _json(_schema("DefaultVoiceSet"), "The new default")},
                (400, 404, 413),
                (_name_query("voice_name", "The voice"),),
                _name_body("voice_name", "The voice"),
            ),
        ),
        (
            "chatterbox_status.api.voices.clear_default_voice",
            Operation(
                "clearDefaultVoice",
                "Go back to the server's own default voice",
                "voices",
                {200: _json(_schema("DefaultVoiceCleared"), "No library default")},
            ),
        ),
        (
            "chatterbox_status.api.voices.all_voice_names",
            Operation(
                "listVoiceNames",
                "Every name a speech request may use for a library voice",
                "voices",
                {200: _json(_schema("VoiceNames"), "Names and aliases")},
            ),
        ),
        (
            "chatterbox_status.api.voices.cleanup_voices",
            Operation(
                "cleanupVoices",
                "Forget voices whose audio file is missing",
                "voices",
                {200: _json(_schema("VoicesCleanup"), "What was forgotten")},
            ),
        ),
        (
            "chatterbox_status.api.voices.get_voice",
            Operation(
                "getVoice",
                "One voice",
                "voices",
                {200: _json(_schema("VoiceDetail"), "The voice")},
                (404,),
                path_params=VOICE_NAME,
            ),
        ),
        (
            "chatterbox_status.api.voices.rename_voice",
            Operation(
                "renameVoice",
                "Rename a voice",
                "voices",
                {200: _json(_schema("VoiceRenamed"), "The voice under its new name")},
                (400, 404, 409, 413),
                (_name_query("new_name", "The new name"),),
                _name_body("new_name", "The new name"),
                path_params=VOICE_NAME,
            ),
        ),
        (
            "chatterbox_status.api.voices.delete_voice",
            Operation(
                "deleteVoice",
                "Delete a voice and its file",
                "voices",
                {200: _json(_schema("VoiceDeleted"), "The voice is gone")},
                (404,),
                path_params=VOICE_NAME,
            ),
        ),
        (
            "chatterbox_status.api.voices.download_voice",
            Operation(
                "downloadVoice",
                "A voice's audio file, as uploaded",
                "voices",
                {
                    200: {
                        "description": "The clip",
                        "headers": {
                            "Content-Disposition": {
                                "description": "attachment; filename=<voice name>.<extension>",
                                "schema": {"type": "string"},
                            }
                        },
                        "content": {
                            media: {"schema": {"type": "string", "format": "binary"}}
                            for media in dict.fromkeys(VOICE_CONTENT_TYPES.values())
                        },
                    }
                },
                (404,),
                path_params=VOICE_NAME,
            ),
        ),
        (
            "chatterbox_status.api.voices.list_aliases",
            Operation(
                "listVoiceAliases",
                "A voice's aliases",
                "voices",
                {200: _json(_schema("VoiceAliases"), "The aliases")},
                (404,),
                path_params=VOICE_NAME,
            ),
        ),
        (
            "chatterbox_status.api.voices.add_alias",
            Operation(
                "addVoiceAlias",
                "Give a voice another name",
                "voices",
                {201: _json(_schema("AliasChanged"), "The alias is added (or was there already)")},
                (400, 404, 409, 413),
                (_name_query("alias", "The alias"),),
                _name_body("alias", "The alias"),
                path_params=VOICE_NAME,
            ),
        ),
        (
            "chatterbox_status.api.voices.remove_alias",
            Operation(
                "removeVoiceAlias",
                "Remove one of a voice's aliases",
                "voices",
                {200: _json(_schema("AliasChanged"), "The alias is removed")},
                (404,),
                path_params={**VOICE_NAME, "alias": {"description": "The alias to remove"}},
            ),
        ),
        # service
        (
            "chatterbox_status.api.meta.health",
            Operation(
                "getHealth",
                "Ready, loading, or failed",
                "service",
                {200: _json(_schema("Health"), "Healthy, still initializing, or failed to load (status error)")},
            ),
        ),
        (
            "chatterbox_status.api.meta.ping",
            Operation("ping", "Liveness", "service", {200: _json(_schema("Ping"), "Alive")}),
        ),
        (
            "chatterbox_status.api.meta.models",
            Operation("listModels", "OpenAI's model list", "service", {200: _json(_schema("ModelList"), "The models")}),
        ),
        (
            "chatterbox_status.api.meta.config",
            Operation("getConfig", "The settings in force", "service", {200: _json(_schema("Config"), "The settings")}),
        ),
        (
            "chatterbox_status.api.meta.prometheus_metrics",
            Operation(
                "getMetrics",
                "Prometheus metrics",
                "service",
                {
                    200: {
                        "description": "The text exposition format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            ),
        ),
        (
            "chatterbox_status.api.meta.memory_status",
            Operation(
                "getMemory",
                "Memory in use now: process and system RAM, and CUDA's allocated, reserved and peak",
                "service",
                {200: _json(_schema("MemoryStatus"), "The figures, whatever ENABLE_MEMORY_MONITORING says")},
            ),
        ),
        (
            "chatterbox_status.api.meta.memory_reset",
            Operation(
                "resetMemory",
                "Collect garbage and empty torch's CUDA cache (resetting its peak)",
                "service",
                {200: _json(_schema("MemoryReset"), "Memory before and after")},
                (400,),
                (_bool_query("confirm", "Must be true, or the call is a 400"),),
            ),
        ),
        (
            "chatterbox_status.api.meta.endpoints",
            Operation(
                "listEndpoints",
                "Every path the server answers, with its methods",
                "service",
                {200: _json(_schema("Endpoints"), "The paths")},
            ),
        ),
        (
            "chatterbox_status.api.meta.languages",
            Operation(
                "listLanguages",
                "The languages the engine speaks (the speech request's language field)",
                "service",
                {200: _json(_schema("Languages"), "Language codes and names")},
            ),
        ),
        (
            "chatterbox_status.api.docs.openapi_json",
            Operation(
                "getOpenApi",
                "This document",
                "service",
                {200: _json({"type": "object", "required": ["openapi", "info", "paths"]}, "OpenAPI 3.1")},
            ),
        ),
        (
            "chatterbox_status.api.dashboard.index",
            Operation(
                "getDashboard",
                "The browser dashboard",
                "dashboard",
                {
                    200: {"description": "The page", "content": {"text/html": {"schema": {"type": "string"}}}},
                    304: {"description": "Unchanged since the ETag sent in If-None-Match"},
                },
                (404,),
                (
                    {
                        "name": "If-None-Match",
                        "in": "header",
                        "required": False,
                        "description": "ETags the client has",
                        "schema": {"type": "string"},
                    },
                ),
            ),
        ),
    ]
    ops += long_text_operations()
    return dict(ops)


# -- components ------------------------------------------------------------------------

_TAGS = [
    {"name": "speech", "description": "OpenAI's speech API, streaming and cancellation"},
    {"name": "status", "description": "The status API: polling endpoints"},
    {"name": "events", "description": "Push progress over Server-Sent Events"},
    {"name": "voices", "description": "The voice library (chatterbox-tts-api's routes)"},
    {"name": "service", "description": "Health, liveness, models, settings, metrics and this document"},
    {"name": "dashboard", "description": "The browser dashboard"},
    {"name": "long-text", "description": "Long texts spoken in the background (chatterbox-tts-api's /audio/speech/long)"},
]

_DESCRIPTION = (
    "Speaks OpenAI's `/v1/audio/speech` API, answers on chatterbox-tts-api's paths, and tracks every request "
    "from `queued` to `completed`.\n\n"
    "Most operations answer under several paths (aliases); an alias's operation carries `x-alias-of` with the "
    "path of the operation it repeats.\n\n"
    "Every error, validation included, is `{\"error\": {\"message\", \"type\", \"param\", \"code\"}}` with an honest "
    "status: 400 bad input, 401 missing or bad API key (only when the server has API_KEY set), 404 unknown route, "
    "voice or request, 405 wrong method (with `Allow`), 409 conflict, 413 body too large, 415 wrong content type, "
    "429 queue full or too many streams (with `Retry-After`), 500 generation failed, 503 engine unavailable or "
    "shutting down."
)

_INT = {"type": "integer", "minimum": 0}
_NUMBER = {"type": "number"}
_STRING = {"type": "string"}
_TIME = {"type": "number", "description": "Epoch seconds"}


def _components(max_total_length: int) -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    speech = _speech_request_schema(max_total_length, schemas)
    schemas.update(
        {
            "Error": _object({"error": _schema("ErrorDetail")}, additionalProperties=False),
            "ErrorDetail": _object(
                {
                    "message": {"type": "string", "description": "What went wrong, for people"},
                    "type": {"type": "string", "description": "The kind of error, e.g. invalid_request_error"},
                    "param": {**_nullable(_STRING), "description": "The field or parameter at fault"},
                    "code": {**_nullable(_STRING), "description": "A stable code for programs, when there is one"},
                },
                additionalProperties=False,
            ),
            "SpeechRequest": speech,
            "SpeechForm": _form_schema(speech),
            "SpeechUploadForm": _with_file(_form_schema(speech), "voice_file", "A voice clip to clone (1-60 s)"),
            "VoiceUploadForm": _object(
                {
                    "voice_name": {"type": "string", "description": "1-64 letters, digits, spaces, '-', '_', '.'"},
                    "voice_file": {
                        "type": "string",
                        "format": "binary",
                        "contentMediaType": "application/octet-stream",
                        "description": "The clip: wav, mp3, flac, ogg, opus, m4a, aac or webm, 1-60 s, 10 MiB at most",
                    },
                },
                {"language": {"type": "string", "default": "en", "description": "A language code such as en or pt-br"}},
            ),
            "SpeechEvent": _event(
                ["speech.audio.delta", "speech.audio.done", "error"],
                {
                    "oneOf": [
                        _object(
                            {
                                "type": {"const": "speech.audio.delta"},
                                "audio": {
                                    "type": "string",
                                    "contentEncoding": "base64",
                                    "description": "The next piece of the encoded audio",
                                },
                            }
                        ),
                        _object(
                            {
                                "type": {"const": "speech.audio.done"},
                                "usage": _object(
                                    {
                                        "input_tokens": {**_INT, "description": "Input characters"},
                                        "output_tokens": _INT,
                                        "total_tokens": _INT,
                                    }
                                ),
                            }
                        ),
                        {
                            **_object({"type": {"const": "error"}, "error": _schema("ErrorDetail")}),
                            "description": "Generation failed midway: the error body, as the whole-file call would answer",
                        },
                    ]
                },
                with_id=False,
            ),
            "StatusEvent": _event(
                ["snapshot", "status", "progress", "engine"],
                _object(
                    {"timestamp": _TIME},
                    {
                        "request_id": _nullable(_STRING),
                        "status": {"type": "string", "description": "A status value, or 'unknown' in a snapshot of a request not seen yet"},
                        "is_processing": {"type": "boolean"},
                        **_progress_properties(),
                        "duration_seconds": {"type": "number", "minimum": 0},
                        "text_preview": _STRING,
                        "message": _STRING,
                        "queue_length": _INT,
                        "name": _STRING,
                        "state": _STRING,
                        "load_progress": {"type": "number", "minimum": 0, "maximum": 100},
                        "error": _nullable(_STRING),
                    },
                ),
                with_id=True,
            ),
            "SpeechCancelled": _object(
                {"request_id": _STRING, "cancelled": {"const": True}, "status": {"enum": RECORD_STATUSES}}
            ),
            "ProgressFields": _object(
                {
                    "current_chunk": _INT,
                    "total_chunks": _INT,
                    "current_step": _STRING,
                    "progress_percentage": {"type": "number", "minimum": 0, "maximum": 100},
                    "estimated_completion": _nullable(_TIME),
                }
            ),
            "RequestRecord": _object(
                _record_properties(),
                {"engine": _STRING, "error_message": _STRING, "audio_duration_seconds": _NUMBER},
            ),
            "RequestDetail": _object(
                {**_record_properties(), "queue_position": _nullable({"type": "integer", "minimum": 1})},
                {
                    "estimated_start": _nullable(_TIME),
                    "engine": _STRING,
                    "error_message": _STRING,
                    "audio_duration_seconds": _NUMBER,
                },
            ),
            "QueueEntry": _object(
                {
                    "request_id": _STRING,
                    "position": {"type": "integer", "minimum": 1},
                    "text_length": _INT,
                    "queued_at": _TIME,
                    "estimated_start": _nullable(_TIME),
                    "estimated_completion": _nullable(_TIME),
                }
            ),
            "Queue": _object({"length": _INT, "requests": {"type": "array", "items": _schema("QueueEntry")}}),
            "Statistics": _object(_statistics_properties()),
            "StatisticsResponse": _object(_statistics_properties(), {"current_memory": _schema("MemoryInfo")}),
            "MemorySnapshot": _object(
                {
                    "cpu_memory_mb": _NUMBER,
                    "cpu_memory_percent": _NUMBER,
                    "system_memory_total_mb": _NUMBER,
                    "system_memory_available_mb": _NUMBER,
                    "gpu_available": {"type": "boolean"},
                    "gpu_memory_allocated_mb": _NUMBER,
                    "gpu_memory_reserved_mb": _NUMBER,
                    "gpu_memory_max_allocated_mb": _NUMBER,
                },
                description="Memory in MB; the GPU figures are 0 without CUDA",
            ),
            "MemoryInfo": {
                "description": "A snapshot, or a note when ENABLE_MEMORY_MONITORING is off",
                "oneOf": [_schema("MemorySnapshot"), _object({"enabled": {"const": False}, "note": _STRING})],
            },
            "MemoryStatus": _object({"memory_info": _schema("MemorySnapshot"), "engine": _STRING}),
            "Endpoints": _object(
                {
                    "endpoints": {
                        "type": "array",
                        "items": _object({"path": _STRING, "methods": {"type": "array", "items": _STRING}}),
                    },
                    "count": {"type": "integer", "minimum": 0},
                }
            ),
            "Languages": _object(
                {
                    "engine": _STRING,
                    "multilingual": {"type": "boolean"},
                    "languages": {"type": "array", "items": _object({"code": _STRING, "name": _STRING})},
                    "count": {"type": "integer", "minimum": 1},
                }
            ),
            "MemoryReset": _object(
                {
                    "success": {"const": True},
                    "memory_before": _schema("MemorySnapshot"),
                    "memory_after": _schema("MemorySnapshot"),
                }
            ),
            "Status": {
                "oneOf": [
                    _object(
                        {
                            "status": {"const": "idle"},
                            "is_processing": {"const": False},
                            "message": _STRING,
                            "total_requests": _INT,
                            "queue": _schema("Queue"),
                        },
                        _status_sections(),
                    ),
                    _object(
                        {
                            **_record_properties(),
                            "status": {"enum": ACTIVE_STATUSES},
                            "is_processing": {"const": True},
                            "total_requests": _INT,
                            "queue": _schema("Queue"),
                        },
                        {
                            "engine": _STRING,
                            "error_message": _STRING,
                            "audio_duration_seconds": _NUMBER,
                            **_status_sections(),
                        },
                    ),
                ]
            },
            "Progress": {
                "oneOf": [
                    _object(
                        {"is_processing": {"const": False}, "status": {"const": "idle"}, "message": _STRING},
                        additionalProperties=False,
                    ),
                    _object(
                        {
                            "is_processing": {"const": True},
                            "status": {"enum": ACTIVE_STATUSES},
                            "request_id": _STRING,
                            **_progress_properties(),
                            "duration_seconds": {"type": "number", "minimum": 0},
                            "text_preview": _STRING,
                            "queue_length": _INT,
                        }
                    ),
                ]
            },
            "History": _object(
                {
                    "request_history": {"type": "array", "items": _schema("RequestRecord")},
                    "total_records": _INT,
                    "limit": {"type": "integer", "minimum": 1, "maximum": 50},
                }
            ),
            "HistoryCleared": _object({"success": {"const": True}, "message": _STRING, "cleared_records": _INT}),
            "EngineView": _object(
                {
                    "name": _STRING,
                    "requested": _STRING,
                    "reason": _STRING,
                    "device": _STRING,
                    "sample_rate": {"type": "integer", "minimum": 1},
                    "state": _nullable({"enum": ["not_started", "loading", "ready", "error"]}),
                    "load_progress": {"type": "number", "minimum": 0, "maximum": 100},
                    "error": _nullable(_STRING),
                }
            ),
            "Info": _object(
                {
                    "api_name": _STRING,
                    "server": {"const": "chatterbox-status"},
                    "version": _STRING,
                    "api_version": _STRING,
                    "status": {"enum": ["operational", "initializing", "error"]},
                    "engine": _schema("EngineView"),
                    "tts_status": _schema("Status"),
                    "statistics": _schema("Statistics"),
                    "memory_info": _schema("MemoryInfo"),
                    "recent_requests": {"type": "array", "items": _schema("RequestRecord"), "maxItems": 3},
                    "uptime_info": _object(
                        {
                            "uptime_seconds": {"type": "number", "minimum": 0},
                            "total_requests": _INT,
                            "success_rate": {"type": "number", "minimum": 0, "maximum": 100},
                            "is_processing": {"type": "boolean"},
                        }
                    ),
                }
            ),
            "Health": _object(
                {
                    "status": {"enum": ["healthy", "initializing", "error"]},
                    "model_loaded": {"type": "boolean"},
                    "device": _STRING,
                    "initialization_state": {"enum": ["ready", "initializing", "error"]},
                    "initialization_progress": {"type": "string", "pattern": "^[0-9]+%$"},
                    "initialization_error": _nullable(_STRING),
                    "engine": _schema("EngineView"),
                    "queue_length": _INT,
                    "version": _STRING,
                    "config": _object(
                        {
                            "max_chunk_length": {"type": "integer"},
                            "max_total_length": {"type": "integer"},
                            "voice_sample_path": _nullable(_STRING),
                            "default_exaggeration": _NUMBER,
                            "default_cfg_weight": _NUMBER,
                            "default_temperature": _NUMBER,
                        }
                    ),
                    "memory_info": _schema("MemoryInfo"),
                }
            ),
            "Ping": _object({"status": {"const": "ok"}, "message": {"const": "pong"}, "timestamp": _TIME}),
            "ModelList": _object(
                {
                    "object": {"const": "list"},
                    "data": {
                        "type": "array",
                        "items": _object(
                            {"id": _STRING, "object": {"const": "model"}, "created": _INT, "owned_by": _STRING}
                        ),
                    },
                }
            ),
            "Config": _object(
                {
                    "server": _object({"host": _STRING, "port": {"type": "integer"}, "version": _STRING}),
                    "model": _object(
                        {
                            "engine": _STRING,
                            "requested_engine": _STRING,
                            "device": _STRING,
                            "voice_sample_path": _nullable(_STRING),
                            "model_cache_dir": _STRING,
                        }
                    ),
                    "defaults": _object(
                        {
                            "exaggeration": _NUMBER,
                            "cfg_weight": _NUMBER,
                            "temperature": _NUMBER,
                            "max_chunk_length": {"type": "integer"},
                            "max_total_length": {"type": "integer"},
                        }
                    ),
                    "memory_management": _object({"enable_memory_monitoring": {"type": "boolean"}}),
                    "limits": _object(
                        {
                            "max_queue_size": {"type": "integer"},
                            "history_size": {"type": "integer"},
                            "max_body_size": {"type": "integer"},
                        }
                    ),
                    "cors_origins": _STRING,
                }
            ),
            "Voice": _object(
                {
                    "name": _STRING,
                    "filename": _STRING,
                    "original_filename": _STRING,
                    "file_extension": {"type": "string", "pattern": "^\\."},
                    "file_size": _INT,
                    "upload_date": _STRING,
                    "language": _STRING,
                    "aliases": {"type": "array", "items": _STRING},
                    "duration": _NUMBER,
                    "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                }
            ),
            "VoiceList": _object({"voices": {"type": "array", "items": _schema("Voice")}, "count": _INT}),
            "VoiceCreated": _object({"message": _STRING, "voice": _schema("Voice")}),
            "DefaultVoice": {
                "oneOf": [
                    _object({"default_voice": {"type": "null"}, "source": {"const": "file_system"}}),
                    _object(
                        {"default_voice": _STRING, "source": {"const": "voice_library"}, "voice_info": _schema("Voice")}
                    ),
                ]
            },
            "DefaultVoiceSet": _object({"message": _STRING, "default_voice": _STRING, "voice_info": _schema("Voice")}),
            "DefaultVoiceCleared": _object(
                {"message": _STRING, "default_voice": {"type": "null"}, "source": {"const": "file_system"}}
            ),
            "VoiceNames": _object({"voice_names": {"type": "array", "items": _STRING}, "count": _INT}),
            "VoicesCleanup": _object(
                {"message": _STRING, "removed_voices": {"type": "array", "items": _STRING}, "count": _INT}
            ),
            "VoiceDetail": _object({"voice": _schema("Voice")}),
            "VoiceRenamed": _object(
                {"message": _STRING, "old_name": _STRING, "new_name": _STRING, "voice": _schema("Voice")}
            ),
            "VoiceDeleted": _object({"message": _STRING, "voice_name": _STRING}),
            "VoiceAliases": _object(
                {"voice_name": _STRING, "aliases": {"type": "array", "items": _STRING}, "count": _INT}
            ),
            "AliasChanged": _object(
                {
                    "message": _STRING,
                    "voice_name": _STRING,
                    "alias": _STRING,
                    "aliases": {"type": "array", "items": _STRING},
                }
            ),
        }
    )
    responses = {
        name: _json(
            _schema("Error"),
            description,
            RETRY_AFTER_HEADER if status == 429 else ({"Allow": {"schema": _STRING}} if status == 405 else None),
        )
        for status, name, description in (
            (400, "BadRequest", "Bad input: a field, query parameter or body the server cannot use"),
            (401, "Unauthorized", "Missing or wrong API key (only when the server has API_KEY set)"),
            (404, "NotFound", "No such route, voice or request"),
            (405, "MethodNotAllowed", "The path exists but not with this method; Allow lists the methods"),
            (409, "Conflict", "Cancelled, already finished, or a name or request id already in use"),
            (413, "PayloadTooLarge", "The body is larger than MAX_BODY_SIZE"),
            (415, "UnsupportedMediaType", "The body's Content-Type is not one this operation reads"),
            (429, "TooManyRequests", "The queue is full, or too many event streams are open"),
            (500, "InternalError", "Generation failed"),
            (503, "ServiceUnavailable", "The engine failed to load, or the server is shutting down"),
        )
    }
    return {
        "schemas": schemas,
        "responses": responses,
        "securitySchemes": {
            "bearerAuth": {
                "type": "http",
                "scheme": "bearer",
                "description": "The server's API_KEY; needed only when the server has one",
            },
            "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            "apiKeyQuery": {
                "type": "apiKey",
                "in": "query",
                "name": "api_key",
                "description": "For EventSource, which cannot send headers",
            },
        },
    }


def _event(types: list[str], data: dict[str, Any], with_id: bool) -> dict[str, Any]:
    """One Server-Sent Event (how OpenAPI 3.1 tools read an event stream's schema: per event)."""
    required: dict[str, Any] = {
        "event": {"enum": types},
        "data": {"type": "string", "contentMediaType": JSON, "contentSchema": data},
    }
    if with_id:
        required["id"] = {"type": "string", "pattern": "^[0-9]+$", "description": "Increasing across the server"}
    return {
        **_object(required, {} if with_id else {"id": _STRING}),
        "description": "One event of the stream: its `event` type and its JSON `data`",
    }


def _progress_properties() -> dict[str, Any]:
    return {
        "current_chunk": _INT,
        "total_chunks": _INT,
        "current_step": _STRING,
        "progress_percentage": {"type": "number", "minimum": 0, "maximum": 100},
        "estimated_completion": _nullable(_TIME),
    }


def _record_properties() -> dict[str, Any]:
    return {
        "request_id": _STRING,
        "status": {"enum": RECORD_STATUSES},
        "start_time": _TIME,
        "end_time": _nullable(_TIME),
        "duration_seconds": {"type": "number", "minimum": 0},
        "text_length": _INT,
        "text_preview": _STRING,
        "voice_source": _STRING,
        "parameters": {
            "type": "object",
            "properties": {
                "exaggeration": _NUMBER,
                "cfg_weight": _NUMBER,
                "temperature": _NUMBER,
                "speed": _NUMBER,
                "seed": _nullable({"type": "integer"}),
                "voice": _STRING,
                "response_format": _STRING,
            },
        },
        "progress": _schema("ProgressFields"),
    }


def _statistics_properties() -> dict[str, Any]:
    return {
        "total_requests": _INT,
        "completed_requests": _INT,
        "error_requests": _INT,
        "cancelled_requests": _INT,
        "success_rate": {"type": "number", "minimum": 0, "maximum": 100},
        "average_duration_seconds": {"type": "number", "minimum": 0},
        "average_text_length": {"type": "number", "minimum": 0},
        "is_processing": {"type": "boolean"},
    }


def _status_sections() -> dict[str, Any]:
    return {
        "memory_info": _schema("MemoryInfo"),
        "request_history": {"type": "array", "items": _schema("RequestRecord"), "maxItems": 20},
        "statistics": _schema("Statistics"),
    }


def _speech_request_schema(max_total_length: int, schemas: dict[str, Any]) -> dict[str, Any]:
    """SpeechRequest's own JSON schema, with the checks made after parsing written into it."""
    schema = SpeechRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(schema.pop("$defs", {}))
    properties = schema["properties"]
    properties["input"].update(
        minLength=1,
        maxLength=max_total_length,
        description=f"The text to speak: up to MAX_TOTAL_LENGTH ({max_total_length}) characters, not only blanks",
    )
    properties["response_format"] = {
        "anyOf": [{"enum": list(audio.FORMATS)}, {"type": "null"}],
        "default": None,
        "description": "The audio format; unset means DEFAULT_RESPONSE_FORMAT (wav unless configured)",
    }
    properties["voice"]["description"] = (
        "An OpenAI voice name or 'default' (the default voice), or a voice of the library (404 if unknown)"
    )
    properties["model"]["description"] = "Accepted, any name: the server runs one engine"
    properties["instructions"]["description"] = "Accepted, not used"
    return schema


def _form_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """The same fields as form text: no nulls (an empty field means unset)."""
    form = copy.deepcopy(schema)
    form.pop("title", None)
    form["description"] = "The speech fields as form fields; numbers as text, empty fields mean unset"
    required = set(form.get("required", ()))
    for name, prop in form["properties"].items():
        options = prop.get("anyOf", [{k: v for k, v in prop.items() if k not in _ANNOTATIONS}])
        kept = [o for o in options if o.get("type") != "null"]
        notes = {k: v for k, v in prop.items() if k in _ANNOTATIONS and k != "default"}
        if name not in required:
            kept.append({"const": "", "description": "unset"})
        form["properties"][name] = {**notes, **kept[0]} if len(kept) == 1 else {**notes, "anyOf": kept}
    return form


_ANNOTATIONS = frozenset({"title", "description", "default", "examples"})


def _with_file(schema: dict[str, Any], name: str, description: str) -> dict[str, Any]:
    schema["properties"][name] = {
        "type": "string",
        "format": "binary",
        "contentMediaType": "application/octet-stream",
        "description": description,
    }
    return schema


def all_paths(doc: dict[str, Any]) -> Iterable[tuple[str, str]]:
    """(METHOD, path) of every operation in a document."""
    for path, item in doc.get("paths", {}).items():
        for method in item:
            if method in ("get", "put", "post", "delete", "patch", "options", "head", "trace"):
                yield method.upper(), path
