"""The server's side of the engine process: start it, talk to it, notice when it is gone.

One :class:`EngineProcess` is one child running :mod:`chatterbox_status.engine_process`.
Calls are frames written at once (the engine gets its next chunk without waiting on the
loop); replies are read by one task and resolve the calls' futures, so progress arrives
on the loop with no thread hop. When the child exits, every call still open fails with
:class:`EngineDied` and :meth:`ended` returns why; the :class:`~chatterbox_status.worker.Worker`
decides about restarting.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import engines, ipc
from .config import Settings, names
from .engines.base import AudioFn, BatchFn, EngineDescription, ProgressFn, SynthesisParams, Voice
from .exceptions import Cancelled, EngineDied, EngineError, EngineOutOfMemory

log = logging.getLogger(__name__)

# Seconds the child gets to exit by itself after its stdin closes, before it is killed.
EXIT_GRACE = 5.0
# The reply buffer: a whole chunk's audio arrives in few reads.
READ_LIMIT = 8 * 1024 * 1024


@dataclass(frozen=True)
class EngineSpec:
    """How the child builds its engine: ``"module:callable"`` and keyword arguments."""

    factory: str
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class EngineFacts:
    """What the server knows of the engine, without the model: first from the engine class,
    then from the child once the model has loaded."""

    name: str
    sample_rate: int
    device: str
    supports_cloning: bool
    languages: dict[str, str]
    speed_range: tuple[float, float] | None
    # Whether a chunk's audio can come out in windows as it is generated (see engines.chatterbox_stream).
    streams_within_chunk: bool = False
    # How many requests' chunks it steps together (see engines.chatterbox_batch); 1: one at a time.
    max_batch_size: int = 1

    @classmethod
    def of(cls, engine: EngineDescription) -> EngineFacts:
        """The facts of an engine object, loaded (in the engine process) or not (here)."""
        return cls(
            name=engine.name,
            sample_rate=int(engine.sample_rate),
            device=engine.device,
            supports_cloning=bool(engine.supports_cloning),
            languages=dict(engine.languages),
            speed_range=engine.speed_range,
            streams_within_chunk=bool(getattr(engine, "streams_within_chunk", False)),
            max_batch_size=int(getattr(engine, "max_batch_size", 1)),
        )

    def update(self, facts: dict[str, Any]) -> None:
        speed_range = facts.pop("speed_range")
        self.speed_range = tuple(speed_range) if speed_range is not None else None  # type: ignore[assignment]
        for name, value in facts.items():
            setattr(self, name, value)


@dataclass
class _Call:
    future: asyncio.Future
    progress: ProgressFn | None = None
    forget_cancel: Callable[[], None] | None = None
    on_audio: AudioFn | None = None
    on_batch: BatchFn | None = None


class OpenCalls:
    """The calls a host handed to its engine and has not heard the end of, resolved by the
    engine's frames (``progress``, ``audio_window``, ``batch``, then ``audio``, ``released``
    or ``failed``): the engine process's over its pipe, an engine worker's over Redis."""

    def __init__(self) -> None:
        self._calls: dict[int, _Call] = {}
        self._ids = itertools.count(1)

    def __contains__(self, call_id: object) -> bool:
        return call_id in self._calls

    def open(
        self, progress: ProgressFn | None, on_audio: AudioFn | None = None, on_batch: BatchFn | None = None
    ) -> tuple[int, asyncio.Future]:
        call_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._calls[call_id] = _Call(future, progress, on_audio=on_audio, on_batch=on_batch)
        return call_id, future

    def cancel_with(self, call_id: int, cancel: Any, send: Callable[[], None]) -> None:
        """``send`` the engine a cancellation of the call once ``cancel`` is set (now, if it is)."""
        if cancel.is_set():
            send()
        else:
            self._calls[call_id].forget_cancel = cancel.on_set(send)

    def fail(self, call_id: int, error: BaseException) -> None:
        call = self._calls.pop(call_id, None)
        if call is not None:
            self._settle(call, error)

    def fail_all(self, error: BaseException) -> None:
        calls, self._calls = self._calls, {}
        for call in calls.values():
            self._settle(call, error)

    def answer(self, header: dict[str, Any], payload: bytes) -> None:
        """One frame about a call (``batch``: about several)."""
        kind = header["type"]
        if kind == "batch":
            for call_id in header["calls"]:
                batched = self._calls.get(call_id)
                if batched is not None and batched.on_batch is not None:
                    batched.on_batch(header["jobs"])
            return
        call = self._calls.get(header["call"])
        if call is None:
            return
        if kind == "progress":
            if call.progress is not None:
                call.progress(header["fraction"])
            return
        if kind == "audio_window":
            if call.on_audio is not None:
                call.on_audio(np.frombuffer(payload, dtype=np.float32))
            return
        del self._calls[header["call"]]
        if kind == "audio":
            self._settle(call, np.frombuffer(payload, dtype=np.float32))
        elif kind == "released":
            self._settle(call, None)
        else:
            self._settle(call, failure(header["kind"], header["message"]))

    @staticmethod
    def _settle(call: _Call, result: Any) -> None:
        if call.forget_cancel is not None:
            call.forget_cancel()
        if call.future.done():
            return
        if isinstance(result, BaseException):
            call.future.set_exception(result)
        else:
            call.future.set_result(result)


def failure(kind: str, message: str) -> EngineError | Cancelled:
    """The exception a ``failed`` frame stands for."""
    if kind == "cancelled":
        return Cancelled()
    if kind == "out_of_memory":
        return EngineOutOfMemory(message)
    if kind == "died":
        return EngineDied(message)
    return EngineError(message)


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with code {returncode}"


class EngineProcess:
    """One engine child process and the calls open with it."""

    def __init__(self, spec: EngineSpec, facts: EngineFacts, threads: int, log_level: str = "INFO", nice: int = 0) -> None:
        self.spec = spec
        self.engine = facts
        self.threads = threads
        self.nice = nice
        self.log_level = log_level
        self.gpu: dict[str, Any] | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._calls = OpenCalls()
        self._reader: asyncio.Task | None = None
        self._loaded: asyncio.Future | None = None
        self._load_progress: ProgressFn | None = None
        self._ended: asyncio.Future[str] | None = None
        self._kill_reason: str | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def load(self, progress: ProgressFn) -> None:
        """Start a child and wait for its model (raises EngineError if it fails to load,
        EngineDied if the child exits first or cannot start: out of file descriptors or
        memory is a reason to try again, not to stop)."""
        loop = asyncio.get_running_loop()
        env = {**os.environ, **{name: str(self.threads) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}}
        self._kill_reason = None
        try:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "chatterbox_status.engine_process",
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env, limit=READ_LIMIT,
            )
        except OSError as exc:
            raise EngineDied(f"the engine process could not start: {exc}") from exc
        self._loaded, self._ended, self._load_progress = loop.create_future(), loop.create_future(), progress
        self._reader = asyncio.create_task(self._read(self._process), name="engine-replies")
        self._send({
            "type": "start", "factory": self.spec.factory, "kwargs": self.spec.kwargs,
            "threads": self.threads, "nice": self.nice, "log_level": self.log_level.upper(), "sys_path": sys.path,
        })
        await asyncio.shield(self._loaded)

    def synthesize(
        self,
        text: str,
        voice: Voice,
        params: SynthesisParams,
        progress: ProgressFn,
        cancel: Any,
        on_audio: AudioFn | None = None,
        job: str = "",
        on_batch: BatchFn | None = None,
        priority: str = "interactive",
    ) -> asyncio.Future[np.ndarray]:
        """Hand the chunk to the engine now; the future gets its samples. ``cancel`` (a
        :class:`~chatterbox_status.engine_pool.CancelFlag`) reaches the engine while it works.
        With ``on_audio`` (an engine that streams within a chunk), the chunk's audio comes
        there a window at a time, on the loop, and the future gets the last window. ``job``
        names the request (an engine that batches takes one chunk per request into a
        batch); ``on_batch`` hears the requests whose chunks are stepped with this one.
        ``priority`` is the worker's turn's business here: this engine serves one server."""
        call_id, future = self._open(progress, on_audio, on_batch)
        self._send({
            "type": "synthesize", "call": call_id, "text": text, "voice": vars(voice), "params": vars(params),
            "stream": on_audio is not None, "job": job,
        })
        self._calls.cancel_with(call_id, cancel, lambda: self._send({"type": "cancel", "call": call_id}))
        return future

    async def release(self, reset_peak: bool = False) -> None:
        """Free the engine's memory (garbage, CUDA cache), even while it works on a chunk."""
        call_id, future = self._open(None)
        self._send({"type": "release", "call": call_id, "reset_peak": reset_peak})
        await future

    def memory_pid(self) -> int | None:
        """The child's pid while it runs, for the CPU figures."""
        return self.pid if self._process is not None and self._process.returncode is None else None

    async def ended(self) -> str:
        """Once the child has exited: why, in words."""
        assert self._ended is not None
        return await asyncio.shield(self._ended)

    async def kill(self, reason: str) -> None:
        """End the child now (it hangs); :meth:`ended` then gives ``reason``."""
        if self._process is None or self._process.returncode is not None:
            return
        self._kill_reason = reason
        log.warning("killing engine process %s: %s", self._process.pid, reason)
        with contextlib.suppress(ProcessLookupError):
            self._process.kill()
        await self.ended()

    async def close(self) -> None:
        """Let the child finish and exit; kill it if it does not within EXIT_GRACE."""
        process = self._process
        if process is None:
            return
        if process.returncode is None:
            if process.stdin is not None:
                process.stdin.close()
            try:
                await asyncio.wait_for(process.wait(), EXIT_GRACE)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)

    # -- frames --------------------------------------------------------------------

    def _open(self, progress: ProgressFn | None, on_audio: AudioFn | None = None, on_batch: BatchFn | None = None) -> tuple[int, asyncio.Future]:
        if self._process is None or self._process.returncode is not None or self._ended is None or self._ended.done():
            raise EngineDied("the engine process is not running")
        return self._calls.open(progress, on_audio, on_batch)

    def _send(self, header: dict[str, Any]) -> None:
        process = self._process
        if process is not None and process.stdin is not None and not process.stdin.is_closing():
            process.stdin.write(ipc.frame(header))

    async def _read(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        try:
            while True:
                header, payload = await ipc.read(process.stdout)
                self._on_frame(header, payload)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            returncode = await process.wait()
            reason = self._kill_reason or f"the engine process {describe_exit(returncode)}"
            self._end(reason)

    def _end(self, reason: str) -> None:
        self._calls.fail_all(EngineDied(reason))
        if self._loaded is not None and not self._loaded.done():
            self._loaded.set_exception(EngineDied(f"{reason} while loading the model"))
        if self._ended is not None and not self._ended.done():
            self._ended.set_result(reason)

    def _on_frame(self, header: dict[str, Any], payload: bytes) -> None:
        kind = header["type"]
        if "gpu" in header:
            self.gpu = header["gpu"]
        if kind == "load_progress":
            if self._load_progress is not None:
                self._load_progress(header["fraction"])
            return
        if kind in ("loaded", "load_failed"):
            assert self._loaded is not None
            if kind == "loaded":
                self.engine.update(header["engine"])
                self._loaded.set_result(None)
            else:
                self._loaded.set_exception(EngineError(header["message"]))
            return
        self._calls.answer(header, payload)


def engine_facts(name: str, settings: Settings) -> EngineFacts:
    """What is known of engine ``name`` until its model has loaded: the facts of its class
    (building one here loads nothing)."""
    return EngineFacts.of(engines.build(**engines.build_kwargs(name, settings)))  # type: ignore[arg-type]


def engine_process(name: str, settings: Settings) -> EngineProcess:
    """Engine ``name`` in a process of its own."""
    spec = EngineSpec("chatterbox_status.engines:build", engines.build_kwargs(name, settings))
    return hosted(spec, engine_facts(name, settings), settings)


def hosted(spec: EngineSpec, facts: EngineFacts, settings: Settings) -> EngineProcess:
    """``spec``'s engine in a process run as ``settings`` say engine processes run: its
    threads, log level and CPU priority."""
    return EngineProcess(spec, facts, settings.engine_threads, settings.log_level, settings.engine_nice)


def offered(settings: Settings) -> tuple[engines.EngineChoice, engines.Catalog]:
    """The default engine the settings choose, and every engine they offer (it first)."""
    choice = engines.choose(settings)
    return choice, engines.catalog(choice.name, names(settings.engines), settings.model_aliases)


def engine_processes(settings: Settings) -> tuple[engines.EngineChoice, engines.Catalog, list[EngineProcess]]:
    """The engines the settings offer (the default first), each in a process of its own."""
    choice, catalog = offered(settings)
    return choice, catalog, [engine_process(name, settings) for name in catalog.engines]
