"""The server side of the Chatterbox tests: a tiny-checkpoint engine, a server per module, spies.

Importing this module needs neither torch nor chatterbox-tts (they are imported when a
model loads), so the test modules can be collected, and skipped, where they are missing.

* ``TinyChatterboxEngine(kind, checkpoint_dir)`` is the product's ``ChatterboxEngine``
  with two changes: ``_load_model`` runs the real ``from_local`` inside
  ``tiny_model.loading()`` (the tiny T3 backbone config), and for turbo caps the
  speech tokens for good (turbo's random weights never stop by themselves); and it streams
  within a chunk on the CPU too, as the product does only on a GPU.
* ``serve(engine, directory)`` runs one app on it, like ``tests/conftest.py``'s
  ``make_client`` but for as long as the ``async with`` lasts: a model loads (and warms
  up twice) once per test module, not once per test.
* ``Spy`` records the calls of a method on one instance, from whichever thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import threading
import wave
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from doubles import hosted

from chatterbox_status.app import create_app
from chatterbox_status.config import Settings
from chatterbox_status.engines.chatterbox import STREAMING_ENGINES, ChatterboxEngine
from chatterbox_status.state import CORE

# Turbo's speech tokens per generate: tiny_model.cap_tokens(model, N) gives N + 1, and
# generate() appends 3 silence tokens.
TURBO_TOKEN_CAP = 20
SAMPLES_PER_TOKEN = 960  # 24 kHz / 25 speech tokens per second
LOAD_TIMEOUT = 600.0
TERMINAL = ("completed", "error", "cancelled")


class TinyChatterboxEngine(ChatterboxEngine):
    """The product's engine on a tiny random-weight checkpoint built by ``tiny_model``."""

    def __init__(self, kind: str, checkpoint_dir: Path | str, device: str = "auto", max_batch_size: int = 0) -> None:
        super().__init__(kind, device=device, model_dir=str(checkpoint_dir), max_batch_size=max_batch_size)
        self.checkpoint_dir = Path(checkpoint_dir)

    def load(self, progress: Any) -> None:
        super().load(progress)
        # The product streams within a chunk on a GPU only; here, on the CPU, the same code
        # runs so the tests see it (windows take longer here, not wrongly).
        self.streams_within_chunk = self.name in STREAMING_ENGINES

    def _load_model(self, cls: Any, device: str) -> Any:
        from chatterbox_support import tiny_model

        with tiny_model.loading(self.checkpoint_dir):
            model = super()._load_model(cls, device)
        if self.name == "chatterbox-turbo":
            cap_turbo_tokens(model, TURBO_TOKEN_CAP)
            self.max_new_tokens = TURBO_TOKEN_CAP + 1  # batched chunks too, as many as the capped loop gives
        return model


def cap_turbo_tokens(model: Any, max_tokens: int) -> None:
    """Shadow ``model.t3.inference_turbo`` on the instance, for good, with one that stops
    after ``max_tokens`` (+1) tokens: ``generate`` hard-codes no limit of its own but 1000."""
    t3 = model.t3
    inference_turbo = t3.inference_turbo

    def capped(*args: Any, **kwargs: Any) -> Any:
        kwargs["max_gen_len"] = max_tokens
        return inference_turbo(*args, **kwargs)

    t3.inference_turbo = capped


def core_of(client: TestClient):
    return client.server.app[CORE]


@contextlib.asynccontextmanager
async def serve(engine: Any, directory: Path, **overrides: Any) -> AsyncIterator[TestClient]:
    """A test client on a fresh app around ``engine``, once the engine has loaded and warmed up.

    The defaults are those of ``make_client`` in tests/conftest.py.
    """
    defaults = {"enable_memory_monitoring": True, "voice_library_dir": str(Path(directory) / "voices")}
    settings = Settings(**{**defaults, **overrides})
    async with TestClient(TestServer(create_app(settings, hosted(engine)))) as client:
        core = core_of(client)
        await asyncio.wait_for(core.worker.wait_loaded(), LOAD_TIMEOUT)  # raises with the error if the load failed
        yield client


def decode_wav(data: bytes) -> tuple[int, int, int]:
    """(sample rate, channels, frames) of a WAV file."""
    with wave.open(io.BytesIO(data)) as w:
        return w.getframerate(), w.getnchannels(), w.getnframes()


def sha256_of(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass
class Call:
    args: tuple
    kwargs: dict
    # Whatever ``Spy``'s ``capture`` took from the world at call time.
    seen: Any = None


@dataclass
class Spy:
    """Replaces ``owner.name`` on the instance with a recording wrapper until ``restore()``.

    ``capture(*args, **kwargs)`` runs just before the real method, on the caller's thread.
    """

    owner: Any
    name: str
    capture: Callable[..., Any] | None = None
    calls: list[Call] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._had_own = self.name in vars(self.owner)
        self._original = getattr(self.owner, self.name)
        original = self._original

        def spy(*args: Any, **kwargs: Any) -> Any:
            seen = self.capture(*args, **kwargs) if self.capture is not None else None
            with self._lock:
                self.calls.append(Call(args, kwargs, seen))
            return original(*args, **kwargs)

        setattr(self.owner, self.name, spy)

    def restore(self) -> None:
        if self._had_own:
            setattr(self.owner, self.name, self._original)
        else:
            delattr(self.owner, self.name)


@contextlib.contextmanager
def spying(owner: Any, name: str, capture: Callable[..., Any] | None = None):
    spy = Spy(owner, name, capture)
    try:
        yield spy
    finally:
        spy.restore()


async def streamed_and_whole(client: TestClient, body: dict, timeout: float = LOAD_TIMEOUT) -> tuple[list[int], list[list[int]], bytes, bytes]:
    """``body`` spoken whole, then streamed (pcm both): the speech tokens S3Gen vocoded whole,
    the tokens of each window's flow pass, and the two responses' audio."""
    engine = core_of(client).engine
    body = {**body, "response_format": "pcm"}
    with spying(engine.model.s3gen, "inference") as whole_pass:
        whole = await asyncio.wait_for(client.post("/v1/audio/speech", json=body), timeout)
        whole_audio = await whole.read()
    assert whole.status == 200, whole_audio[:300]
    with spying(engine.model.s3gen, "flow_inference") as windows:
        streamed = await asyncio.wait_for(client.post("/v1/audio/speech/stream", json=body), timeout)
        streamed_audio = await streamed.read()
    assert streamed.status == 200, streamed_audio[:300]
    tokens = whole_pass.calls[-1].kwargs["speech_tokens"].reshape(-1).tolist()
    return tokens, [call.args[0].reshape(-1).tolist() for call in windows.calls], whole_audio, streamed_audio


def s3gen_tokens(call: Call) -> int:
    """Speech tokens a ``model.s3gen.inference`` call vocoded."""
    return int(call.kwargs["speech_tokens"].shape[-1])


class RequestEvents:
    """The bus events of requests with chosen ids, and a future per id for its terminal status."""

    def __init__(self, client: TestClient) -> None:
        self.events: dict[str, list] = {}
        self._ended: dict[str, asyncio.Future] = {}
        self._first_progress: dict[str, asyncio.Future] = {}
        core_of(client).bus.add_listener(self._on_event)

    def watch(self, request_id: str) -> None:
        loop = asyncio.get_running_loop()
        self.events[request_id] = []
        self._ended[request_id] = loop.create_future()
        self._first_progress[request_id] = loop.create_future()

    def _on_event(self, event) -> None:
        request_id = event.data.get("request_id")
        if request_id not in self.events:
            return
        self.events[request_id].append(event)
        if event.type == "progress" and not self._first_progress[request_id].done():
            self._first_progress[request_id].set_result(event)
        if event.type == "status" and event.data.get("status") in TERMINAL and not self._ended[request_id].done():
            self._ended[request_id].set_result(event.data["status"])

    def ended(self, request_id: str) -> asyncio.Future:
        return self._ended[request_id]

    def first_progress(self, request_id: str) -> asyncio.Future:
        return self._first_progress[request_id]

    def of(self, request_id: str, type: str) -> list[dict]:
        return [e.data for e in self.events[request_id] if e.type == type]


def running(client: TestClient, request_id: str) -> bool:
    """Whether the engine works on that request now (safe to ask from the engine thread)."""
    return request_id in core_of(client).worker.running


@contextlib.contextmanager
def engine_timeline(engine: Any):
    """What the engine thread reports, in order: ``("progress", fraction)`` for each call of
    the progress function the pipeline passed to ``synthesize``, and ``("s3gen",)`` when
    S3Gen starts on the speech tokens. Yields (timeline, spy on ``model.s3gen.inference``)."""
    timeline: list[tuple] = []
    synthesize = engine.synthesize

    def recording(text, voice, params, progress, cancel):
        def report(fraction: float) -> None:
            timeline.append(("progress", fraction))
            progress(fraction)

        return synthesize(text, voice, params, report, cancel)

    engine.synthesize = recording
    try:
        with spying(engine.model.s3gen, "inference", capture=lambda *a, **k: timeline.append(("s3gen",))) as s3gen:
            yield timeline, s3gen
    finally:
        del engine.synthesize
