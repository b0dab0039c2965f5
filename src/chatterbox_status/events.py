"""The event bus: every state transition of every request, in one ordered stream.

The bus alone assigns event ids (increasing integers) and their order. Listeners are
synchronous folds (the status tracker) run as each event is delivered, so state is current
the moment an event exists; subscribers (SSE streams) get bounded queues and are dropped,
never waited on, when they fall behind. Events are plain JSON-ready records: the Redis
bus (redis_events.py) delivers the same events, numbered by Redis for every node, without
touching publishers or subscribers.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .exceptions import TooManyStreams


@dataclass(frozen=True)
class Event:
    id: int
    type: str
    data: dict[str, Any]

    @functools.cached_property
    def json(self) -> str:
        """The data as JSON, serialised once however many streams send it."""
        return json.dumps(self.data)


@dataclass(eq=False)
class Subscription:
    """One subscriber's bounded queue; ``dropped`` is set when it fell too far behind."""

    queue: asyncio.Queue[Event | None]
    dropped: bool = False
    closed: bool = field(default=False)

    async def get(self) -> Event | None:
        """The next event, or None once the subscription was dropped or the bus closed."""
        if self.closed and self.queue.empty():
            return None
        return await self.queue.get()


class EventBus:
    """In-process fan-out of events with a bounded replay ring; loop thread only."""

    # On a shared event log: where it is, and which of the processes sharing it this is.
    url: str | None = None
    node: str | None = None

    def __init__(
        self, replay_size: int = 1024, subscriber_queue_size: int = 256, max_subscribers: int | None = None
    ) -> None:
        self._last_id = 0
        self._replay: collections.deque[Event] = collections.deque(maxlen=replay_size)
        self._listeners: list[Callable[[Event], None]] = []
        self._subscribers: set[Subscription] = set()
        self._queue_size = subscriber_queue_size
        self._max_subscribers = max_subscribers
        self._closed = False

    @property
    def last_id(self) -> int:
        """The id of the newest event delivered here (what the tracker has folded)."""
        return self._last_id

    @property
    def problem(self) -> str | None:
        """Why events cannot be published now (None: they can; in process they always can)."""
        return None

    async def start(self) -> None:
        """Ready to publish (in process there is nothing to connect to)."""

    async def settled(self) -> None:
        """Return once every event published here so far is delivered: in process, at once.
        Whoever answers a client after publishing awaits this, so the client's next status
        request sees what its answer implied."""

    async def stop(self) -> None:
        """At the very end: end every subscription."""
        self.close()

    def add_listener(self, listener: Callable[[Event], None]) -> None:
        """Register a synchronous fold that sees every event before anyone else."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[Event], None]) -> None:
        self._listeners.remove(listener)

    def publish(self, type: str, data: dict[str, Any]) -> None:
        self._deliver(Event(self._last_id + 1, type, {"timestamp": time.time(), **data}))

    def _deliver(self, event: Event) -> None:
        """The event is the newest now: into the replay ring, through every listener, then
        to every subscriber."""
        self._last_id = event.id
        self._replay.append(event)
        for listener in self._listeners:
            listener(event)
        for sub in list(self._subscribers):
            if sub.queue.qsize() >= self._queue_size:
                self._drop(sub)
            else:
                sub.queue.put_nowait(event)

    def subscribe(self) -> Subscription:
        """A new subscriber's queue; after close() it is already ended. Every event stream
        subscribes here, so MAX_SSE_SUBSCRIBERS covers them all (raises TooManyStreams)."""
        if self._max_subscribers is not None and len(self._subscribers) >= self._max_subscribers:
            raise TooManyStreams(
                f"Too many open event streams ({self._max_subscribers}); try again later", retry_after=5
            )
        # One slot more than a subscriber may fall behind: room for the end marker, so the
        # events it does get are always an unbroken run that Last-Event-ID can resume.
        sub = Subscription(asyncio.Queue(self._queue_size + 1))
        if self._closed:
            self._end(sub)
        else:
            self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subscribers.discard(sub)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def since(self, last_id: int) -> list[Event] | None:
        """Events after ``last_id``, or None when some of them have left the replay ring or
        the id was never issued here (a client of an earlier run of the server)."""
        if last_id > self.last_id:
            return None
        if last_id == self.last_id:
            return []
        if not self._replay or self._replay[0].id > last_id + 1:
            return None
        return [e for e in self._replay if e.id > last_id]

    def close(self) -> None:
        """End every subscription (at shutdown): each sees None after what it has queued."""
        self._closed = True
        for sub in list(self._subscribers):
            self._end(sub)

    def _drop(self, sub: Subscription) -> None:
        sub.dropped = True
        self._end(sub)

    def _end(self, sub: Subscription) -> None:
        self._subscribers.discard(sub)
        sub.closed = True
        sub.queue.put_nowait(None)
