"""Routes with their documentation: one decorator registers a handler under its paths
(the first is canonical, the others are aliases) and attaches what it does, so a route
cannot be served without being described, and the OpenAPI document reads nothing else.

Bodies and responses are the pydantic models of ``schemas``; errors are named by their
domain exception classes (``errors.ERROR_TABLE`` gives the status) or, for what only HTTP
refuses, by status code.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel

from ..exceptions import Refusal

H = TypeVar("H", bound=Callable[..., Any])
JSON = "application/json"
EVENT_STREAM = "text/event-stream"
OPERATION = "__api_operation__"
# The longest ``input`` an app accepts in a body, for the document to state it.
InputLimit = Callable[[web.Application], int]


@dataclass(frozen=True)
class Form:
    """A form body (multipart, and urlencoded unless ``multipart_only``).

    ``as_text``: every field arrives as text and an empty field means unset (bodies.parse_form).
    ``file``: a file part beside the model's fields (in multipart only); ``required``: whether
    a body must come at all.
    """

    model: type[BaseModel]
    description: str | None = None
    file: tuple[str, str] | None = None  # (field name, description)
    file_required: bool = False
    as_text: bool = False
    multipart_only: bool = False
    required: bool = True
    input_limit: InputLimit | None = None


@dataclass(frozen=True)
class Json:
    """A JSON object body; an optional one may be left out entirely."""

    model: type[BaseModel]
    required: bool = True
    input_limit: InputLimit | None = None


@dataclass(frozen=True)
class Events:
    """A Server-Sent Events stream: each event's name and the model of its JSON data."""

    events: Mapping[str, type[BaseModel] | tuple[type[BaseModel], ...]]
    with_id: bool = False


@dataclass(frozen=True)
class Reply:
    """A response: a JSON model, binary media, an event stream, or a mix of them."""

    description: str
    model: type[BaseModel] | None = None
    media: tuple[str, ...] = ()
    events: Events | None = None
    headers: Mapping[str, str] = field(default_factory=dict)  # name -> description


@dataclass(frozen=True)
class Param:
    """A query or header parameter (path parameters come from the path)."""

    name: str
    schema: Mapping[str, Any]
    description: str
    where: str = "query"


@dataclass(frozen=True)
class Operation:
    """What one handler does, whatever path it is reached by."""

    operation_id: str
    summary: str
    tag: str
    responses: Mapping[int, Reply | type[BaseModel]]
    body: Json | Form | None = None
    errors: tuple[type[Refusal] | int, ...] = ()
    params: tuple[Param, ...] = ()
    path_params: Mapping[str, str] = field(default_factory=dict)  # name -> description
    description: str | None = None


def api_route(
    routes: web.RouteTableDef,
    method: str,
    *paths: str,
    summary: str,
    tag: str,
    responses: Mapping[int, Reply | type[BaseModel]],
    body: Json | Form | type[BaseModel] | None = None,
    errors: tuple[type[Refusal] | int, ...] = (),
    params: tuple[Param, ...] = (),
    path_params: Mapping[str, str] | None = None,
    description: str | None = None,
    operation_id: str | None = None,
) -> Callable[[H], H]:
    """Register the handler under every path and attach its operation.

    The operationId is the handler's name in camelCase unless given.
    """
    if not paths:
        raise ValueError("api_route needs at least one path")

    def register(handler: H) -> H:
        setattr(
            handler,
            OPERATION,
            Operation(
                operation_id=operation_id or _camel(handler.__name__),
                summary=summary,
                tag=tag,
                responses=responses,
                body=Json(body) if isinstance(body, type) else body,
                errors=errors,
                params=params,
                path_params=path_params or {},
                description=description,
            ),
        )
        for path in paths:
            routes.route(method, path)(handler)
        return handler

    return register


def with_v1(*paths: str) -> list[str]:
    """Each path, then the same under /v1 (chatterbox-tts-api answers on both)."""
    return [prefixed for path in paths for prefixed in (path, f"/v1{path}")]


def operation_of(handler: Any) -> Operation | None:
    return getattr(handler, OPERATION, None)


def dump(model: BaseModel) -> Any:
    """The model as JSON data: exactly the fields it was given, nothing defaulted in."""
    return model.model_dump(mode="json", exclude_unset=True)


def json_model(model: BaseModel, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    """A JSON response whose body is the model."""
    return web.json_response(dump(model), status=status, headers=headers)


def event_data(model: BaseModel) -> str:
    """The model as a Server-Sent Event's data."""
    return json.dumps(dump(model))


def _camel(name: str) -> str:
    first, *rest = name.split("_")
    return first + "".join(part.capitalize() for part in rest)
