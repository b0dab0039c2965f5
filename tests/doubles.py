"""Test doubles at the Engine boundary: controllable stand-ins for a model.

They produce real audio (a tone whose length follows the text) so the rest of the
pipeline runs for real; tests steer them through threading primitives, never sleeps.
"""

from __future__ import annotations

import os
import queue
import threading

import numpy as np

from chatterbox_status.engines.base import Cancelled, SynthesisParams, Voice


class ScriptedEngine:
    """Speaks a tone per chunk; while held, each chunk waits for ``release()``."""

    name = "scripted"
    device = "cpu"
    supports_cloning = False
    speed_range = (0.25, 4.0)
    languages = {"en": "English", "fr": "French"}
    sample_rate = 16_000
    seconds_per_char = 0.02

    def __init__(self, fail_on: str | None = None, load_error: str | None = None, cloning: bool = False) -> None:
        self.supports_cloning = cloning
        self.fail_on = fail_on
        self.load_error = load_error
        self.load_gate = threading.Event()
        self.load_gate.set()
        self.calls: list[str] = []
        # (source, path, whether the reference file existed) for every chunk spoken
        self.voices: list[tuple[str, str | None, bool]] = []
        self.started: queue.Queue[str] = queue.Queue()
        self._held = False
        self._releases = threading.Semaphore(0)

    def hold(self) -> None:
        """From now on every chunk waits for a release."""
        self._held = True

    def release(self, chunks: int = 1) -> None:
        for _ in range(chunks):
            self._releases.release()

    def wait_started(self, timeout: float = 10.0) -> str:
        """Block until a held chunk has started; returns its text."""
        return self.started.get(timeout=timeout)

    def load(self, progress) -> None:
        progress(0.0)
        self.load_gate.wait()
        if self.load_error:
            raise RuntimeError(self.load_error)
        progress(1.0)

    def synthesize(self, text: str, voice: Voice, params: SynthesisParams, progress, cancel: threading.Event):
        if cancel.is_set():  # as the real engines do before they start a chunk
            raise Cancelled()
        self.calls.append(text)
        self.voices.append((voice.source, voice.path, voice.path is not None and os.path.exists(voice.path)))
        if self._held:
            self.started.put(text)
            while not self._releases.acquire(timeout=0.05):
                if cancel.is_set():
                    raise Cancelled()
        progress(0.5)
        if self.fail_on is not None and self.fail_on in text:
            raise RuntimeError(f"scripted failure on {self.fail_on!r}")
        progress(1.0)
        n = int(len(text) * self.seconds_per_char * self.sample_rate / params.speed)
        t = np.arange(n, dtype=np.float32) / self.sample_rate
        return (0.3 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)
