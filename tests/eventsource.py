"""A client for ``text/event-stream`` that reads the way a browser's EventSource does.

:class:`EventStreamParser` follows the WHATWG HTML standard's "event stream
interpretation": UTF-8 with one leading BOM ignored; lines end at CRLF, LF or CR (also
when a read ends between the CR and the LF); ``:`` lines are comments; ``field:value``
with one leading space stripped from the value (a line without a colon is a field with
an empty value); ``data`` lines are joined with "\\n"; ``id`` sets the last event id
unless it contains NUL, and it persists across events; ``event`` sets the type (default
"message"); ``retry`` takes ASCII digits only; a blank line dispatches, and an event
with an empty data buffer is not dispatched. An event left unterminated at the end of
the stream is discarded.

:class:`EventSource` feeds it from an aiohttp ``ClientResponse`` read by ``readany()``,
so events split across (or packed into) reads come out whole, and keeps the comment
lines (keep-alive pings) apart for whoever wants them.
"""

from __future__ import annotations

import asyncio
import codecs
import json
from dataclasses import dataclass
from typing import Any

READ_TIMEOUT = 10.0


@dataclass(frozen=True)
class Message:
    type: str
    data: str
    last_event_id: str

    @property
    def id(self) -> int:
        """The event id as the integer the server promises it is."""
        assert self.last_event_id.isdigit(), f"event id {self.last_event_id!r} is not an integer"
        return int(self.last_event_id)

    def json(self) -> Any:
        return json.loads(self.data)


@dataclass(frozen=True)
class Comment:
    text: str  # the line without its leading ':'


class EventStreamParser:
    """Bytes in, dispatched :class:`Message` and :class:`Comment` items out, in stream order."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""  # text of an unfinished line
        self._skip_lf = False  # the previous piece ended with CR: a leading LF belongs to it
        self._started = False  # past the (optional) BOM
        self._data: list[str] = []
        self._type = ""
        self._last_id_buffer = ""
        self.last_event_id = ""
        self.retry: int | None = None

    def feed(self, chunk: bytes) -> list[Message | Comment]:
        return self._text(self._decoder.decode(chunk))

    def close(self) -> list[Message | Comment]:
        """End of stream: flush the decoder; an unterminated line and event are discarded."""
        self._text(self._decoder.decode(b"", final=True))
        self._pending = ""
        self._data, self._type = [], ""
        return []

    def _text(self, text: str) -> list[Message | Comment]:
        if not self._started and text:
            self._started = True
            if text.startswith("\ufeff"):
                text = text[1:]
        if self._skip_lf and text:
            self._skip_lf = False
            if text.startswith("\n"):
                text = text[1:]
        out: list[Message | Comment] = []
        buffer = self._pending + text
        start = 0
        i = 0
        n = len(buffer)
        while i < n:
            ch = buffer[i]
            if ch == "\r" or ch == "\n":
                item = self._line(buffer[start:i])
                if item is not None:
                    out.append(item)
                if ch == "\r":
                    if i + 1 < n:
                        if buffer[i + 1] == "\n":
                            i += 1
                    else:
                        self._skip_lf = True  # the LF of this CRLF may come in the next read
                i += 1
                start = i
            else:
                i += 1
        self._pending = buffer[start:]
        return out

    def _line(self, line: str) -> Message | Comment | None:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return Comment(line[1:])
        field, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if field == "event":
            self._type = value
        elif field == "data":
            self._data.append(value)
        elif field == "id":
            if "\0" not in value:
                self._last_id_buffer = value
        elif field == "retry":
            if value and all("0" <= c <= "9" for c in value):
                self.retry = int(value)
        return None

    def _dispatch(self) -> Message | None:
        self.last_event_id = self._last_id_buffer
        data, type_ = self._data, self._type
        self._data, self._type = [], ""
        if not data:
            return None
        return Message(type_ or "message", "\n".join(data), self.last_event_id)


class EventSource:
    """Reads an aiohttp response as an event stream; every read is bounded by a timeout."""

    def __init__(self, response, timeout: float = READ_TIMEOUT) -> None:
        self.response = response
        self.timeout = timeout
        self.parser = EventStreamParser()
        self.items: list[Message | Comment] = []  # everything read so far, in order
        self.comments: list[str] = []
        self._ready: list[Message | Comment] = []
        self.eof = False

    async def _fill(self) -> bool:
        """Read once more from the body; False at end of stream."""
        if self.eof:
            return False
        chunk = await asyncio.wait_for(self.response.content.readany(), self.timeout)
        if not chunk:
            self.eof = True
            self._ready.extend(self.parser.close())
            return False
        self._ready.extend(self.parser.feed(chunk))
        return True

    async def next_item(self) -> Message | Comment | None:
        """The next event or comment, or None at end of stream."""
        while not self._ready:
            if not await self._fill():
                return None
        item = self._ready.pop(0)
        self.items.append(item)
        if isinstance(item, Comment):
            self.comments.append(item.text)
        return item

    async def next_event(self) -> Message | None:
        """The next event (comments are kept in ``comments``), or None at end of stream."""
        while (item := await self.next_item()) is not None:
            if isinstance(item, Message):
                return item
        return None

    async def next_comment(self) -> Comment | None:
        while (item := await self.next_item()) is not None:
            if isinstance(item, Comment):
                return item
        return None

    async def events(self, count: int) -> list[Message]:
        """Exactly ``count`` more events; fails if the stream ends first."""
        out = []
        for _ in range(count):
            event = await self.next_event()
            assert event is not None, f"stream ended after {len(out)} of {count} events"
            out.append(event)
        return out

    async def until(self, predicate) -> list[Message]:
        """Events up to and including the first one ``predicate`` accepts."""
        out = []
        while True:
            event = await self.next_event()
            assert event is not None, f"stream ended before the expected event; got {[e.type for e in out]}"
            out.append(event)
            if predicate(event):
                return out

    async def rest(self) -> list[Message]:
        """Every event until the server ends the stream."""
        out = []
        while (event := await self.next_event()) is not None:
            out.append(event)
        return out
