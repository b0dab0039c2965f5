"""The server on the tests' tiny random-weight Chatterbox checkpoint, for ``scripts/bench
--tiny-chatterbox KIND``: the real chatterbox-tts code (tiny T3, full-size S3Gen) behind the
product's engine process, since no real weights can be downloaded here.

    python -m scripts.bench_support.tiny_chatterbox --kind chatterbox --checkpoint DIR --port N

builds the checkpoint into DIR when it is empty (tests/chatterbox_support/tiny_model.py) and
serves the app with ``chatterbox_support.harness.TinyChatterboxEngine`` (the product's
ChatterboxEngine, loading the tiny T3 config) in its engine process. Needs the chatterbox tox
env's interpreter (torch and chatterbox-tts installed).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SPEC = "chatterbox_support.harness:TinyChatterboxEngine"


def tests_on_path() -> None:
    """tests/ on this process's path, and on the engine process's (it gets this sys.path)."""
    tests = str(REPO / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)


def checkpoint(kind: str, directory: Path, full_size: bool = False) -> Path:
    """The random-weight checkpoint of ``kind`` in ``directory`` (tiny, or the real model's
    size), built there the first time."""
    tests_on_path()
    if directory.is_dir() and any(directory.iterdir()):
        return directory
    from chatterbox_support import tiny_model

    # A full-size model's chunk stops after about 6 s of speech (150 tokens), as a chunk of
    # about 100 characters does; the tiny one's after 20 tokens, as in the tests.
    return tiny_model.build_checkpoint(kind, directory, full_size=full_size, stop_after=150 if full_size else 20)


def engine(kind: str, directory: Path, device: str = "auto", max_batch_size: int = 0):
    """The engine object, for the benchmark's direct-call baseline in its own process."""
    tests_on_path()
    from chatterbox_support.harness import TinyChatterboxEngine

    return TinyChatterboxEngine(kind, directory, device, max_batch_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", default="chatterbox", choices=("chatterbox", "chatterbox-multilingual", "chatterbox-turbo"))
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    args, server_flags = parser.parse_known_args()  # the rest: `chatterbox-status serve` flags (--device, --max-batch-size)
    tests_on_path()
    folder = checkpoint(args.kind, args.checkpoint)

    from aiohttp import web

    from chatterbox_status.app import create_app
    from chatterbox_status.config import Settings
    from chatterbox_status.supervisor import EngineFacts, EngineSpec, hosted

    settings = Settings.load(server_flags, os.environ)
    kwargs = {"kind": args.kind, "checkpoint_dir": str(folder), "device": settings.device, "max_batch_size": settings.max_batch_size}
    facts = EngineFacts.of(engine(args.kind, folder, settings.device, settings.max_batch_size))
    host = hosted(EngineSpec(SPEC, kwargs), facts, settings)
    web.run_app(create_app(settings, host), host="127.0.0.1", port=args.port, print=None, access_log=None, handler_cancellation=True)


if __name__ == "__main__":
    main()
