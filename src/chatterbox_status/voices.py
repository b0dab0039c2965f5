"""Voice names a speech request may use, and the library of uploaded voices behind them.

The OpenAI voice names (and "default") mean the default voice, so OpenAI clients work
unchanged; any other name must be a voice or alias in the library, never a silent fallback.

The library is one directory: each clip under a generated file name (a uuid and the
extension of the format it really is, never anything a client chose) and ``index.json``
with the names, aliases and facts about each clip. Reads answer from memory. A change
builds a new index, writes it atomically and only then swaps it in, one change at a time,
so memory and disk never disagree and a crash leaves either the old index or the new one.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import math
import os
import re
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

import av

from .engines.base import Voice

log = logging.getLogger(__name__)

OPENAI_VOICES = frozenset(
    {"alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer", "verse", "marin", "cedar"}
)
DEFAULT_NAMES = OPENAI_VOICES | {"default"}
# Fixed paths under /voices/ that a voice of the same name could never be reached past.
ROUTE_NAMES = frozenset({"all-names", "cleanup"})

MAX_UPLOAD_BYTES = 10 * 1024 * 1024
MIN_DURATION_S = 1.0
MAX_DURATION_S = 60.0
UPLOAD_EXTENSIONS = frozenset({"wav", "mp3", "flac", "ogg", "opus", "m4a", "aac", "webm"})
# What a stored clip's extension says it is; the extension comes from the decoded container.
CONTENT_TYPES = {
    "wav": "audio/wav",
    "mp3": "audio/mpeg",
    "flac": "audio/flac",
    "ogg": "audio/ogg",
    "m4a": "audio/mp4",
    "aac": "audio/aac",
    "webm": "audio/webm",
}
# FFmpeg's demuxer names (a container may list several, comma-separated) -> stored extension.
_CONTAINER_EXTENSIONS = {
    "wav": "wav",
    "mp3": "mp3",
    "flac": "flac",
    "ogg": "ogg",
    "mp4": "m4a",
    "m4a": "m4a",
    "aac": "aac",
    "webm": "webm",
}

# Uploads are opened with these demuxers only and with no protocol at all: FFmpeg's other
# inputs (sdp, hls, concat, rtp, tee, lavfi, ...) open sockets or files an uploader names.
_OPEN_OPTIONS = {"format_whitelist": ",".join(sorted(_CONTAINER_EXTENSIONS)), "protocol_whitelist": "none"}
# Uploads decode on threads of their own, so a slow one never holds the threads other work
# uses, and each gets this long, waiting for a thread included.
DECODE_WORKERS = 2
DECODE_BUDGET_S = 5.0
_decoder = ThreadPoolExecutor(DECODE_WORKERS, thread_name_prefix="voice-decode")

INDEX_NAME = "index.json"
INDEX_VERSION = 1
DEFAULT_LANGUAGE = "en"

_NAME = re.compile(r"[\w .-]{1,64}")
_LANGUAGE = re.compile(r"[a-z]{2,3}(?:-[a-z0-9]{2,4})?")

T = TypeVar("T")


class VoiceError(ValueError):
    """A change the library refuses; ``code`` names the reason for API clients."""

    code = "invalid_voice"


class InvalidName(VoiceError):
    code = "invalid_voice_name"


class InvalidLanguage(VoiceError):
    code = "invalid_language"


class InvalidAudio(VoiceError):
    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


class NameTaken(VoiceError):
    code = "voice_exists"


class UnknownVoice(LookupError):
    """No voice (or no such alias of it) has the name asked for."""


def check_name(name: str) -> str:
    """The name as stored, trimmed; safe anywhere a name goes, and never a path part."""
    name = name.strip()
    if not _NAME.fullmatch(name) or name.startswith("."):
        raise InvalidName(
            f"Voice name {name!r} is invalid: use 1 to 64 letters, digits, spaces, '-', '_' or '.', "
            "not starting with '.'"
        )
    folded = _fold(name)
    if folded in DEFAULT_NAMES:
        raise InvalidName(
            f"Voice name {name!r} is reserved: the OpenAI voice names and 'default' mean the default voice"
        )
    if folded in ROUTE_NAMES:
        raise InvalidName(f"Voice name {name!r} is reserved: /voices/{folded} is a route of its own")
    return name


def check_language(language: str) -> str:
    language = language.strip().lower()
    if not _LANGUAGE.fullmatch(language):
        raise InvalidLanguage(f"Language {language!r} is not a language code such as 'en', 'fr' or 'pt-br'")
    return language


def _fold(name: str) -> str:
    return name.strip().casefold()


@dataclass(frozen=True)
class Clip:
    """What decoding an upload taught us."""

    extension: str
    duration: float
    sha256: str


async def inspect_upload(data: bytes, filename: str | None = None) -> Clip:
    """:func:`inspect_clip` on the uploads' own threads, within ``DECODE_BUDGET_S``."""
    deadline = time.monotonic() + DECODE_BUDGET_S
    decoding = asyncio.get_running_loop().run_in_executor(_decoder, inspect_clip, data, filename, deadline)
    try:
        return await asyncio.wait_for(decoding, DECODE_BUDGET_S)
    except TimeoutError:
        raise _too_slow() from None


def inspect_clip(data: bytes, filename: str | None = None, deadline: float = math.inf) -> Clip:
    """Check an upload by decoding all of it: only audio FFmpeg reads to the end is kept,
    and only before ``deadline`` (``time.monotonic()``).

    Blocking and CPU-bound: run it off the event loop.
    """
    suffix = PurePosixPath(filename or "").suffix.lower().lstrip(".")
    if suffix and suffix not in UPLOAD_EXTENSIONS:
        raise InvalidAudio(
            f"Unsupported audio file type .{suffix}; use one of {', '.join(sorted(UPLOAD_EXTENSIONS))}",
            "unsupported_format",
        )
    if not data:
        raise InvalidAudio("The voice file is empty", "empty_file")
    if len(data) > MAX_UPLOAD_BYTES:
        raise InvalidAudio(f"The voice file is larger than {MAX_UPLOAD_BYTES // (1024 * 1024)} MiB", "file_too_large")
    try:
        with av.open(io.BytesIO(data), container_options=_OPEN_OPTIONS) as container:
            extension = _stored_extension(container.format.name)
            if not container.streams.audio:
                raise InvalidAudio("The voice file has no audio stream", "undecodable_audio")
            duration = _decoded_seconds(container, deadline)
    except av.FFmpegError as exc:
        message = f"The voice file is not audio this server can decode: {exc.strerror}"
        raise InvalidAudio(message, "undecodable_audio") from None
    if duration < MIN_DURATION_S:
        message = f"The voice clip lasts {duration:.2f} s; at least {MIN_DURATION_S:g} s is needed"
        raise InvalidAudio(message, "audio_too_short")
    if duration > MAX_DURATION_S:
        raise InvalidAudio(f"The voice clip is longer than {MAX_DURATION_S:g} s", "audio_too_long")
    return Clip(extension, duration, hashlib.sha256(data).hexdigest())


def _stored_extension(format_name: str) -> str:
    for name in format_name.split(","):
        if name in _CONTAINER_EXTENSIONS:
            return _CONTAINER_EXTENSIONS[name]
    raise InvalidAudio(f"Audio in a {format_name!r} container is not supported", "unsupported_format")


def _decoded_seconds(container: Any, deadline: float) -> float:
    """Seconds of audio, decoding no further than the limit needs."""
    seconds = 0.0
    for frame in container.decode(audio=0):
        seconds += frame.samples / frame.sample_rate
        if seconds > MAX_DURATION_S:
            break
        if time.monotonic() > deadline:
            raise _too_slow()
    return seconds


def _too_slow() -> InvalidAudio:
    return InvalidAudio(f"The voice file could not be decoded within {DECODE_BUDGET_S:g} s", "decode_timeout")


@dataclass(frozen=True)
class VoiceEntry:
    """One voice as the index records it."""

    name: str
    filename: str
    original_filename: str
    language: str
    upload_date: str
    file_size: int
    duration: float
    sha256: str
    aliases: tuple[str, ...] = ()

    @property
    def extension(self) -> str:
        return self.filename.rpartition(".")[2]

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.extension]

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "aliases": list(self.aliases)}

    @classmethod
    def from_json(cls, raw: Any) -> VoiceEntry:
        """An entry read back from the index; ValueError for anything the library would not write."""
        _require(isinstance(raw, dict) and isinstance(raw.get("aliases"), list), "an entry is not an object")
        entry = cls(**{**raw, "aliases": tuple(raw["aliases"])})
        texts = (entry.name, entry.filename, entry.original_filename, entry.language, entry.upload_date, entry.sha256)
        _require(all(isinstance(text, str) for text in texts), "a text field is not text")
        _require(isinstance(entry.file_size, int), "file_size is not a whole number")
        _require(isinstance(entry.duration, (int, float)), "duration is not a number")
        _require(all(isinstance(a, str) and check_name(a) == a for a in entry.aliases), "an alias is invalid")
        _require(check_name(entry.name) == entry.name, f"name {entry.name!r} is invalid")
        _require(_is_stored_filename(entry.filename), f"file name {entry.filename!r} is not one the library writes")
        return entry


def _is_stored_filename(filename: str) -> bool:
    """A plain file in the library directory: no directory part, no dot file, a known kind."""
    plain = "/" not in filename and "\\" not in filename and not filename.startswith(".")
    return plain and filename.rpartition(".")[2] in CONTENT_TYPES


def _require(condition: bool, problem: str) -> None:
    if not condition:
        raise ValueError(problem)


@dataclass(frozen=True)
class VoiceIndex:
    """An immutable snapshot of the library; every change makes a new one."""

    voices: Mapping[str, VoiceEntry]  # by folded name, in upload order
    names: Mapping[str, str]  # every folded name and alias -> folded name of its voice
    default: str | None = None  # folded name of the default voice

    @classmethod
    def build(cls, entries: Iterable[VoiceEntry], default: str | None = None) -> VoiceIndex:
        """The one place names are checked for uniqueness, across names and aliases alike."""
        voices: dict[str, VoiceEntry] = {}
        names: dict[str, str] = {}
        for entry in entries:
            key = _fold(entry.name)
            for label in (entry.name, *entry.aliases):
                folded = _fold(label)
                if folded in names:
                    raise _taken(label, voices.get(names[folded], entry))
                names[folded] = key
            voices[key] = entry
        _require(default is None or default in voices, f"the default voice {default!r} is not in the library")
        return cls(voices, names, default)

    def find(self, name: str) -> VoiceEntry | None:
        key = self.names.get(_fold(name))
        return None if key is None else self.voices[key]

    def entry(self, name: str) -> VoiceEntry:
        found = self.find(name)
        if found is None:
            raise UnknownVoice(f"Voice {name!r} not found")
        return found

    def changed(self, old: VoiceEntry, new: VoiceEntry | None) -> VoiceIndex:
        """This index with ``old`` replaced by ``new`` (or removed), the default following it."""
        key = _fold(old.name)
        entries = [new if k == key else e for k, e in self.voices.items()]
        default = self.default
        if default == key:
            default = None if new is None else _fold(new.name)
        return VoiceIndex.build([e for e in entries if e is not None], default)

    def encode(self) -> bytes:
        default = None if self.default is None else self.voices[self.default].name
        body = {
            "version": INDEX_VERSION,
            "default_voice": default,
            "voices": [entry.to_json() for entry in self.voices.values()],
        }
        return json.dumps(body, indent=2, ensure_ascii=False).encode()

    @classmethod
    def decode(cls, raw: bytes) -> VoiceIndex:
        """An index read back from disk; ValueError when it is not one the library wrote."""
        body = json.loads(raw)
        _require(isinstance(body, dict) and body.get("version") == INDEX_VERSION, "unknown index version")
        _require(isinstance(body.get("voices"), list), "voices is not a list")
        default = body.get("default_voice")
        _require(default is None or isinstance(default, str), "default_voice is not a name")
        entries = [VoiceEntry.from_json(raw_entry) for raw_entry in body["voices"]]
        return cls.build(entries, None if default is None else _fold(default))


class VoiceLibrary:
    """Uploaded reference voices on disk, addressed by name or alias, case-insensitively.

    The directory is created on the first write, so a server that never stores a voice
    leaves no trace on disk.
    """

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)
        self._index_path = self.directory / INDEX_NAME
        self._lock = asyncio.Lock()
        self._index = self._load()

    async def start(self) -> None:
        """Ready before serving (on one node the index was read from disk already)."""

    async def stop(self) -> None:
        """At the very end."""

    # -- reads: from memory, no lock needed on the event loop --------------------------

    def voices(self) -> list[VoiceEntry]:
        """Every voice, newest first."""
        return sorted(self._index.voices.values(), key=lambda e: e.upload_date, reverse=True)

    def get(self, name: str) -> VoiceEntry | None:
        """The voice with this name or alias."""
        return self._index.find(name)

    def all_names(self) -> list[str]:
        """Every name a speech request may use for a library voice: names and aliases."""
        return [label for entry in self._index.voices.values() for label in (entry.name, *entry.aliases)]

    def default(self) -> VoiceEntry | None:
        index = self._index
        return None if index.default is None else index.voices[index.default]

    def path(self, entry: VoiceEntry) -> Path:
        return self.directory / entry.filename

    # -- changes: one at a time, each written to disk before it is seen ----------------

    async def add(self, name: str, data: bytes, filename: str | None, language: str = DEFAULT_LANGUAGE) -> VoiceEntry:
        """Store a new voice; InvalidName, InvalidLanguage, InvalidAudio or NameTaken if refused."""
        name = check_name(name)
        language = check_language(language)
        taken = self._index.find(name)
        if taken is not None:  # fail fast, before decoding; the change below checks again
            raise _taken(name, taken)
        clip = await inspect_upload(data, filename)
        entry = VoiceEntry(
            name=name,
            filename=f"{uuid.uuid4().hex}.{clip.extension}",
            original_filename=PurePosixPath((filename or "").replace("\\", "/")).name[:255],
            language=language,
            upload_date=datetime.now(UTC).isoformat(),
            file_size=len(data),
            duration=round(clip.duration, 3),
            sha256=clip.sha256,
        )

        def change(index: VoiceIndex) -> tuple[VoiceIndex, VoiceEntry]:
            return VoiceIndex.build([*index.voices.values(), entry], index.default), entry

        path = self.path(entry)
        await asyncio.to_thread(write_atomic, path, data)
        try:
            return await self._change(change)
        except Exception:
            path.unlink(missing_ok=True)
            raise

    async def rename(self, name: str, new_name: str) -> VoiceEntry:
        """Give a voice a new name; its file, aliases and default status stay with it."""
        new_name = check_name(new_name)

        def change(index: VoiceIndex) -> tuple[VoiceIndex, VoiceEntry]:
            old = index.entry(name)
            aliases = tuple(a for a in old.aliases if _fold(a) != _fold(new_name))
            new = replace(old, name=new_name, aliases=aliases)
            return index.changed(old, new), new

        return await self._change(change)

    async def delete(self, name: str) -> VoiceEntry:
        """Remove a voice and its file; it stops being the default if it was."""

        def change(index: VoiceIndex) -> tuple[VoiceIndex, VoiceEntry]:
            old = index.entry(name)
            return index.changed(old, None), old

        gone = await self._change(change)
        await asyncio.to_thread(self.path(gone).unlink, missing_ok=True)
        return gone

    async def add_alias(self, name: str, alias: str) -> VoiceEntry:
        """Another name for a voice; adding one it already has changes nothing."""
        alias = check_name(alias)

        def change(index: VoiceIndex) -> tuple[VoiceIndex, VoiceEntry]:
            old = index.entry(name)
            if index.find(alias) is old:
                return index, old
            new = replace(old, aliases=(*old.aliases, alias))
            return index.changed(old, new), new

        return await self._change(change)

    async def remove_alias(self, name: str, alias: str) -> VoiceEntry:
        def change(index: VoiceIndex) -> tuple[VoiceIndex, VoiceEntry]:
            old = index.entry(name)
            kept = tuple(a for a in old.aliases if _fold(a) != _fold(alias))
            if len(kept) == len(old.aliases):
                raise UnknownVoice(f"Voice {old.name!r} has no alias {alias!r}")
            new = replace(old, aliases=kept)
            return index.changed(old, new), new

        return await self._change(change)

    async def set_default(self, name: str) -> VoiceEntry:
        """Make a library voice what the OpenAI names and "default" speak with."""

        def change(index: VoiceIndex) -> tuple[VoiceIndex, VoiceEntry]:
            entry = index.entry(name)
            return replace(index, default=_fold(entry.name)), entry

        return await self._change(change)

    async def clear_default(self) -> None:
        """Go back to the server's own default voice."""
        await self._change(lambda index: (replace(index, default=None), None))

    async def prune_missing(self) -> list[str]:
        """Forget voices whose audio file has gone from the directory; their names."""
        return await self._change(self._without_missing)

    async def _change(self, change: Callable[[VoiceIndex], tuple[VoiceIndex, T]]) -> T:
        """Run one change to completion even if the caller is cancelled, so disk and memory agree."""
        return await asyncio.shield(self._apply(change))

    async def _apply(self, change: Callable[[VoiceIndex], tuple[VoiceIndex, T]]) -> T:
        async with self._lock:
            index, result = change(self._index)
            if index is not self._index:
                await asyncio.to_thread(write_atomic, self._index_path, index.encode())
                self._index = index
            return result

    # -- start-up ------------------------------------------------------------------------

    def _load(self) -> VoiceIndex:
        """The index on disk: none means an empty library, a corrupt one is rebuilt from the files."""
        try:
            raw = self._index_path.read_bytes()
        except FileNotFoundError:
            return VoiceIndex.build([])
        try:
            index = VoiceIndex.decode(raw)
        except (ValueError, TypeError, RecursionError) as problem:
            return self._recover(problem)
        index, missing = self._without_missing(index)
        if missing:
            log.warning("voice library: forgetting voices whose files are gone: %s", ", ".join(missing))
            write_atomic(self._index_path, index.encode())
        self._sweep_orphans(index)
        return index

    def _sweep_orphans(self, index: VoiceIndex) -> None:
        """Remove clips no voice uses and leftover temporary files: what a crash between
        writing a clip and writing the index leaves behind."""
        used = {entry.filename for entry in index.voices.values()}
        for path in self.directory.iterdir():
            stray = _is_stored_filename(path.name) and path.name not in used
            temporary = path.name.startswith(".") and path.name.endswith(".tmp")
            if path.is_file() and (stray or temporary):
                log.warning("voice library: removing %s, which no voice uses", path.name)
                path.unlink(missing_ok=True)

    def _without_missing(self, index: VoiceIndex) -> tuple[VoiceIndex, list[str]]:
        missing = [entry for entry in index.voices.values() if not self.path(entry).is_file()]
        for entry in missing:
            index = index.changed(entry, None)
        return index, [entry.name for entry in missing]

    def _recover(self, problem: Exception) -> VoiceIndex:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside = self._index_path.with_name(f"{INDEX_NAME}.corrupt-{stamp}-{uuid.uuid4().hex[:6]}")
        os.replace(self._index_path, aside)
        index = VoiceIndex.build(self._scan())
        write_atomic(self._index_path, index.encode())
        log.error(
            "voice library index %s was unreadable (%s); moved it to %s and rebuilt it from the audio files: "
            "%d voices",
            self._index_path,
            problem,
            aside.name,
            len(index.voices),
        )
        return index

    def _scan(self) -> list[VoiceEntry]:
        """A voice for every valid clip in the directory, named after its file (names are lost)."""
        entries: dict[str, VoiceEntry] = {}
        for path in sorted(self.directory.iterdir()):
            if not (path.is_file() and _is_stored_filename(path.name)):
                continue
            try:
                name = check_name(path.stem)
                data = path.read_bytes()
                clip = inspect_clip(data)
            except (VoiceError, OSError) as refused:
                log.warning("voice library: not recovering %s: %s", path.name, refused)
                continue
            uploaded = datetime.fromtimestamp(path.stat().st_mtime, UTC).isoformat()
            entry = VoiceEntry(
                name=name,
                filename=path.name,
                original_filename=path.name,
                language=DEFAULT_LANGUAGE,
                upload_date=uploaded,
                file_size=len(data),
                duration=round(clip.duration, 3),
                sha256=clip.sha256,
            )
            entries.setdefault(_fold(name), entry)
        return list(entries.values())


def _taken(name: str, owner: VoiceEntry) -> NameTaken:
    return NameTaken(f"The name {name!r} is already used by voice {owner.name!r}")


def write_atomic(path: Path, data: bytes) -> None:
    """Write through a temporary file in the same directory: readers see the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable (POSIX only: Windows cannot open a directory)."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def resolve(name: str, default_sample_path: str | None, library: VoiceLibrary | None = None) -> Voice | None:
    """The voice for ``name``, or None when no voice has that name.

    The OpenAI names and "default" speak with the library's default voice when one is set,
    else with ``default_sample_path``; any other name must be a library voice or alias.
    """
    default = _fold(name) in DEFAULT_NAMES
    if library is not None:
        entry = library.default() if default else library.get(name)
        if entry is not None:
            return _library_voice(library, entry)
    return Voice(source="default", path=default_sample_path) if default else None


def _library_voice(library: VoiceLibrary, entry: VoiceEntry) -> Voice:
    return Voice(source=f"library:{entry.name}", path=str(library.path(entry)))
