"""`chatterbox-status serve|worker|say`: run the server, or one engine worker of a cluster,
or speak one text into a file."""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from pydantic import ValidationError

from . import __version__
from .config import Settings, SettingsError, add_arguments
from .exceptions import InvalidInput
from .schemas import first_problem

log = logging.getLogger("chatterbox_status")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chatterbox-status", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the HTTP server")
    add_arguments(serve)
    worker = commands.add_parser(
        "worker", help="run one engine worker of a cluster (REDIS_URL; DEVICE picks its GPU): it takes chunks from the shared queue"
    )
    add_arguments(worker)
    say = commands.add_parser("say", help="speak TEXT into a file, with a progress bar")
    say.add_argument("text", help="what to say ('-' reads standard input)")
    say.add_argument("-o", "--output", required=True, help="file to write; its extension picks the format (wav, pcm)")
    say.add_argument("--voice", default="default", help="voice name (default: the engine's default voice)")
    say.add_argument("--speed", type=float, default=1.0, help="tempo factor")
    say.add_argument("--seed", type=int, default=None, help="seed for reproducible output")
    add_arguments(say)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_sources(vars(args), os.environ)
    except SettingsError as exc:
        print(f"chatterbox-status: invalid setting: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "serve":
            return serve(settings)
        if args.command == "worker":
            return worker(settings)
        return asyncio.run(say(settings, args))
    except SettingsError as exc:
        print(f"chatterbox-status: invalid setting: {exc}", file=sys.stderr)
        return 2


def serve(settings: Settings) -> int:
    """Bind first, so a taken port fails at once instead of after the model loaded."""
    from .app import create_app
    from .protocol import run_app

    port = settings.port
    try:
        sock = socket.create_server((settings.host, port))
        if settings.wyoming_port:
            # The Wyoming server binds as the app starts; a taken port is reported here first.
            port = settings.wyoming_port
            socket.create_server((settings.host, port)).close()
    except OSError as exc:
        reason = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
        print(f"chatterbox-status: cannot listen on {settings.host}:{port}: {reason}", file=sys.stderr)
        return 1
    app = create_app(settings)
    log.info("chatterbox-status %s listening on http://%s:%d", __version__, settings.host, settings.port)
    # aiohttp's run_app, with the runner whose own protocol errors are JSON (protocol.py)
    run_app(app, sock, access_log=None, handler_cancellation=True)
    return 0


def worker(settings: Settings) -> int:
    from .engine_worker import serve as serve_worker

    if not settings.redis_url:
        print("chatterbox-status: invalid setting: a worker takes its chunks from REDIS_URL (--redis-url), which is not set", file=sys.stderr)
        return 2
    asyncio.run(serve_worker(settings))
    return 0


class ProgressBar:
    """Draws a request's progress from bus events on a terminal line."""

    WIDTH = 30

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def __call__(self, event) -> None:
        if event.type not in ("status", "progress"):
            return
        data = event.data
        pct = float(data.get("progress_percentage") or 0.0)
        filled = int(self.WIDTH * pct / 100)
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        self.stream.write(f"\r[{bar}] {pct:5.1f}% {data.get('current_step', '')[:40]:<40}")
        if data["status"] in ("completed", "error", "cancelled"):
            self.stream.write("\n")
        self.stream.flush()


async def say(settings: Settings, args: argparse.Namespace) -> int:
    from .core import Core
    from .schemas.speech import SpeechRequest

    text = sys.stdin.read() if args.text == "-" else args.text
    output = Path(args.output)
    response_format = output.suffix.lstrip(".").lower() or "wav"
    core = Core(settings)
    core.bus.add_listener(ProgressBar(sys.stderr))
    await core.start()
    try:
        body = SpeechRequest.model_validate(
            {"input": text, "voice": args.voice, "speed": args.speed, "seed": args.seed, "response_format": response_format}
        )
        speech = core.planner.speech(body, settings.max_total_length)
        job = core.submit("cli-" + os.urandom(4).hex(), speech)
        data = await job.result
    except ValidationError as exc:
        print(f"chatterbox-status: {first_problem(exc)[1]}", file=sys.stderr)
        return 2
    except InvalidInput as exc:
        print(f"chatterbox-status: {exc.message}", file=sys.stderr)
        return 2
    except Exception as exc:
        print(f"chatterbox-status: {exc}", file=sys.stderr)
        return 1
    finally:
        await core.stop()
    output.write_bytes(data)
    print(f"wrote {output} ({len(data)} bytes)", file=sys.stderr)
    return 0
