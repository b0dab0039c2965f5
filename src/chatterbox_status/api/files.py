"""File downloads: aiohttp's FileResponse, with RFC 9110's range rules where it departs from them.

* ``Range: bytes=-0`` asks for the last zero bytes: unsatisfiable, so 416 (aiohttp sends
  the whole file as a 206).
* ``If-Range`` that does not match the file (an ETag other than its own, or a date other
  than its Last-Modified) means "send it all": 200 with the whole file (aiohttp honours
  the Range whenever the validator is an ETag, or a date after the file's).
"""

from __future__ import annotations

import asyncio
import math
import os
import re
from pathlib import Path

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

_EMPTY_SUFFIX = re.compile(r"bytes=-0+", re.IGNORECASE)


class FileDownload(web.FileResponse):
    """A file to download; only a request with Range is looked at here, the rest is aiohttp's."""

    def __init__(self, path: Path, headers: dict[str, str]) -> None:
        super().__init__(path, headers=headers)
        self._file = path

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        wanted = request.headers.get("Range")
        if wanted is not None:
            try:
                st = await asyncio.to_thread(os.stat, self._file)
            except OSError:  # gone since the handler looked: aiohttp's own 404
                return await super().prepare(request)
            if "If-Range" in request.headers and not _matches(request, st):
                headers = request.headers.copy()
                del headers["Range"], headers["If-Range"]
                request = request.clone(headers=headers)
            elif _EMPTY_SUFFIX.fullmatch(wanted.strip()):
                self.headers["Content-Range"] = f"bytes */{st.st_size}"
                self.set_status(416)
                return await web.StreamResponse.prepare(self, request)
        return await super().prepare(request)


def _matches(request: web.BaseRequest, st: os.stat_result) -> bool:
    """RFC 9110 13.1.5: If-Range is the file's own strong ETag (as FileResponse makes it),
    or exactly its date."""
    validator = request.headers["If-Range"].strip()
    if validator.startswith(('"', "W/")):
        return validator == f'"{st.st_mtime_ns:x}-{st.st_size:x}"'
    date = request.if_range
    return date is not None and int(date.timestamp()) == math.ceil(st.st_mtime)  # as Last-Modified says it
