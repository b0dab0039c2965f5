"""Joining generated chunks and encoding the result; CPU work that runs off the event loop."""

from __future__ import annotations

import io
import wave

import numpy as np

# Silence between chunks: a sentence-sized breath, so joins sound like speech, not splices.
PAUSE_SECONDS = 0.2

CONTENT_TYPES = {
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}
FORMATS = tuple(CONTENT_TYPES)


def join_chunks(pieces: list[np.ndarray], sample_rate: int, pause_seconds: float = PAUSE_SECONDS) -> np.ndarray:
    """Concatenate chunk audio with a short pause between chunks."""
    if not pieces:
        return np.zeros(0, dtype=np.float32)
    gap = np.zeros(int(round(pause_seconds * sample_rate)), dtype=np.float32)
    parts: list[np.ndarray] = []
    for index, piece in enumerate(pieces):
        if index:
            parts.append(gap)
        parts.append(np.asarray(piece, dtype=np.float32).reshape(-1))
    return np.concatenate(parts)


def to_pcm16(samples: np.ndarray) -> bytes:
    """16-bit little-endian PCM, clipped rather than wrapped on overs."""
    clipped = np.clip(samples, -1.0, 1.0)
    return (clipped * 32767.0).round().astype("<i2").tobytes()


def encode(samples: np.ndarray, sample_rate: int, response_format: str) -> bytes:
    """Encode mono float samples as ``response_format`` (one of FORMATS)."""
    pcm = to_pcm16(samples)
    if response_format == "pcm":
        return pcm
    if response_format == "wav":
        buffer = io.BytesIO()
        with wave.open(buffer, "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(sample_rate)
            out.writeframes(pcm)
        return buffer.getvalue()
    raise ValueError(f"unsupported response_format {response_format!r}")
