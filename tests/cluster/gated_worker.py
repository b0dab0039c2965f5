"""One engine worker of the cluster, the product's own (``engine_worker.serve``, as
``chatterbox-status worker`` runs it), whose engine is the test double
``doubles.GatedEngine`` named ``hibari`` (the nodes' engine) in an engine process of its own:
a chunk whose text holds HOLD reports a first progress, then waits until the gate file exists.

    python tests/cluster/gated_worker.py GATE [--ignore-cancel] [--streams] --redis-url URL [setting flags]

``--ignore-cancel``: a HOLD chunk hangs through its cancellation; ``--streams``: each chunk's
audio comes out in windows (ScriptedEngine's thirds).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the engine process imports doubles too

from doubles import GatedEngine, in_process_of_its_own  # noqa: E402

from chatterbox_status.config import Settings  # noqa: E402
from chatterbox_status.engine_worker import serve  # noqa: E402


async def main(gate: str, ignore_cancel: bool, streams: bool, settings: Settings) -> None:
    host = in_process_of_its_own(GatedEngine, gate=gate, name="hibari", ignore_cancel=ignore_cancel, streams=streams)
    await serve(settings, [host])


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser()
    parser.add_argument("gate")
    parser.add_argument("--ignore-cancel", action="store_true")
    parser.add_argument("--streams", action="store_true")
    args, settings = parser.parse_known_args()
    asyncio.run(main(args.gate, args.ignore_cancel, args.streams, Settings.load(settings)))
