"""Test doubles at the Engine boundary: controllable stand-ins for a model.

They produce real audio (a tone whose length follows the text) so the rest of the
pipeline runs for real; tests steer them through threading primitives, never sleeps.
"""

from __future__ import annotations

import asyncio
import functools
import os
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from chatterbox_status import memory
from chatterbox_status.engines.base import Cancelled, SynthesisParams, Voice
from chatterbox_status.exceptions import EngineError
from chatterbox_status.supervisor import EngineFacts, EngineProcess, EngineSpec


class ScriptedEngine:
    """Speaks a tone per chunk; while held, each chunk waits for ``release()``.

    ``cancel_within_chunk=False`` stands for an engine that looks at the cancel flag only before
    a chunk (as a model without a per-token hook does): a held chunk then runs to its end even
    when cancelled. ``work_seconds_per_char`` makes each chunk take that long per character, as
    a real model's compute does, so measured throughput and estimates are realistic.
    ``streams=True`` hands each chunk out in windows (``on_audio``): its first third, its second
    third, and the rest returned; held, it hands out the first window before it waits, as a
    streaming model has spoken the start of a chunk while it still works on the rest.
    ``reports_progress=False`` stands for an engine that says nothing inside a chunk.
    """

    name = "scripted"
    device = "cpu"
    supports_cloning = False
    speed_range = (0.25, 4.0)
    max_batch_size = 1  # one chunk at a time (BatchingEngine takes more)
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
        streams: bool = False,
        reports_progress: bool = True,
    ) -> None:
        self.reports_progress = reports_progress
        self.supports_cloning = cloning
        self.streams_within_chunk = streams
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
        progress(1 / 3)  # a third of the weights read: a fraction as a real model's load reports
        self.load_gate.wait()
        if self.load_error:
            raise RuntimeError(self.load_error)
        progress(1.0)

    def synthesize(self, text: str, voice: Voice, params: SynthesisParams, progress, cancel: threading.Event, on_audio=None):
        if cancel.is_set():  # as the real engines do before they start a chunk
            raise Cancelled()
        self.calls.append(text)
        self.voices.append((voice.source, voice.path, voice.path is not None and os.path.exists(voice.path)))
        samples = self.tone(text, params.speed)
        third = len(samples) // 3
        if self._held:
            if on_audio is not None:
                on_audio(samples[:third])
            self.started.put(text)
            while not self._releases.acquire(timeout=0.05):
                if self.cancel_within_chunk and cancel.is_set():
                    raise Cancelled()
        if self.work_seconds_per_char:
            time.sleep(len(text) * self.work_seconds_per_char)  # the model's compute, not a wait for anything
        if self.reports_progress:
            progress(0.5)
        if self.fail_on is not None and self.fail_on in text:
            raise RuntimeError(f"scripted failure on {self.fail_on!r}")
        if self.reports_progress:
            progress(1.0)
        if on_audio is None:
            return samples
        # Streaming within the chunk: its first third and second third as windows, the rest returned.
        if not self._held:
            on_audio(samples[:third])
        on_audio(samples[third : 2 * third])
        return samples[2 * third :]

    def tone(self, text: str, speed: float = 1.0) -> np.ndarray:
        """The exact samples spoken for ``text``: tests compare what reaches the wire with them."""
        n = int(len(text) * self.seconds_per_char * self.sample_rate / speed)
        t = np.arange(n, dtype=np.float32) / self.sample_rate
        return (0.3 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)


class ThreadHost:
    """An EngineHost that runs an engine on a thread of this process.

    The product always runs its engine in a process of its own (EngineProcess); tests that
    steer an engine object directly (hold it mid-chunk, read what it was called with)
    put this in its place, at the host boundary. It cannot be killed, and dies only when told (die).
    With ``threads=2`` it stands for a cluster's engine workers, where another worker takes a
    request's next chunk, handed ahead, while its current chunk still runs.
    """

    gpu = None

    def __init__(self, engine, threads: int = 1) -> None:
        self.engine = engine
        self.threads = threads
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="engine")
        self._closed: asyncio.Future | None = None

    def _run(self, fn, *args):
        return asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def load(self, progress) -> None:
        if self._executor._shutdown:  # unloaded, and loaded again
            self._executor = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="engine")
        self._closed = asyncio.get_running_loop().create_future()
        try:
            await self._run(self.engine.load, self._hop(progress))
        except Exception as exc:
            raise EngineError(str(exc)) from exc

    def _hop(self, fn):
        loop = asyncio.get_running_loop()
        return lambda *args: loop.call_soon_threadsafe(fn, *args)

    def synthesize(self, text, voice, params, progress, cancel, on_audio=None, job="", on_batch=None, priority="interactive"):
        """On its threads, a chunk at a time each; never batched (``job``, ``on_batch``, ``priority`` unused)."""
        flag = threading.Event()
        if cancel.is_set():
            flag.set()
        else:
            cancel.on_set(flag.set)
        streaming = {"on_audio": self._hop(on_audio)} if on_audio is not None else {}
        return self._run(functools.partial(self.engine.synthesize, **streaming), text, voice, params, self._hop(progress), flag)

    async def release(self, reset_peak: bool = False) -> None:
        await self._run(memory.release, reset_peak)

    def memory_pid(self):
        return None

    async def ended(self) -> str:
        assert self._closed is not None
        return await self._closed

    async def kill(self, reason: str) -> None:
        pass  # a thread cannot be killed: the chunk holds the thread until it returns

    def die(self, reason: str) -> None:
        """Stands for the engine process dying (its supervision restarts it)."""
        assert self._closed is not None
        self._closed.set_result(reason)

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def hosted(engine):
    """``engine`` behind a ThreadHost; a host (or None, for the product's own engine
    process) as it is; a list of them (the default first), each so."""
    if isinstance(engine, list):
        return [hosted(one) for one in engine]
    return engine if engine is None or hasattr(engine, "memory_pid") else ThreadHost(engine)


class GatedEngine(ScriptedEngine):
    """For the engine process (built there from its name): a chunk whose text holds "HOLD"
    reports a first progress, then waits until the file ``gate`` exists; it stops early when
    cancelled unless ``ignore_cancel`` (an engine that hangs). ``die_on_load`` kills its
    own process while loading, as a crashing native library would."""

    def __init__(
        self, gate: str = "", ignore_cancel: bool = False, die_on_load: bool = False, name: str = "scripted", streams: bool = False
    ) -> None:
        super().__init__(streams=streams)
        self.name = name
        self.gate = gate
        self.ignore_cancel = ignore_cancel
        self.die_on_load = die_on_load

    def load(self, progress) -> None:
        if self.die_on_load:
            import signal

            os.kill(os.getpid(), signal.SIGKILL)
        super().load(progress)

    def synthesize(self, text, voice, params, progress, cancel, on_audio=None):
        if "HOLD" in text:
            progress(0.1)
            while not os.path.exists(self.gate):  # the test's signal, polled
                if cancel.is_set() and not self.ignore_cancel:
                    raise Cancelled()
                time.sleep(0.005)
        return super().synthesize(text, voice, params, progress, cancel, on_audio=on_audio)


class BatchingEngine(GatedEngine):
    """For the engine process: an engine that takes up to ``max_batch_size`` requests' chunks
    together (``synthesize_batch``), as the chatterbox engine does, each with its own reply.
    A batch holding a chunk with "HOLD" reports a first progress for every chunk, then waits
    until the file ``batch_gate`` exists; a chunk cancelled meanwhile is answered Cancelled
    at once, and the others go on. Like the chatterbox engine, it says it takes one chunk at
    a time until it has loaded; with ``load_gate``, loading waits until that file exists."""

    def __init__(self, gate: str = "", batch_gate: str = "", max_batch_size: int = 4, load_gate: str = "") -> None:
        super().__init__(gate=gate)
        self.batch_gate = batch_gate
        self.load_gate_file = load_gate
        self.loaded_batch_size = max_batch_size
        self.max_batch_size = 1

    def load(self, progress) -> None:
        while self.load_gate_file and not os.path.exists(self.load_gate_file):  # the test's signal, polled
            time.sleep(0.005)
        super().load(progress)
        self.max_batch_size = self.loaded_batch_size

    def synthesize_batch(self, chunks) -> None:
        going = list(chunks)
        if any("HOLD" in chunk.text for chunk in chunks):
            for chunk in chunks:
                chunk.progress(0.1)
            while not os.path.exists(self.batch_gate):  # the test's signal, polled
                for chunk in [c for c in going if c.cancel.is_set()]:
                    going.remove(chunk)
                    chunk.reply(Cancelled())
                time.sleep(0.005)
        for chunk in going:
            try:
                chunk.reply(ScriptedEngine.synthesize(self, chunk.text, chunk.voice, chunk.params, chunk.progress, chunk.cancel))
            except Exception as exc:
                chunk.reply(exc)


def in_process_of_its_own(engine_class, **kwargs):
    """An EngineProcess that builds ``engine_class(**kwargs)`` (a class in this module) in
    its child, as the product does with its own engines."""
    facts = EngineFacts.of(engine_class(**kwargs))
    return EngineProcess(EngineSpec(f"{__name__}:{engine_class.__name__}", kwargs), facts, threads=1)
