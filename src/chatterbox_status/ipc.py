"""The frames between the server and its engine process: a JSON header, then raw bytes.

A frame is a 4-byte big-endian header length, the header (a JSON object), and, when the
header says ``"bytes": n``, n bytes of payload: audio crosses as raw float32 samples, never
pickled or base64-encoded (a minute of 24 kHz audio is 5.8 MB).
"""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any, BinaryIO

_LENGTH = struct.Struct(">I")


def frame(header: dict[str, Any], payload: bytes = b"") -> bytes:
    if payload:
        header = {**header, "bytes": len(payload)}
    encoded = json.dumps(header, separators=(",", ":")).encode()
    return _LENGTH.pack(len(encoded)) + encoded + payload


async def read(reader: asyncio.StreamReader) -> tuple[dict[str, Any], bytes]:
    """The next frame (raises asyncio.IncompleteReadError at the end of the stream)."""
    (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
    header = json.loads(await reader.readexactly(length))
    size = header.get("bytes", 0)
    return header, (await reader.readexactly(size) if size else b"")


def read_blocking(stream: BinaryIO) -> tuple[dict[str, Any], bytes] | None:
    """The next frame from a file, or None at its end."""
    prefix = stream.read(_LENGTH.size)
    if len(prefix) < _LENGTH.size:
        return None
    header = json.loads(_read_exactly(stream, _LENGTH.unpack(prefix)[0]))
    size = header.get("bytes", 0)
    return header, (_read_exactly(stream, size) if size else b"")


def _read_exactly(stream: BinaryIO, size: int) -> bytes:
    data = stream.read(size)
    if len(data) < size:
        raise EOFError("the stream ended inside a frame")
    return data
