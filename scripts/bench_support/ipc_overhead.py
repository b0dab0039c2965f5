"""What crossing into the engine process costs a chunk: a fixed tone engine called
directly, and the same engine behind EngineProcess, median of 20 calls per size.

    .venv/bin/python -m scripts.bench_support.ipc_overhead    # from the repository root
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time

import numpy as np

from chatterbox_status.engine_pool import CancelFlag
from chatterbox_status.engines.base import SynthesisParams, Voice
from chatterbox_status.supervisor import EngineFacts, EngineProcess, EngineSpec

RATE = 24_000
CALLS = 20


class SilenceEngine:
    """Returns ``seconds`` (the text, as a number) of 24 kHz float32 audio, at once."""

    name = "silence"
    sample_rate = RATE
    device = "cpu"
    supports_cloning = False
    languages = {"en": "English"}
    speed_range = None
    max_batch_size = 1

    def load(self, progress) -> None:
        progress(1.0)

    def synthesize(self, text, voice, params, progress, cancel) -> np.ndarray:
        return np.zeros(int(float(text) * RATE), dtype=np.float32)


async def main() -> None:
    facts = EngineFacts("silence", RATE, "cpu", False, {"en": "English"}, None)
    host = EngineProcess(EngineSpec("scripts.bench_support.ipc_overhead:SilenceEngine"), facts, threads=1)
    await host.load(lambda fraction: None)
    direct = SilenceEngine()
    params = SynthesisParams(exaggeration=0.5, cfg_weight=0.5, temperature=0.8)
    try:
        for seconds in (5.0, 60.0):
            alone, crossed = [], []
            for _ in range(CALLS):
                started = time.perf_counter()
                direct.synthesize(str(seconds), Voice(), params, lambda f: None, threading.Event())
                alone.append(time.perf_counter() - started)
                started = time.perf_counter()
                await host.synthesize(str(seconds), Voice(), params, lambda f: None, CancelFlag())
                crossed.append(time.perf_counter() - started)
            overhead = statistics.median(crossed) - statistics.median(alone)
            print(f"{seconds:g} s of audio ({seconds * RATE * 4 / 1e6:.1f} MB): {overhead * 1e3:.2f} ms a chunk through the engine process")
    finally:
        await host.close()


if __name__ == "__main__":
    asyncio.run(main())
