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
# More parts than any form of this server has fields: a body of thousands of parts is refused.
MAX_PARTS = 64
_CHUNK = 64 * 1024


@dataclass
class Form:
    fields: dict[str, str] = field(default_factory=dict)
    data: bytes | None = None
    filename: str | None = None


async def read_form(request: web.Request, text_fields: Collection[str], file_field: str, max_file_bytes: int) -> Form:
    """The known fields and the file of a form, streamed; other fields are read and dropped.

    The file is kept no further than one byte past ``max_file_bytes`` (so the caller sees it
    is too large). Every byte of every part, kept or not, counts against the body size limit
    (MAX_BODY_SIZE, plus ``max_file_bytes`` for the file), and a form has at most
    ``MAX_PARTS`` parts. A urlencoded form is read too, so one sent without its file hears
    what is missing.
    """
    if request.content_type == "application/x-www-form-urlencoded":
        posted = await posted_form(request)
        return Form({name: posted[name] for name in text_fields if isinstance(posted.get(name), str)})
    if request.content_type != "multipart/form-data":
        raise ApiError(415, f"Content-Type must be multipart/form-data, got {request.content_type!r}")
    form = Form()
    budget = request.client_max_size + max_file_bytes
    parts = 0
    try:
        async for part in await request.multipart():
            parts += 1
            if parts > MAX_PARTS:
                raise InvalidInput(f"A form may have at most {MAX_PARTS} parts", code="too_many_parts")
            _check_budget(request, budget)
            if not isinstance(part, BodyPartReader):
                raise InvalidInput("Nested multipart bodies are not accepted")
            if part.name == file_field and part.filename is not None:
                form.data = await _read_part(request, part, max_file_bytes, budget)
                form.filename = part.filename
            elif part.name is not None and part.name in text_fields:
                form.fields[part.name] = await _read_text(request, part, budget)
            else:
                await _read_part(request, part, 0, budget)
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


async def _read_part(request: web.Request, part: BodyPartReader, limit: int, budget: int) -> bytes:
    """The part's first ``limit + 1`` bytes; the rest is read and dropped, the whole body's
    bytes counted against ``budget`` all along."""
    data = bytearray()
    while chunk := await part.read_chunk(_CHUNK):
        _check_budget(request, budget)
        if len(data) <= limit:
            data += chunk[: limit + 1 - len(data)]
    return bytes(data)


def _check_budget(request: web.Request, budget: int) -> None:
    if request.content.total_bytes > budget:
        raise ApiError(413, "Request body is larger than the server accepts")


async def _read_text(request: web.Request, part: BodyPartReader, budget: int) -> str:
    raw = await _read_part(request, part, FIELD_LIMIT, budget)
    if len(raw) > FIELD_LIMIT:
        raise InvalidInput(f"Field {part.name} is too long", param=part.name)
    try:
        return raw.decode(part.get_charset("utf-8"))
    except (UnicodeDecodeError, LookupError):
        raise InvalidInput(f"Field {part.name} is not valid text", param=part.name) from None
