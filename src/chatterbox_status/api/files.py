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
from aiohttp.helpers import parse_http_date

_EMPTY_SUFFIX = re.compile(r"bytes=-0+", re.IGNORECASE)


class FileDownload(web.FileResponse):
    def __init__(self, path: Path, headers: dict[str, str]) -> None:
        super().__init__(path, headers=headers)
        self._file = path

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        wanted = request.headers.get("Range")
        if wanted is not None:
            st = await asyncio.to_thread(os.stat, self._file)
            validator = request.headers.get("If-Range")
            if validator is not None and not _matches(validator, st):
                headers = request.headers.copy()
                del headers["Range"], headers["If-Range"]
                request = request.clone(headers=headers)
            elif _EMPTY_SUFFIX.fullmatch(wanted.strip()):
                self.headers["Content-Range"] = f"bytes */{st.st_size}"
                self.set_status(416)
                return await web.StreamResponse.prepare(self, request)
        return await super().prepare(request)


def _matches(validator: str, st: os.stat_result) -> bool:
    """RFC 9110 13.1.5: the file's own strong ETag (as FileResponse makes it), or its exact date."""
    validator = validator.strip()
    if validator.startswith(('"', "W/")):
        return validator == f'"{st.st_mtime_ns:x}-{st.st_size:x}"'
    date = parse_http_date(validator)
    return date is not None and int(date.timestamp()) == math.ceil(st.st_mtime)  # as Last-Modified says it
