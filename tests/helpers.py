"""Small helpers several test modules share: ports, plain HTTP, audio clips, the lifecycle."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import socket
import sqlite3
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import wave
from pathlib import Path

import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from chatterbox_status.config import Settings
from chatterbox_status.protocol import JsonErrorAppRunner

# Every status a whole-file request passes through, in order.
LIFECYCLE = [
    "queued",
    "initializing",
    "processing_text",
    "chunking",
    "generating_audio",
    "concatenating",
    "finalizing",
    "completed",
]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body: dict | None = None, timeout: float = 30):
    """(status, headers, body bytes) of one request; HTTP errors are answers, not exceptions."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def wav_tone(seconds: float = 2.0, rate: int = 24_000, frequency: float = 220.0) -> bytes:
    """A 16-bit mono WAV of a sine tone: a stand-in voice clip that really decodes."""
    t = np.arange(int(seconds * rate)) / rate
    samples = (0.3 * np.sin(2 * np.pi * frequency * t) * 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.tobytes())
    return buffer.getvalue()


def pcm16_reference(samples: np.ndarray) -> bytes:
    """16-bit little-endian PCM from its definition, independent of the server's audio module:
    each float32 sample clipped to [-1, 1], times 32767 in float32, rounded half to even,
    packed with struct as a little-endian signed short."""
    clipped = np.minimum(np.maximum(np.asarray(samples, dtype=np.float32).reshape(-1), np.float32(-1)), np.float32(1))
    values = [round(float(x)) for x in clipped * np.float32(32767)]
    return struct.pack(f"<{len(values)}h", *values)


def wav_fields(data: bytes) -> tuple[dict[str, int], bytes]:
    """A WAV file's RIFF sizes and fmt fields, and its data chunk, read by hand from the bytes
    (``wave`` and PyAV ignore byte rate and block align; players do not)."""
    riff, riff_size, wave_id = struct.unpack_from("<4sI4s", data, 0)
    assert (riff, wave_id) == (b"RIFF", b"WAVE"), data[:12]
    fields = {"riff_size": riff_size}
    offset = 12
    while offset + 8 <= len(data):
        chunk_id, size = struct.unpack_from("<4sI", data, offset)
        body = offset + 8
        if chunk_id == b"fmt ":
            names = ("format", "channels", "sample_rate", "byte_rate", "block_align", "bits_per_sample")
            fields.update(zip(names, struct.unpack_from("<HHIIHH", data, body)))
            fields["fmt_size"] = size
        elif chunk_id == b"data":
            fields["data_size"] = size
            fields["data_offset"] = body
            return fields, data[body:] if size == 0xFFFFFFFF else data[body : body + size]
        offset = body + size + (size & 1)
    raise AssertionError("no data chunk in the WAV")


class JsonErrorTestServer(TestServer):
    """aiohttp's TestServer on the runner ``chatterbox-status serve`` uses, for tests of what
    aiohttp's protocol layer answers itself: ``await aiohttp_client(JsonErrorTestServer(app))``
    or ``async with JsonErrorTestServer(app) as server``. (pytest-aiohttp's ``aiohttp_client(app)``
    builds a plain TestServer, whose protocol errors are aiohttp's text/plain.)"""

    async def _make_runner(self, **kwargs) -> web.AppRunner:
        return JsonErrorAppRunner(self.app, **kwargs)


SETTING_ENV_NAMES = {f.metadata["env"] for f in dataclasses.fields(Settings)}


def clean_environ() -> dict[str, str]:
    """The outer environment without any of the server's settings."""
    return {k: v for k, v in os.environ.items() if k not in SETTING_ENV_NAMES}


def tail(path: Path, chars: int = 6000) -> str:
    """The end of a log, for a failure message."""
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


def start_serve(cwd: Path, port: int, *args: str) -> tuple[subprocess.Popen, Path]:
    """``chatterbox-status serve`` as a user starts it, on 127.0.0.1:``port`` with ``args``;
    its output goes to ``cwd/serve.log`` (returned with the process)."""
    log_path = cwd / "serve.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "chatterbox_status", "serve", "--host", "127.0.0.1", "--port", str(port), *args],
            cwd=cwd,
            env=clean_environ(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return process, log_path


def wait_healthy(base: str, process: subprocess.Popen, log_path: Path, deadline_s: float) -> dict:
    """Poll /health until it says healthy; fail early if the server exits."""
    deadline = time.monotonic() + deadline_s
    last = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"server exited with {process.returncode}:\n{tail(log_path)}")
        try:
            status, _, raw = http("GET", f"{base}/health", timeout=5)
            last = json.loads(raw)
            if status == 200 and last.get("status") == "healthy":
                return last
        except (urllib.error.URLError, ConnectionError, OSError, ValueError):
            pass
        time.sleep(0.1)  # poll interval, not synchronisation: the deadline loop decides
    pytest.fail(f"server not healthy within {deadline_s}s (last /health: {last}):\n{tail(log_path)}")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
        process.wait(timeout=30)


def lock_exclusively(database: Path) -> sqlite3.Connection:
    """Another process's hold on an SQLite database in exclusive locking mode (sqlite3's shell,
    a backup): no other connection opens it until the returned connection is closed."""
    holder = sqlite3.connect(database, isolation_level=None)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    return holder
