"""Small helpers several test modules share: ports, plain HTTP, audio clips, the lifecycle."""

from __future__ import annotations

import io
import json
import socket
import urllib.error
import urllib.request
import wave

import numpy as np

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
