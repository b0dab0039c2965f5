"""Reading form uploads (multipart or urlencoded) without holding more than they may keep."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import BadHttpMessage
from multidict import MultiDictProxy

from ..errors import ApiError
from ..exceptions import InvalidInput

# Longest text field of a form; speech input is bounded by MAX_TOTAL_LENGTH before this.
FIELD_LIMIT = 1 << 20
_CHUNK = 64 * 1024


@dataclass
class Form:
    fields: dict[str, str] = field(default_factory=dict)
    data: bytes | None = None
    filename: str | None = None


async def read_form(request: web.Request, text_fields: Collection[str], file_field: str, max_file_bytes: int) -> Form:
    """The known fields and the file of a form, streamed; other fields are skipped unread.

    The file is read no further than one byte past ``max_file_bytes`` (so the caller sees it
    is too large). A urlencoded form is read too, so one sent without its file hears what is
    missing.
    """
    if request.content_type == "application/x-www-form-urlencoded":
        posted = await posted_form(request)
        return Form({name: posted[name] for name in text_fields if isinstance(posted.get(name), str)})
    if request.content_type != "multipart/form-data":
        raise ApiError(415, f"Content-Type must be multipart/form-data, got {request.content_type!r}")
    form = Form()
    try:
        async for part in await request.multipart():
            if not isinstance(part, BodyPartReader):
                continue
            if part.name == file_field and part.filename is not None:
                form.data = await _read_part(part, max_file_bytes)
                form.filename = part.filename
            elif part.name in text_fields:
                form.fields[part.name] = await _read_text(part)
    except (ValueError, BadHttpMessage) as exc:
        raise InvalidInput(f"Malformed multipart body: {exc}") from None
    return form


async def posted_form(request: web.Request) -> MultiDictProxy:
    """``request.post()``, with a body it cannot parse (bad charset, bytes, boundary or part
    headers) as a 400 rather than a crash."""
    try:
        return await request.post()
    except (ValueError, LookupError, BadHttpMessage) as exc:
        raise InvalidInput(f"Malformed form body: {exc}") from None


async def _read_part(part: BodyPartReader, limit: int) -> bytes:
    data = bytearray()
    while len(data) <= limit and (chunk := await part.read_chunk(_CHUNK)):
        data += chunk
    return bytes(data)


async def _read_text(part: BodyPartReader) -> str:
    raw = await _read_part(part, FIELD_LIMIT)
    if len(raw) > FIELD_LIMIT:
        raise InvalidInput(f"Field {part.name} is too long", param=part.name)
    try:
        return raw.decode(part.get_charset("utf-8"))
    except (UnicodeDecodeError, LookupError):
        raise InvalidInput(f"Field {part.name} is not valid text", param=part.name) from None
