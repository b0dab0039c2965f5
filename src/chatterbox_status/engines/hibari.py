"""The embedded voice: hibari-tts, a small neural English voice shipped inside its wheel.

It needs no GPU, no network and no download, so the server speaks on any machine. It
cannot clone voices and changes tempo natively between 0.5x and 2x.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import numpy as np

from .base import Cancelled, EngineError, ProgressFn, SynthesisParams, Voice

if TYPE_CHECKING:
    from hibari import Hibari

VOICE = "heart"  # the one voice inside the wheel; the others are downloads


class HibariEngine:
    name = "hibari"
    device = "cpu"
    supports_cloning = False
    speed_range = (0.5, 2.0)
    streams_within_chunk = False  # a chunk takes it well under a second
    max_batch_size = 1  # onnxruntime runs one utterance a call
    languages = {"en": "English"}

    def __init__(self, threads: int = 1) -> None:
        self._threads = threads
        self._tts: Hibari | None = None
        self.sample_rate = 24_000

    def load(self, progress: ProgressFn) -> None:
        from hibari import Hibari

        progress(0.0)
        tts = self._tts = Hibari(voice=VOICE, threads=self._threads)
        self.sample_rate = tts.sample_rate
        progress(1.0)

    def synthesize(
        self,
        text: str,
        voice: Voice,
        params: SynthesisParams,
        progress: ProgressFn,
        cancel: threading.Event,
    ) -> np.ndarray:
        if self._tts is None:
            raise EngineError("hibari engine used before load()")
        if voice.path is not None:
            raise EngineError("the hibari engine cannot clone voices")
        if cancel.is_set():
            raise Cancelled()
        audio = self._tts(text, speed=params.speed, seed=params.seed)
        progress(1.0)
        return np.asarray(audio, dtype=np.float32)
