"""The Engine protocol: what the worker needs from a text-to-speech model.

An engine is touched only from the worker's executor thread, one call at a time, so
implementations need no locking. ``synthesize`` reports progress inside a chunk through
``progress`` (a fraction, called from the executor thread; the worker hops it to the
loop) and checks ``cancel`` wherever it can stop early.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..exceptions import Cancelled, EngineError

__all__ = ["AudioFn", "BatchFn", "Cancelled", "ChunkRequest", "EngineError", "Engine", "EngineDescription", "SynthesisParams", "Voice", "ProgressFn"]

ProgressFn = Callable[[float], None]
# Audio of the chunk being generated, handed out before the chunk ends (float32 mono).
AudioFn = Callable[[np.ndarray], None]
# The requests (ids) whose chunks an engine steps together with a chunk, itself included.
BatchFn = Callable[[list[str]], None]


@dataclass(frozen=True)
class SynthesisParams:
    exaggeration: float
    cfg_weight: float
    temperature: float
    speed: float = 1.0
    seed: int | None = None
    # Sampling knobs of the Chatterbox models; None keeps the model's own default.
    repetition_penalty: float | None = None
    min_p: float | None = None
    top_p: float | None = None
    language: str | None = None


@dataclass(frozen=True)
class Voice:
    """A resolved voice: ``source`` is what the status API reports, ``path`` a reference clip."""

    source: str = "default"
    path: str | None = None


@dataclass(frozen=True)
class ChunkRequest:
    """One chunk of one request, as a batch of several requests' chunks holds it. ``reply``
    takes its samples, or what stopped it (Cancelled, an error), once, as soon as it is known:
    a chunk that ends early in a batch is not held until the others end."""

    text: str
    voice: Voice
    params: SynthesisParams
    progress: ProgressFn
    cancel: threading.Event
    reply: Callable[[np.ndarray | BaseException], None]
    # Streamed (an engine that streams within a chunk): its audio a window at a time, the
    # reply then carrying the last window.
    on_audio: AudioFn | None = None


class EngineDescription(Protocol):
    """What the server knows of an engine without its model (the model lives in the engine
    process): enough to plan requests and answer status questions."""

    @property
    def name(self) -> str: ...

    @property
    def sample_rate(self) -> int: ...

    @property
    def device(self) -> str: ...

    @property
    def supports_cloning(self) -> bool: ...

    @property
    def languages(self) -> dict[str, str]: ...

    @property
    def speed_range(self) -> tuple[float, float] | None:
        """The speeds the engine speaks natively; None when it has no tempo control."""

    @property
    def streams_within_chunk(self) -> bool:
        """Whether ``synthesize`` takes ``on_audio`` and hands a chunk's audio out as it is made."""

    @property
    def max_batch_size(self) -> int:
        """How many requests' chunks ``synthesize_batch(chunks)`` takes at once (1: it has
        none); it replies to each chunk once, through the chunk's ``reply``."""


class Engine(EngineDescription, Protocol):
    def load(self, progress: ProgressFn) -> None:
        """Load the model (blocking, in the executor), reporting progress as a fraction."""

    def synthesize(
        self,
        text: str,
        voice: Voice,
        params: SynthesisParams,
        progress: ProgressFn,
        cancel: threading.Event,
    ) -> np.ndarray:
        """Speak one chunk: float32 mono samples at ``sample_rate``."""
