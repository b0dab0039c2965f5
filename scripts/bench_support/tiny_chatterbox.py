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


def checkpoint(kind: str, directory: Path) -> Path:
    """The tiny checkpoint of ``kind`` in ``directory``, built there the first time."""
    tests_on_path()
    if directory.is_dir() and any(directory.iterdir()):
        return directory
    from chatterbox_support import tiny_model

    return tiny_model.build_checkpoint(kind, directory)


def engine(kind: str, directory: Path):
    """The engine object, for the benchmark's direct-call baseline in its own process."""
    tests_on_path()
    from chatterbox_support.harness import TinyChatterboxEngine

    return TinyChatterboxEngine(kind, directory)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", default="chatterbox", choices=("chatterbox", "chatterbox-multilingual", "chatterbox-turbo"))
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    tests_on_path()
    folder = checkpoint(args.kind, args.checkpoint)

    from aiohttp import web

    from chatterbox_status.app import create_app
    from chatterbox_status.config import Settings
    from chatterbox_status.supervisor import EngineFacts, EngineProcess, EngineSpec

    settings = Settings.load([], os.environ)
    facts = EngineFacts.of(engine(args.kind, folder))
    host = EngineProcess(EngineSpec(SPEC, {"kind": args.kind, "checkpoint_dir": str(folder)}), facts, settings.engine_threads)
    web.run_app(create_app(settings, host), host="127.0.0.1", port=args.port, print=None, access_log=None, handler_cancellation=True)


if __name__ == "__main__":
    main()
