"""An engine worker of the cluster (the product's own ``engine_worker.serve``) whose engine's
work is a fixed sleep per chunk, so the workers phase of scripts/bench measures the cluster's
coordination (the shared queue, Redis, the node), not this machine's cores.

    python scripts/bench_support/sleep_worker.py SECONDS --redis-url URL
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: the engine process imports this module

from chatterbox_status.config import Settings  # noqa: E402
from chatterbox_status.engines.base import SynthesisParams, Voice  # noqa: E402
from chatterbox_status.exceptions import Cancelled  # noqa: E402
from chatterbox_status.supervisor import EngineFacts, EngineProcess, EngineSpec  # noqa: E402


class SleepEngine:
    """Named as the node's engine (hibari); each chunk sleeps ``seconds`` (cancellable) and
    speaks one second of silence."""

    name = "hibari"
    device = "cpu"
    supports_cloning = False
    speed_range = None
    languages = {"en": "English"}
    sample_rate = 24_000
    max_batch_size = 1

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def load(self, progress) -> None:
        progress(1.0)

    def synthesize(self, text: str, voice: Voice, params: SynthesisParams, progress, cancel: threading.Event, on_audio=None) -> np.ndarray:
        if cancel.wait(self.seconds):  # the chunk's fixed work, cut short by a cancellation
            raise Cancelled()
        progress(1.0)
        return np.zeros(self.sample_rate, dtype=np.float32)


def main(seconds: float, settings: Settings) -> None:
    from chatterbox_status.engine_worker import serve

    spec = EngineSpec(f"bench_support.sleep_worker:{SleepEngine.__name__}", {"seconds": seconds})
    host = EngineProcess(spec, EngineFacts.of(SleepEngine(seconds)), threads=1)
    asyncio.run(serve(settings, [host]))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    main(float(sys.argv[1]), Settings.load(sys.argv[2:]))
