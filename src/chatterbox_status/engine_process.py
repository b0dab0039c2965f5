"""The engine process: one engine, loaded and driven here, away from the server's loop.

Started by :class:`chatterbox_status.supervisor.EngineProcess` as
``python -m chatterbox_status.engine_process``. Frames (see :mod:`ipc`) arrive on stdin and
leave on the original stdout; fd 1 is pointed at stderr first, so whatever the model
libraries print lands in the server's log, not in the protocol.

The main thread loads the engine and runs ``synthesize`` calls one at a time, in order; an
engine that batches (``max_batch_size`` > 1) takes the calls waiting together, one chunk
per request, in one ``synthesize_batch``, and a ``batch`` frame tells the server which. A
reader thread takes every frame as it arrives: a ``cancel`` sets the flag the engine checks
per token at once, even while the main thread is deep in a chunk, and ``release`` frees
memory without waiting for the chunk to end. When the server goes away (stdin ends), the
running chunk is cancelled and the process ends; if the server is killed, the kernel ends
this process too (Linux's parent-death signal), even inside a chunk that never checks.
"""

from __future__ import annotations

import collections
import dataclasses
import importlib
import logging
import os
import queue
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any, BinaryIO

import numpy as np

from . import ipc, memory
from .engines.base import ChunkRequest, Engine, SynthesisParams, Voice
from .exceptions import Cancelled, EngineError
from .supervisor import EngineFacts

log = logging.getLogger("chatterbox_status.engine")


class Channel:
    """The frames out, from any thread, in order, without waiting on the pipe.

    A writer thread drains them: when the server's loop is busy (fanning events out to a
    thousand streams), the pipe fills and only that thread waits, while the engine goes on
    with its next chunk (the server hands it over ahead) instead of stalling mid-report.
    """

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._frames: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._writer = threading.Thread(target=self._write, name="frames-out", daemon=True)
        self._writer.start()

    def send(self, header: dict[str, Any], payload: bytes = b"") -> None:
        self._frames.put(ipc.frame(header, payload))

    def close(self) -> None:
        """Write every frame sent so far, then stop."""
        self._frames.put(None)
        self._writer.join()

    def _write(self) -> None:
        while (data := self._frames.get()) is not None:
            try:
                self._out.write(data)
                self._out.flush()
            except OSError:  # the server is gone; the reader thread ends the process
                return


def build(factory: str, kwargs: dict[str, Any]) -> Engine:
    """The engine from ``"module:callable"`` and its keyword arguments."""
    module, _, name = factory.partition(":")
    return getattr(importlib.import_module(module), name)(**kwargs)


def set_threads(threads: int) -> None:
    """Hold torch to ``threads`` once a model imported it (onnxruntime takes it at load)."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)


Call = tuple[dict[str, Any], threading.Event]


class Host:
    """The engine and the calls waiting for it."""

    def __init__(self, engine: Engine, channel: Channel, threads: int) -> None:
        self.engine = engine
        self.channel = channel
        self.threads = threads
        self.calls: queue.Queue[Call | None] = queue.Queue()
        # Calls passed over by a batch (a second chunk of a request already in it), served first.
        self.deferred: collections.deque[Call | None] = collections.deque()
        self.cancels: dict[int, threading.Event] = {}
        self._lock = threading.Lock()

    # -- the reader thread ------------------------------------------------------------

    def read(self, stream: BinaryIO) -> None:
        while (got := ipc.read_blocking(stream)) is not None:
            header, _ = got
            kind = header["type"]
            if kind == "synthesize":
                cancel = threading.Event()
                with self._lock:
                    self.cancels[header["call"]] = cancel
                self.calls.put((header, cancel))
            elif kind == "cancel":
                with self._lock:
                    found = self.cancels.get(header["call"])
                if found is not None:
                    found.set()
            elif kind == "release":
                memory.release(bool(header.get("reset_peak")))
                self.channel.send({"type": "released", "call": header["call"], "gpu": memory.gpu_figures()})
        # The server is gone (or closed us): nobody waits for the running call, so it stops
        # at its next cancellation check, and the process ends after it.
        with self._lock:
            for cancel in self.cancels.values():
                cancel.set()
        self.calls.put(None)

    # -- the main thread --------------------------------------------------------------

    def load(self) -> bool:
        try:
            self.engine.load(lambda fraction: self.channel.send({"type": "load_progress", "fraction": fraction}))
            set_threads(self.threads)
        except Exception as exc:
            log.exception("engine %s failed to load", self.engine.name)
            self.channel.send({"type": "load_failed", "message": str(exc) or type(exc).__name__})
            return False
        self.channel.send({"type": "loaded", "engine": dataclasses.asdict(EngineFacts.of(self.engine)), "gpu": memory.gpu_figures()})
        return True

    def serve(self) -> None:
        while (item := self._next()) is not None:
            batch = self._gather(item)
            try:
                if len(batch) == 1:
                    self._synthesize(*item)
                else:
                    self._synthesize_batch(batch)
            finally:
                with self._lock:
                    for header, _ in batch:
                        self.cancels.pop(header["call"], None)

    def _next(self) -> Call | None:
        return self.deferred.popleft() if self.deferred else self.calls.get()

    def _gather(self, first: Call) -> list[Call]:
        """``first``, and the calls waiting behind it that the engine can step with it (up to
        its ``max_batch_size``): one chunk per request (a request's next chunk, handed over
        ahead, waits for this one)."""
        batch = [first]
        limit = getattr(self.engine, "max_batch_size", 1)
        if limit == 1:
            return batch
        jobs = {first[0].get("job")}
        waiting = [*self.deferred]
        self.deferred.clear()
        while True:
            try:
                waiting.append(self.calls.get_nowait())
            except queue.Empty:
                break
        for item in waiting:
            if len(batch) < limit and item is not None and item[0].get("job") not in jobs:
                batch.append(item)
                jobs.add(item[0].get("job"))
            else:
                self.deferred.append(item)
        if len(batch) > 1:
            self.channel.send({"type": "batch", "calls": [header["call"] for header, _ in batch], "jobs": sorted(jobs)})
        return batch

    def _streams(self, header: dict[str, Any]) -> bool:
        return bool(header.get("stream")) and getattr(self.engine, "streams_within_chunk", False)

    def _reporter(self, call: int) -> Callable[[float], None]:
        return lambda fraction: self.channel.send({"type": "progress", "call": call, "fraction": fraction})

    def _windows(self, header: dict[str, Any]) -> dict[str, Any]:
        """``on_audio`` for a streamed call to an engine that streams within a chunk: each
        window goes out as a frame of its own."""
        if not self._streams(header):
            return {}
        call = header["call"]
        return {
            "on_audio": lambda samples: self.channel.send(
                {"type": "audio_window", "call": call}, np.ascontiguousarray(samples, dtype=np.float32).reshape(-1).tobytes()
            )
        }

    def _synthesize(self, header: dict[str, Any], cancel: threading.Event) -> None:
        call = header["call"]
        streaming = self._windows(header)
        try:
            samples = self.engine.synthesize(
                header["text"], Voice(**header["voice"]), SynthesisParams(**header["params"]), self._reporter(call), cancel, **streaming
            )
        except Exception as exc:
            self._reply(call, exc)
        else:
            self._reply(call, samples)

    def _synthesize_batch(self, batch: list[Call]) -> None:
        """The calls of ``batch`` in one ``synthesize_batch``: each is answered once, when its
        chunk ends; whichever the engine left unanswered fail with it."""
        unanswered = {header["call"] for header, _ in batch}

        def replier(call: int) -> Callable[[np.ndarray | BaseException], None]:
            def reply(result: np.ndarray | BaseException) -> None:
                if call in unanswered:
                    unanswered.discard(call)
                    self._reply(call, result)

            return reply

        chunks = [
            ChunkRequest(
                header["text"], Voice(**header["voice"]), SynthesisParams(**header["params"]),
                self._reporter(header["call"]), cancel, replier(header["call"]), **self._windows(header),
            )
            for header, cancel in batch
        ]
        failure: BaseException = EngineError("the engine ended the batch without this chunk's audio")
        try:
            self.engine.synthesize_batch(chunks)  # type: ignore[attr-defined]
        except Exception as exc:
            failure = exc
        for call in sorted(unanswered):
            self._reply(call, failure)

    def _reply(self, call: int, result: np.ndarray | BaseException) -> None:
        """A chunk's audio, or why it has none."""
        if isinstance(result, Cancelled):
            self.channel.send({"type": "failed", "call": call, "kind": "cancelled", "message": "cancelled"})
        elif isinstance(result, BaseException):
            kind = "out_of_memory" if memory.is_out_of_memory(result) else "engine"
            if not isinstance(result, EngineError) and kind == "engine":
                log.error("engine %s failed on a chunk", self.engine.name, exc_info=result)
            self.channel.send({"type": "failed", "call": call, "kind": kind, "message": str(result) or type(result).__name__})
        else:
            data = np.ascontiguousarray(result, dtype=np.float32).reshape(-1).tobytes()
            self.channel.send({"type": "audio", "call": call, "gpu": memory.gpu_figures()}, data)


def die_with_the_server() -> None:
    """Linux: the kernel kills this process when the server does (SIGKILL included), even
    while a chunk runs that checks no cancellation."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return  # a server that died before this point closed stdin: main() ends on its own


def main() -> None:
    die_with_the_server()
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    stdin = sys.stdin.buffer
    first = ipc.read_blocking(stdin)
    if first is None:
        return
    start = first[0]
    # Before any thread starts, so that every thread of the engine (torch's, onnxruntime's)
    # inherits it: Linux keeps a nice value per thread.
    os.nice(int(start.get("nice", 0)))
    logging.basicConfig(level=start.get("log_level", "INFO"), format=f"%(asctime)s engine[{os.getpid()}] %(levelname)s %(message)s")
    for entry in reversed(start.get("sys_path", [])):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    channel = Channel(out)
    try:
        try:
            engine = build(start["factory"], start["kwargs"])
        except Exception as exc:
            log.exception("the engine could not be built")
            channel.send({"type": "load_failed", "message": f"the engine could not be built: {exc}"})
            return
        host = Host(engine, channel, int(start.get("threads", 1)))
        threading.Thread(target=host.read, args=(stdin,), name="frames-in", daemon=True).start()
        if host.load():
            host.serve()
    finally:
        channel.close()


if __name__ == "__main__":
    main()
