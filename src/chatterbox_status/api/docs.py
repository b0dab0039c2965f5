"""GET /openapi.json (alias /v1/openapi.json): the OpenAPI 3.1 document of this app.

The document is built from the app's own router on the first request and kept for the
app's lifetime: routes and settings cannot change once the app runs.
"""

from __future__ import annotations

import json
import weakref

from aiohttp import web

from ..schemas.meta import OpenApiDocument
from .openapi import document
from .routing import Reply, api_route

routes = web.RouteTableDef()

# One encoded document per application; it goes when its app goes.
_documents: weakref.WeakKeyDictionary[web.Application, bytes] = weakref.WeakKeyDictionary()


@api_route(
    routes, "GET", "/openapi.json", "/v1/openapi.json",
    operation_id="getOpenApi", summary="This document", tag="service", responses={200: Reply("OpenAPI 3.1", OpenApiDocument)},
)
async def openapi_json(request: web.Request) -> web.Response:
    app = request.app
    body = _documents.get(app)
    if body is None:
        body = _documents[app] = json.dumps(document(app), ensure_ascii=False).encode("utf-8")
    return web.Response(body=body, content_type="application/json", charset="utf-8")
