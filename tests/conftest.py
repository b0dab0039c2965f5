"""Shared fixtures: apps on the real embedded voice or on a scripted engine."""

from __future__ import annotations

import asyncio
import io
import wave
from pathlib import Path

import pytest
from doubles import ScriptedEngine, hosted

from chatterbox_status.api import long_text
from chatterbox_status.api.long_text import LONG_TEXT
from chatterbox_status.app import create_app
from chatterbox_status.config import Settings
from chatterbox_status.longtext.config import LongTextConfig
from chatterbox_status.longtext.manager import LongTextManager
from chatterbox_status.state import CORE


@pytest.fixture
def make_client(aiohttp_client, tmp_path):
    """Start an app (hibari unless an engine is given) and wait until its engine is loaded."""

    async def make(engine=None, wait_loaded: bool = True, **overrides):
        defaults = {
            "enable_memory_monitoring": True,
            "voice_library_dir": str(tmp_path / "voices"),
            "data_dir": str(tmp_path / "data"),
        }
        settings = Settings(**{**defaults, **overrides})
        client = await aiohttp_client(create_app(settings, hosted(engine)))
        if wait_loaded:
            await asyncio.wait_for(core_of(client).worker.wait_loaded(), 60)
        return client

    return make

def build_app(engine, data_dir: Path, voices_dir: Path, settings: dict | None = None, **config):
    """create_app plus the long-text routes, with the given long-text settings."""
    settings = Settings(voice_library_dir=str(voices_dir), **(settings or {}))
    app = create_app(settings, hosted(engine))
    lt = LongTextConfig(data_dir=str(data_dir), **config)
    if LONG_TEXT in app:  # app.py already wires long_text: swap in this test's settings
        app[LONG_TEXT] = LongTextManager(app[CORE], lt)
    else:
        long_text.setup(app, lt)
    return app


@pytest.fixture
def make_long(aiohttp_client, tmp_path):
    async def make(engine, data_dir: Path | None = None, hold: bool = False, settings: dict | None = None, **config):
        app = build_app(engine, data_dir or tmp_path / "data", tmp_path / "voices", settings, **config)
        client = await aiohttp_client(app)
        await asyncio.wait_for(core_of(client).worker.wait_loaded(), 30)
        if hold:  # after the warm-up
            engine.hold()
        return client

    return make


def core_of(client):
    return client.server.app[CORE]

def let_go(engine: ScriptedEngine) -> None:
    """Free whatever the engine thread waits on, so a failed test cannot hang the process at exit."""
    engine.load_gate.set()
    engine.release(10_000)


@pytest.fixture
def scripted():
    engine = ScriptedEngine()
    yield engine
    let_go(engine)


@pytest.fixture
def make_scripted():
    """ScriptedEngine(**options), let go of when the test ends."""
    made: list[ScriptedEngine] = []

    def make(**options) -> ScriptedEngine:
        made.append(ScriptedEngine(**options))
        return made[-1]

    yield make
    for engine in made:
        let_go(engine)

def decode_wav(data: bytes) -> tuple[int, int, int]:
    """(sample rate, channels, frames) of a WAV file."""
    with wave.open(io.BytesIO(data)) as w:
        return w.getframerate(), w.getnchannels(), w.getnframes()

def record_events(client, types=("status", "progress")) -> list:
    """Every bus event of the given types from now on, in bus order."""
    seen: list = []
    core_of(client).bus.add_listener(lambda e: seen.append(e) if e.type in types else None)
    return seen


def assert_error_shape(body: dict, param=None) -> None:
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"].strip()
    assert isinstance(error["type"], str) and error["type"]
    assert error["param"] is None or isinstance(error["param"], str)
    assert error["code"] is None or isinstance(error["code"], str)
    if param is not None:
        assert error["param"] == param, error
