"""The OpenAPI 3.1 document of an app, generated from the routes it serves and the models
its handlers read and answer with.

``document(app)`` walks ``app.router``: every route's handler carries the operation that
``routing.api_route`` attached beside it, and a route without one is an error (static
files aside), so nothing can be served undocumented. The first path of a handler is its
operation; the others are aliases, with ``x-alias-of`` pointing back. Bodies, responses and
event data are pydantic models, rendered once under ``components.schemas``; errors come
from the domain exception classes through ``errors.ERROR_TABLE``.

The document describes the app as configured: the ``input`` limits come from the
settings, and with API_KEY set the protected operations need a key and may answer 401.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from .. import __version__
from ..auth import OPEN_PATHS, OPEN_PREFIXES
from ..errors import kind_of
from ..schemas.errors import Error
from ..state import SETTINGS
from .routing import EVENT_STREAM, JSON, Events, Form, Json, Operation, Param, Reply, operation_of

OPENAPI_VERSION = "3.1.0"
MULTIPART = "multipart/form-data"
URLENCODED = "application/x-www-form-urlencoded"
REF = "#/components/schemas/{model}"

# What each error status means anywhere in this API (the operation says which it may answer).
ERROR_RESPONSES = {
    400: ("BadRequest", "Bad input: a field, query parameter or body the server cannot use"),
    401: ("Unauthorized", "Missing or wrong API key (only when the server has API_KEY set)"),
    403: ("Forbidden", "The Host does not name this server (ALLOWED_HOSTS), or a page of another site sent a change"),
    404: ("NotFound", "No such route, voice, request or job"),
    405: ("MethodNotAllowed", "The path exists but not with this method; Allow lists the methods"),
    408: ("RequestTimeout", "The body did not arrive within BODY_READ_TIMEOUT"),
    409: ("Conflict", "Cancelled, already finished, or a name or request id already in use"),
    413: ("PayloadTooLarge", "The body is larger than MAX_BODY_SIZE"),
    415: ("UnsupportedMediaType", "The body's Content-Type is not one this operation reads"),
    416: ("RangeNotSatisfiable", "The Range asks for no byte of the file"),
    429: ("TooManyRequests", "The queue is full, too many event streams are open, or too many wrong API keys"),
    500: ("InternalError", "Generation failed"),
    503: ("ServiceUnavailable", "The engine failed to load, or the server is shutting down"),
    507: ("InsufficientStorage", "The disk, or LONG_TEXT_MAX_DISK_MB, is full"),
}
ERROR_HEADERS = {
    405: {"Allow": {"description": "The methods the path answers", "schema": {"type": "string"}}},
    429: {"Retry-After": {"description": "Seconds to wait before trying again", "schema": {"type": "string"}}},
}
BODY_ERRORS = (400, 408, 413, 415)

TAGS = [
    {"name": "speech", "description": "OpenAI's speech API, streaming and cancellation"},
    {"name": "status", "description": "The status API: polling endpoints"},
    {"name": "events", "description": "Push progress over Server-Sent Events"},
    {"name": "voices", "description": "The voice library (chatterbox-tts-api's routes)"},
    {"name": "service", "description": "Health, liveness, models, settings, metrics and this document"},
    {"name": "dashboard", "description": "The browser dashboard"},
    {"name": "long-text", "description": "Long texts spoken in the background (chatterbox-tts-api's /audio/speech/long)"},
]

DESCRIPTION = (
    "Speaks OpenAI's `/v1/audio/speech` API, answers on chatterbox-tts-api's paths, and tracks every request "
    "from `queued` to `completed`.\n\n"
    "Most operations answer under several paths (aliases); an alias's operation carries `x-alias-of` with the "
    "path of the operation it repeats.\n\n"
    "Every error, validation included, is `{\"error\": {\"message\", \"type\", \"param\", \"code\"}}` with an honest "
    "status: 400 bad input, 401 missing or bad API key (only when the server has API_KEY set), 403 a Host that "
    "does not name this server or a change sent by another site's page, 404 unknown route, voice or request, "
    "405 wrong method (with `Allow`), 408 body too slow, 409 conflict, 413 body too large, 415 wrong content "
    "type, 416 unsatisfiable range, 429 queue full, too many streams or too many wrong keys (with "
    "`Retry-After`), 500 generation failed, 503 engine unavailable or shutting down, 507 out of space."
)

SECURITY_SCHEMES = {
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
}


class UndocumentedRoute(RuntimeError):
    """A route registered without ``routing.api_route``."""


def documented_routes(app: web.Application) -> list[tuple[str, str, web.AbstractRoute, Operation]]:
    """(method, path, route, operation) of every route the document describes, in router order.

    HEAD (aiohttp adds it to GETs) and static files are left out; any other route must
    carry an operation.
    """
    found = []
    for route in app.router.routes():
        resource = route.resource
        if route.method in ("HEAD", "*") or resource is None or isinstance(resource, web.StaticResource):
            continue
        operation = operation_of(route.handler)
        if operation is None:
            raise UndocumentedRoute(
                f"{route.method} {resource.canonical} ({route.handler!r}) is not registered with api_route"
            )
        found.append((route.method, resource.canonical, route, operation))
    return found


def document(app: web.Application) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every route ``app`` serves."""
    settings = app[SETTINGS]
    protected = bool(settings.api_key)
    routes = documented_routes(app)
    schemas = _Schemas(app, [operation for *_, operation in routes])
    resources = list(app.router.resources())

    ids = [operation.operation_id for operation in {id(op): op for *_, op in routes}.values()]
    duplicates = {i for i in ids if ids.count(i) > 1}
    if duplicates:
        raise ValueError(f"operationIds used by more than one handler: {sorted(duplicates)}")
    taken = set(ids)
    first_paths: dict[tuple[str, int], str] = {}
    paths: dict[str, dict[str, Any]] = {}
    for method, path, route, operation in routes:
        first = first_paths.setdefault((method, id(route.handler)), path)
        rendered = _render(operation, schemas, route, resources, protected and not _is_open(path), _is_open(path))
        if first != path:
            rendered["operationId"] = _unique(f"{operation.operation_id}__{_slug(path)}", taken)
            rendered["x-alias-of"] = first
            rendered["summary"] = f"{operation.summary} (alias of {first})"
            paths[first][method.lower()].setdefault("x-aliases", []).append(path)
        paths.setdefault(path, {})[method.lower()] = rendered

    doc: dict[str, Any] = {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "chatterbox-status",
            "version": __version__,
            "summary": "Text-to-speech for Chatterbox with real-time status tracking",
            "description": DESCRIPTION,
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "tags": TAGS,
        "paths": paths,
        "components": {
            "schemas": schemas.components,
            "responses": {name: _error_response(status) for status, (name, _) in ERROR_RESPONSES.items()},
            "securitySchemes": SECURITY_SCHEMES,
        },
    }
    if protected:
        doc["security"] = [{"bearerAuth": []}, {"apiKeyHeader": []}, {"apiKeyQuery": []}]
    else:
        # No API_KEY on this server: a key is accepted by clients' habit and never needed.
        doc["security"] = [{}, {"bearerAuth": []}]
    return doc


def all_paths(doc: dict[str, Any]) -> Iterable[tuple[str, str]]:
    """(METHOD, path) of every operation in a document."""
    for path, item in doc.get("paths", {}).items():
        for method in item:
            if method in ("get", "put", "post", "delete", "patch", "options", "head", "trace"):
                yield method.upper(), path


# -- schemas ----------------------------------------------------------------------------


class _Schemas:
    """Every model the operations name, as components; forms derived from their models."""

    def __init__(self, app: web.Application, operations: list[Operation]) -> None:
        models: dict[type[BaseModel], None] = {Error: None}
        limits: dict[type[BaseModel], int] = {}
        for operation in operations:
            for model in _models(operation):
                models[model] = None
            body = operation.body
            if body is not None and body.input_limit is not None:
                limits[body.model] = body.input_limit(app)
        names = [m.__name__ for m in models]
        clashes = {n for n in names if names.count(n) > 1}
        if clashes:
            raise ValueError(f"schema names used by more than one model: {sorted(clashes)}")
        refs, definitions = models_json_schema([(m, "validation") for m in models], ref_template=REF)
        self.components: dict[str, Any] = definitions.get("$defs", {})
        self._refs = {model: refs[(model, "validation")] for model in models}
        for model, limit in limits.items():
            text = self.components[model.__name__]["properties"]["input"]
            text.update(minLength=1, maxLength=limit, description=f"{text.get('description', 'The text')}: up to {limit} characters, not only blanks")

    def ref(self, model: type[BaseModel]) -> dict[str, Any]:
        return dict(self._refs[model])

    def form(self, body: Form, with_file: bool) -> dict[str, Any]:
        """The form's schema: the model's own, or one derived from it under a name of its own."""
        with_file = with_file and body.file is not None
        if not (body.as_text or with_file):
            return self.ref(body.model)
        name = f"{body.model.__name__}{'Form' if body.as_text else ''}{'WithFile' if with_file else ''}"
        if name not in self.components:
            schema = copy.deepcopy(self.components[body.model.__name__])
            if body.as_text:
                schema = _as_text(schema)
            if with_file:
                assert body.file is not None
                field, description = body.file
                schema["properties"][field] = {
                    "type": "string",
                    "format": "binary",
                    "contentMediaType": "application/octet-stream",
                    "description": description,
                }
                if body.file_required:
                    schema.setdefault("required", []).append(field)
            self.components[name] = schema
        return {"$ref": REF.format(model=name)}


def _models(operation: Operation) -> Iterable[type[BaseModel]]:
    if operation.body is not None:
        yield operation.body.model
    for reply in operation.responses.values():
        reply = _reply(reply)
        if reply.model is not None:
            yield reply.model
        if reply.events is not None:
            for models in reply.events.events.values():
                yield from models if isinstance(models, tuple) else (models,)


_ANNOTATIONS = frozenset({"title", "description", "default", "examples"})


def _as_text(schema: dict[str, Any]) -> dict[str, Any]:
    """The same fields as form text: no nulls (an empty field means unset)."""
    schema.pop("title", None)
    schema["description"] = "The fields as form fields; numbers as text, empty fields mean unset"
    required = set(schema.get("required", ()))
    for name, prop in schema["properties"].items():
        options = prop.get("anyOf", [{k: v for k, v in prop.items() if k not in _ANNOTATIONS}])
        kept = [o for o in options if o.get("type") != "null"]
        notes = {k: v for k, v in prop.items() if k in _ANNOTATIONS and k != "default"}
        if name not in required:
            kept.append({"const": "", "description": "unset"})
        schema["properties"][name] = {**notes, **kept[0]} if len(kept) == 1 else {**notes, "anyOf": kept}
    return schema


# -- operations -------------------------------------------------------------------------


def _reply(reply: Reply | type[BaseModel]) -> Reply:
    if isinstance(reply, Reply):
        return reply
    description = (reply.__doc__ or "").strip().split("\n\n")[0] or f"The {reply.__name__}"
    return Reply(" ".join(description.split()), model=reply)


def _render(
    operation: Operation,
    schemas: _Schemas,
    route: web.AbstractRoute,
    resources: list[web.AbstractResource],
    needs_key: bool,
    open_path: bool,
) -> dict[str, Any]:
    rendered: dict[str, Any] = {
        "operationId": operation.operation_id,
        "summary": operation.summary,
        "tags": [operation.tag],
    }
    if operation.description:
        rendered["description"] = operation.description
    parameters = [*_path_parameters(route, resources, operation), *(_parameter(p) for p in operation.params)]
    if parameters:
        rendered["parameters"] = parameters
    # 403: every request's Host is checked (and a change's Origin), whatever the route.
    statuses = {403, *(kind_of(e).status if isinstance(e, type) else e for e in operation.errors)}
    if operation.body is not None:
        rendered["requestBody"] = _body(operation.body, schemas)
        statuses.update(BODY_ERRORS)
    if needs_key:
        statuses.update((401, 429))  # 429: too many wrong keys from one address
    responses = {str(status): _response(_reply(reply), schemas) for status, reply in operation.responses.items()}
    for status in statuses:
        responses.setdefault(str(status), {"$ref": f"#/components/responses/{ERROR_RESPONSES[status][0]}"})
    rendered["responses"] = dict(sorted(responses.items()))
    if open_path:
        rendered["security"] = [{}]
    return rendered


def _body(body: Json | Form, schemas: _Schemas) -> dict[str, Any]:
    if isinstance(body, Json):
        return {"required": body.required, "content": {JSON: {"schema": schemas.ref(body.model)}}}
    content = {MULTIPART: {"schema": schemas.form(body, with_file=True)}}
    if not body.multipart_only:
        content[URLENCODED] = {"schema": schemas.form(body, with_file=False)}
    rendered: dict[str, Any] = {"required": body.required, "content": content}
    if body.description:
        rendered["description"] = body.description
    return rendered


def _response(reply: Reply, schemas: _Schemas) -> dict[str, Any]:
    content: dict[str, Any] = {}
    if reply.model is not None:
        content[JSON] = {"schema": schemas.ref(reply.model)}
    for media in reply.media:
        content[media] = {"schema": {"type": "string", "format": "binary"}}
    if reply.events is not None:
        content[EVENT_STREAM] = {"schema": _event_stream(reply.events, schemas)}
    rendered: dict[str, Any] = {"description": reply.description}
    if reply.headers:
        rendered["headers"] = {
            name: {"description": description, "schema": {"type": "string"}} for name, description in reply.headers.items()
        }
    if content:
        rendered["content"] = content
    return rendered


def _event_stream(events: Events, schemas: _Schemas) -> dict[str, Any]:
    """One Server-Sent Event (how OpenAPI 3.1 tools read an event stream's schema: per event)."""
    options = []
    for name, models in events.events.items():
        models = models if isinstance(models, tuple) else (models,)
        data = schemas.ref(models[0]) if len(models) == 1 else {"anyOf": [schemas.ref(m) for m in models]}
        properties: dict[str, Any] = {
            "event": {"const": name},
            "data": {"type": "string", "contentMediaType": JSON, "contentSchema": data},
        }
        if events.with_id:
            properties["id"] = {"type": "string", "pattern": "^[0-9]+$", "description": "Increasing across the server"}
        options.append({"type": "object", "properties": properties, "required": list(properties)})
    return {"description": "One event of the stream: its `event` type and its JSON `data`", "oneOf": options}


def _parameter(param: Param) -> dict[str, Any]:
    return {
        "name": param.name,
        "in": param.where,
        "required": False,
        "description": param.description,
        "schema": dict(param.schema),
    }


def _path_parameters(
    route: web.AbstractRoute, resources: list[web.AbstractResource], operation: Operation
) -> list[dict[str, Any]]:
    """The path's {parameters}; values that an earlier fixed path would take instead are excluded."""
    resource = route.resource
    assert resource is not None
    names = re.findall(r"\{([^}:]+)", resource.canonical)
    if not names:
        return []
    shadowed = _shadowed_values(route.method, resource, resources)
    parameters = []
    for name in names:
        schema: dict[str, Any] = {"type": "string", "minLength": 1}
        if shadowed.get(name):
            schema["not"] = {"enum": sorted(shadowed[name])}
        description = operation.path_params.get(name, name)
        parameters.append({"name": name, "in": "path", "required": True, "description": description, "schema": schema})
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
        fixed = other.get_info().get("path")
        if fixed is None or not any(r.method in (method, "*") for r in other):
            continue
        match = pattern.fullmatch(fixed)
        if match:
            for name, value in match.groupdict().items():
                shadowed.setdefault(name, set()).add(value)
    return shadowed


def _error_response(status: int) -> dict[str, Any]:
    description = ERROR_RESPONSES[status][1]
    response: dict[str, Any] = {"description": description, "content": {JSON: {"schema": {"$ref": REF.format(model="Error")}}}}
    if status in ERROR_HEADERS:
        response["headers"] = ERROR_HEADERS[status]
    return response


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
