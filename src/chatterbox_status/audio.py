"""Joining generated chunks, changing their speed and encoding them; CPU work that runs off the event loop."""

from __future__ import annotations

import io
import struct
import wave
from dataclasses import dataclass, field
from fractions import Fraction
from typing import BinaryIO

import av
import numpy as np
from av.audio.stream import AudioStream
from av.filter import Graph

# Silence between chunks: a sentence-sized breath, so joins sound like speech, not splices.
PAUSE_SECONDS = 0.2

# Opus always travels in Ogg here. "audio/ogg" is its registered type (RFC 7845); the optional
# "; codecs=opus" parameter is left off so the value compares equal to what HTTP clients parse back.
CONTENT_TYPES = {
    "wav": "audio/wav",
    "pcm": "audio/pcm",
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
    "flac": "audio/flac",
}
FORMATS = tuple(CONTENT_TYPES)

# OpenAI's speed range; atempo keeps the pitch across all of it.
SPEED_RANGE = (0.25, 4.0)

# Streamed WAV sizes: FFmpeg writes this placeholder itself when its output cannot seek, and FFmpeg
# and Python's wave read such a file to its end (wave then reports a meaningless getnframes()).
_UNKNOWN_SIZE = 0xFFFFFFFF


@dataclass(frozen=True)
class _Codec:
    """How PyAV produces one compressed format; ``sample_rate`` None keeps the source rate."""

    encoder: str
    container: str
    sample_rate: int | None = None
    bit_rate: int | None = None
    live_options: dict[str, str] = field(default_factory=dict)


_CODECS = {
    "mp3": _Codec("libmp3lame", "mp3", bit_rate=128_000),
    # Ogg holds packets until a page is full (1 s by default); short pages let streamed audio out sooner.
    "opus": _Codec("libopus", "ogg", sample_rate=48_000, bit_rate=64_000, live_options={"page_duration": "100000"}),
    # ADTS frames carry their own headers, so the stream plays without a container.
    "aac": _Codec("aac", "adts", bit_rate=128_000),
    "flac": _Codec("flac", "flac"),
}


def bytes_per_second(response_format: str, sample_rate: int) -> float:
    """About how many bytes a second of audio takes in ``response_format`` (at most, for
    lossless formats), for estimates of the disk a job needs."""
    codec = _CODECS.get(response_format)
    if codec is None or codec.bit_rate is None:
        return 2.0 * sample_rate  # 16-bit PCM (wav, pcm; FLAC is no larger)
    return codec.bit_rate / 8


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


def _pcm16(samples: np.ndarray) -> np.ndarray:
    """Mono 16-bit little-endian samples, clipped rather than wrapped on overs."""
    clipped = np.clip(np.asarray(samples).reshape(-1), -1.0, 1.0)
    return (clipped * 32767.0).round().astype("<i2")


def to_pcm16(samples: np.ndarray) -> bytes:
    """16-bit little-endian PCM, clipped rather than wrapped on overs."""
    return _pcm16(samples).tobytes()


def _atempo_stages(speed: float) -> list[float]:
    """Split ``speed`` into factors of 0.5..2.0, the range atempo handles without skipping audio."""
    stages: list[float] = []
    while speed > 2.0:
        stages.append(2.0)
        speed /= 2.0
    while speed < 0.5:
        stages.append(0.5)
        speed /= 0.5
    return [*stages, speed]


def change_speed(samples: np.ndarray, sample_rate: int, speed: float) -> np.ndarray:
    """Tempo x speed (0.25..4.0), pitch kept, with FFmpeg's atempo filter (chained, as atempo takes 0.5..2.0 per stage)."""
    low, high = SPEED_RANGE
    if not low <= speed <= high:
        raise ValueError(f"speed must be between {low} and {high}, not {speed}")
    mono = np.asarray(samples, dtype=np.float32).reshape(-1)
    if speed == 1.0 or not mono.size:
        return mono
    time_base = Fraction(1, sample_rate)
    graph = Graph()
    nodes = [graph.add_abuffer(sample_rate=sample_rate, format="flt", layout="mono", time_base=time_base)]
    nodes += [graph.add("atempo", tempo=str(stage)) for stage in _atempo_stages(speed)]
    nodes.append(graph.add("abuffersink"))
    graph.link_nodes(*nodes).configure()
    frame = av.AudioFrame.from_ndarray(mono.reshape(1, -1), format="flt", layout="mono")
    frame.sample_rate = sample_rate
    frame.time_base = time_base
    frame.pts = 0
    graph.push(frame)
    graph.push(None)
    out: list[np.ndarray] = []
    while True:
        try:
            out.append(graph.pull().to_ndarray().reshape(-1))
        except EOFError:
            return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


class _Sink(io.BytesIO):
    """In-memory muxer output whose bytes outlive the container.

    Unseekable when live, so muxers write strictly in order and never go back to patch bytes
    that were already sent; seekable otherwise, so they can finish headers (MP3 gapless info,
    FLAC length and checksum).
    """

    def __init__(self, seekable: bool) -> None:
        super().__init__()
        self._seekable = seekable

    def seekable(self) -> bool:
        return self._seekable

    def close(self) -> None:
        """Keep the bytes: PyAV closes its file along with the container."""

    def take(self) -> bytes:
        """The bytes written since the last take."""
        data = self.getvalue()
        self.seek(0)
        self.truncate()
        return data


class _Muxer:
    """One PyAV output container encoding mono audio into a compressed format, in memory."""

    def __init__(self, response_format: str, sample_rate: int, live: bool, target: BinaryIO | None = None) -> None:
        codec = _CODECS[response_format]
        self.sink = _Sink(seekable=not live)
        # Live: hand each packet over as soon as it is muxed rather than when PyAV's I/O buffer fills.
        options = {"flush_packets": "1", **codec.live_options} if live else {}
        self._container = av.open(
            self.sink if target is None else target, mode="w", format=codec.container, container_options=options
        )
        # Frames at the source rate are resampled to the stream's rate by PyAV's encoder.
        stream = self._container.add_stream(codec.encoder, rate=codec.sample_rate or sample_rate, layout="mono")
        assert isinstance(stream, AudioStream)
        self._stream = stream
        if codec.bit_rate:
            self._stream.bit_rate = codec.bit_rate
        self._sample_rate = sample_rate
        self._pts = 0

    def start(self) -> None:
        """Write the container header."""
        self._container.start_encoding()

    def write(self, samples: np.ndarray) -> None:
        pcm = _pcm16(samples)
        if not pcm.size:
            return
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self._sample_rate
        frame.time_base = Fraction(1, self._sample_rate)
        frame.pts = self._pts
        self._pts += pcm.size
        self._container.mux(self._stream.encode(frame))

    def close(self) -> None:
        """Flush the encoder and write the trailer."""
        self._container.mux(self._stream.encode(None))
        self._container.close()


def _wav_stream_header(sample_rate: int) -> bytes:
    """A 16-bit mono WAV header for a stream whose length is not known yet."""
    fmt = struct.pack("<HHIIHH", 1, 1, sample_rate, sample_rate * 2, 2, 16)
    return b"".join(
        [
            b"RIFF",
            struct.pack("<I", _UNKNOWN_SIZE),
            b"WAVEfmt ",
            struct.pack("<I", len(fmt)),
            fmt,
            b"data",
            struct.pack("<I", _UNKNOWN_SIZE),
        ]
    )


def encode(samples: np.ndarray, sample_rate: int, response_format: str) -> bytes:
    """Encode mono float samples as ``response_format`` (one of FORMATS)."""
    if response_format == "pcm":
        return to_pcm16(samples)
    if response_format == "wav":
        buffer = io.BytesIO()
        with wave.open(buffer, "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(sample_rate)
            out.writeframes(to_pcm16(samples))
        return buffer.getvalue()
    if response_format in _CODECS:
        muxer = _Muxer(response_format, sample_rate, live=False)
        muxer.start()
        muxer.write(samples)
        muxer.close()
        return muxer.sink.take()
    raise ValueError(f"unsupported response_format {response_format!r}")


class StreamEncoder:
    """Feed float32 mono chunks as they are generated; get bytes that can be sent at once.

    Everything returned, in call order, concatenates to one playable stream. The stream header
    comes out once: from header(), or else at the front of the first feed() or finish().
    """

    def __init__(self, response_format: str, sample_rate: int) -> None:
        if response_format not in CONTENT_TYPES:
            raise ValueError(f"unsupported response_format {response_format!r}")
        self.content_type = CONTENT_TYPES[response_format]
        self._format = response_format
        self._sample_rate = sample_rate
        self._muxer = _Muxer(response_format, sample_rate, live=True) if response_format in _CODECS else None
        self._started = False
        self._finished = False

    def header(self) -> bytes:
        """Bytes to send before any audio; b"" for pcm or once the header has gone out."""
        if self._finished:
            raise RuntimeError("the stream is already finished")
        if self._started:
            return b""
        self._started = True
        if self._muxer is not None:
            self._muxer.start()
            return self._muxer.sink.take()
        if self._format == "wav":
            return _wav_stream_header(self._sample_rate)
        return b""

    def feed(self, samples: np.ndarray) -> bytes:
        """Encoded bytes ready now; b"" while a codec buffers up a frame or an Ogg page."""
        head = self.header()
        if self._muxer is None:
            return head + to_pcm16(samples)
        self._muxer.write(samples)
        return head + self._muxer.sink.take()

    def finish(self) -> bytes:
        """Flush: the rest of the stream."""
        head = self.header()
        self._finished = True
        if self._muxer is None:
            return head
        self._muxer.close()
        return head + self._muxer.sink.take()


class FileEncoder:
    """Encode audio piece by piece into an open binary file, whole and seekable, so the
    result is a finished file (WAV sizes, FLAC checksum, MP3 gapless info) while no more
    than one piece is ever in memory."""

    def __init__(self, target: BinaryIO, response_format: str, sample_rate: int) -> None:
        if response_format not in CONTENT_TYPES:
            raise ValueError(f"unsupported response_format {response_format!r}")
        self._target = target
        self._wave: wave.Wave_write | None = None
        self._muxer: _Muxer | None = None
        if response_format == "wav":
            self._wave = wave.open(target, "wb")
            self._wave.setnchannels(1)
            self._wave.setsampwidth(2)
            self._wave.setframerate(sample_rate)
        elif response_format in _CODECS:
            self._muxer = _Muxer(response_format, sample_rate, live=False, target=target)
            self._muxer.start()

    def write(self, samples: np.ndarray) -> None:
        if self._wave is not None:
            self._wave.writeframes(to_pcm16(samples))
        elif self._muxer is not None:
            self._muxer.write(samples)
        else:
            self._target.write(to_pcm16(samples))

    def close(self) -> None:
        """Finish the file's headers and trailer (the file itself stays open)."""
        if self._wave is not None:
            self._wave.close()
        elif self._muxer is not None:
            self._muxer.close()
