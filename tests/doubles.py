"""Test doubles at the Engine boundary: controllable stand-ins for a model.

They produce real audio (a tone whose length follows the text) so the rest of the
pipeline runs for real; tests steer them through threading primitives, never sleeps.
"""

from __future__ import annotations

import os
import queue
import threading
import time

import numpy as np

from chatterbox_status.engines.base import Cancelled, SynthesisParams, Voice


class ScriptedEngine:
    """Speaks a tone per chunk; while held, each chunk waits for ``release()``.

    ``cancel_within_chunk=False`` stands for an engine that looks at the cancel flag only before
    a chunk (as a model without a per-token hook does): a held chunk then runs to its end even
    when cancelled. ``work_seconds_per_char`` makes each chunk take that long per character, as
    a real model's compute does, so measured throughput and estimates are realistic.
    """

    name = "scripted"
    device = "cpu"
    supports_cloning = False
    speed_range = (0.25, 4.0)
    languages = {"en": "English", "fr": "French"}
    sample_rate = 16_000
    seconds_per_char = 0.02

    def __init__(
        self,
        fail_on: str | None = None,
        load_error: str | None = None,
        cloning: bool = False,
        cancel_within_chunk: bool = True,
        work_seconds_per_char: float = 0.0,
    ) -> None:
        self.supports_cloning = cloning
        self.cancel_within_chunk = cancel_within_chunk
        self.work_seconds_per_char = work_seconds_per_char
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
                if self.cancel_within_chunk and cancel.is_set():
                    raise Cancelled()
        if self.work_seconds_per_char:
            time.sleep(len(text) * self.work_seconds_per_char)  # the model's compute, not a wait for anything
        progress(0.5)
        if self.fail_on is not None and self.fail_on in text:
            raise RuntimeError(f"scripted failure on {self.fail_on!r}")
        progress(1.0)
        return self.tone(text, params.speed)

    def tone(self, text: str, speed: float = 1.0) -> np.ndarray:
        """The exact samples spoken for ``text``: tests compare what reaches the wire with them."""
        n = int(len(text) * self.seconds_per_char * self.sample_rate / speed)
        t = np.arange(n, dtype=np.float32) / self.sample_rate
        return (0.3 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)
