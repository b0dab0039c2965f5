"""The baseline for the polling benchmark: a bare aiohttp server with one handler.

It answers ``GET /status/progress`` with a fixed JSON object (a copy of a real busy
/status/progress body, so the bytes on the wire are the same), serialised on every
request with ``web.json_response`` as the real handler does, and nothing else: no
middlewares, no other routes, no application state. It binds and runs the way
``chatterbox-status serve`` does (a pre-bound socket, no access log, handler
cancellation on), so the difference measured is the product's own cost.

    python bare_server.py --port N --body-file body.json
"""

from __future__ import annotations

import argparse
import json
import socket
import sys

from aiohttp import web


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--body-file", required=True, help="a JSON object to answer with")
    args = parser.parse_args(argv)
    with open(args.body_file, encoding="utf-8") as handle:
        body = json.load(handle)

    async def progress(request: web.Request) -> web.Response:
        return web.json_response(body)

    app = web.Application()
    app.router.add_get("/status/progress", progress)
    try:
        sock = socket.create_server((args.host, args.port))
    except OSError as exc:
        print(f"bare_server: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    web.run_app(app, sock=sock, print=None, access_log=None, handler_cancellation=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
