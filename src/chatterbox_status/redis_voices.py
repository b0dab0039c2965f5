"""The voice library in Redis, so every node of a cluster has the same voices (REDIS_URL).

The index and every clip live in Redis; each node keeps the clips on its own disk too,
because the engines read files. A change is one optimistic transaction (WATCH the index;
MULTI: the new index with the clips it adds or drops), then a ``voices`` event on the
shared event log tells every node to load the index again. A node takes a new index only
once it holds every clip the index names, so a voice a node lists is a voice it can speak.
A node removes from its disk only the clips of voices the cluster deleted, never files it
did not get from the cluster; the first node that starts with a library of its own on disk
while Redis has none puts that library in Redis.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar, cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError, WatchError

from .events import Event, EventBus
from .exceptions import SharedStateUnavailable
from .redis_events import KEY
from .voices import INDEX_NAME, VoiceIndex, VoiceLibrary, write_atomic

log = logging.getLogger(__name__)

INDEX = KEY + "voices:index"
CLIP = KEY + "voices:clip:"  # + the clip's file name

T = TypeVar("T")


def _files(index: VoiceIndex) -> set[str]:
    return {entry.filename for entry in index.voices.values()}


class SharedVoiceLibrary(VoiceLibrary):
    """The library of every node sharing ``url``: reads from memory as on one node, changes
    through Redis, and the local directory a copy of the clips."""

    def __init__(self, directory: Path | str, url: str, bus: EventBus) -> None:
        # Not VoiceLibrary.__init__: the index is Redis's (start), not the directory's.
        self.directory = Path(directory)
        self._index_path = self.directory / INDEX_NAME
        self._lock = asyncio.Lock()
        self._index = VoiceIndex.build([])
        self._client = aioredis.from_url(url)
        self._bus = bus
        self._refreshing: asyncio.Task | None = None
        self._again = False
        bus.add_listener(self._changed_elsewhere)

    async def start(self) -> None:
        """Take the cluster's library (its clips copied here) before serving; give it this
        node's own library when it has none."""
        try:
            if self._index_path.is_file() and not await self._client.exists(INDEX):
                own = await asyncio.to_thread(self._load)
                await self._apply(lambda current: (current, None) if current.voices else (own, None))
            await self._refresh()
        except RedisError as exc:
            log.error("voice library: Redis unreachable at start (%s); it loads on the next change", exc)

    async def stop(self) -> None:
        if self._refreshing is not None:
            self._refreshing.cancel()
        await self._client.aclose()

    async def _apply(self, change: Callable[[VoiceIndex], tuple[VoiceIndex, T]]) -> T:
        """One change, atomic in Redis against every node's: retried when another node
        changed the index meanwhile."""
        async with self._lock:
            try:
                while True:
                    try:
                        index, result = await self._commit(change)
                        break
                    except WatchError:
                        continue
                if index is not None:
                    self._index = await self._with_clips(index)
            except RedisError as exc:
                raise SharedStateUnavailable(f"The voice library (Redis) is unreachable: {exc}") from exc
            if index is not None:
                self._bus.publish("voices", {"voices": len(index.voices)})
            return result

    async def _commit(self, change: Callable[[VoiceIndex], tuple[VoiceIndex, T]]) -> tuple[VoiceIndex | None, T]:
        async with self._client.pipeline(transaction=True) as pipe:
            await pipe.watch(INDEX)
            raw = cast(bytes | None, await pipe.get(INDEX))
            current = VoiceIndex.build([]) if raw is None else VoiceIndex.decode(raw)
            index, result = change(current)
            if index is current:
                return None, result
            added, dropped = _files(index) - _files(current), _files(current) - _files(index)
            # An added clip was written here by add() before the change.
            clips = {name: await asyncio.to_thread((self.directory / name).read_bytes) for name in added}
            pipe.multi()
            pipe.set(INDEX, index.encode())
            for name, data in clips.items():
                pipe.set(CLIP + name, data)
            if dropped:
                pipe.delete(*(CLIP + name for name in dropped))
            await pipe.execute()
            return index, result

    def _changed_elsewhere(self, event: Event) -> None:
        if event.type != "voices" or event.data.get("node") == self._bus.node:
            return
        if self._refreshing is not None and not self._refreshing.done():
            self._again = True  # one more load once this one ends: it may predate the change
            return
        self._refreshing = asyncio.get_running_loop().create_task(self._refresh_while_changed())

    async def _refresh_while_changed(self) -> None:
        try:
            self._again = True
            while self._again:
                self._again = False
                await self._refresh()
        except RedisError as exc:
            log.error("voice library: could not load the cluster's library: %s", exc)

    async def _refresh(self) -> None:
        """Load the index from Redis, copy its clips here, then take it; delete the clips of
        the voices it no longer has."""
        raw = cast(bytes | None, await self._client.get(INDEX))
        index = await self._with_clips(VoiceIndex.build([]) if raw is None else VoiceIndex.decode(raw))
        async with self._lock:
            old, self._index = self._index, index
        for name in _files(old) - _files(index):
            await asyncio.to_thread((self.directory / name).unlink, missing_ok=True)

    async def _with_clips(self, index: VoiceIndex) -> VoiceIndex:
        """``index`` once every clip it names is here (copied from Redis); without a voice
        whose clip has gone from Redis meanwhile (its deletion's event loads again)."""
        for entry in list(index.voices.values()):
            path = self.path(entry)
            if not path.is_file():
                data = cast(bytes | None, await self._client.get(CLIP + entry.filename))
                if data is None:
                    index = index.changed(entry, None)
                    continue
                await asyncio.to_thread(write_atomic, path, data)
        return index
