"""The voice library over HTTP, on chatterbox-tts-api's paths and with its field names.

Every route also answers under /v1. The fixed paths under /voices/ are registered before
/voices/{voice_name}, and the library refuses them as voice names, so "default" or
"all-names" is never read as a voice.
Names travel as form fields, as chatterbox-tts-api takes them, or as query parameters,
as its documentation shows them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote

from aiohttp import web

from ..errors import ApiError, bad_request, not_found
from ..state import VOICE_LIBRARY
from ..voices import (
    DEFAULT_LANGUAGE,
    MAX_UPLOAD_BYTES,
    InvalidAudio,
    InvalidLanguage,
    NameTaken,
    UnknownVoice,
    VoiceEntry,
    VoiceError,
    VoiceLibrary,
)
from .files import FileDownload
from .forms import posted_form, read_form
from .params import aliased

routes = web.RouteTableDef()


_TEXT_FIELDS = ("voice_name", "language")
_PARAMS = {InvalidAudio: "voice_file", InvalidLanguage: "language"}


def _v1(*paths: str) -> list[str]:
    return [prefixed for path in paths for prefixed in (path, f"/v1{path}")]


def voice_view(entry: VoiceEntry) -> dict:
    """A voice as chatterbox-tts-api's clients read it, plus its duration and checksum."""
    return {
        "name": entry.name,
        "filename": entry.filename,
        "original_filename": entry.original_filename,
        "file_extension": f".{entry.extension}",
        "file_size": entry.file_size,
        "upload_date": entry.upload_date,
        "language": entry.language,
        "aliases": list(entry.aliases),
        "duration": entry.duration,
        "sha256": entry.sha256,
    }


@contextmanager
def _refusals(name_param: str = "voice_name") -> Iterator[None]:
    """The library's refusals as API errors: unknown 404, name taken 409, bad input 400."""
    try:
        yield
    except UnknownVoice as exc:
        raise not_found(str(exc), param="voice_name") from None
    except NameTaken as exc:
        raise ApiError(409, str(exc), param=name_param, code=exc.code) from None
    except VoiceError as exc:
        raise bad_request(str(exc), param=_PARAMS.get(type(exc), name_param), code=exc.code) from None


def _library(request: web.Request) -> VoiceLibrary:
    return request.app[VOICE_LIBRARY]


def _voice(request: web.Request) -> VoiceEntry:
    name = request.match_info["voice_name"]
    entry = _library(request).get(name)
    if entry is None:
        raise not_found(f"Voice {name!r} not found", param="voice_name")
    return entry


async def _field(request: web.Request, name: str) -> str:
    """A form field (multipart or urlencoded), else a query parameter of that name."""
    form = await posted_form(request)
    value = form.get(name, request.query.get(name))
    if not isinstance(value, str):
        raise bad_request(f"Field {name} is required", param=name)
    return value


def _attachment(filename: str) -> str:
    """Content-Disposition naming the download, with an ASCII fallback for old clients."""
    fallback = filename.encode("ascii", "replace").decode("ascii").replace("?", "_")
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename)}"


# -- the collection and the fixed paths under it ---------------------------------------


@aliased(routes, "GET", *_v1("/voices", "/audio/voices"), "/voice-library", "/voice_library")
async def list_voices(request: web.Request) -> web.Response:
    views = [voice_view(entry) for entry in _library(request).voices()]
    return web.json_response({"voices": views, "count": len(views)})


@aliased(routes, "POST", *_v1("/voices"), "/voice-library", "/voice_library")
async def upload_voice(request: web.Request) -> web.Response:
    upload = await read_form(request, _TEXT_FIELDS, "voice_file", MAX_UPLOAD_BYTES)
    name = upload.fields.get("voice_name")
    if name is None:
        raise bad_request("Field voice_name is required", param="voice_name")
    if upload.data is None:
        raise bad_request("Field voice_file is required: send the audio as a file part", param="voice_file")
    language = upload.fields.get("language", DEFAULT_LANGUAGE)
    with _refusals():
        entry = await _library(request).add(name, upload.data, upload.filename, language)
    return web.json_response({"message": f"Voice {entry.name!r} added", "voice": voice_view(entry)}, status=201)


@aliased(routes, "GET", *_v1("/voices/default"), "/default-voice")
async def get_default_voice(request: web.Request) -> web.Response:
    entry = _library(request).default()
    if entry is None:
        return web.json_response({"default_voice": None, "source": "file_system"})
    return web.json_response(
        {"default_voice": entry.name, "source": "voice_library", "voice_info": voice_view(entry)}
    )


@aliased(routes, "POST", *_v1("/voices/default"), "/default-voice")
async def set_default_voice(request: web.Request) -> web.Response:
    name = await _field(request, "voice_name")
    with _refusals():
        entry = await _library(request).set_default(name)
    return web.json_response(
        {
            "message": f"The default voice is now {entry.name!r}",
            "default_voice": entry.name,
            "voice_info": voice_view(entry),
        }
    )


@aliased(routes, "DELETE", *_v1("/voices/default"), "/default-voice")
async def clear_default_voice(request: web.Request) -> web.Response:
    await _library(request).clear_default()
    return web.json_response(
        {"message": "The default voice is the server's own again", "default_voice": None, "source": "file_system"}
    )


@aliased(routes, "GET", *_v1("/voices/all-names"))
async def all_voice_names(request: web.Request) -> web.Response:
    names = _library(request).all_names()
    return web.json_response({"voice_names": names, "count": len(names)})


@aliased(routes, "POST", *_v1("/voices/cleanup"))
async def cleanup_voices(request: web.Request) -> web.Response:
    removed = await _library(request).prune_missing()
    return web.json_response(
        {
            "message": f"Forgot {len(removed)} voices whose files were missing",
            "removed_voices": removed,
            "count": len(removed),
        }
    )


# -- one voice ---------------------------------------------------------------------------


@aliased(routes, "GET", *_v1("/voices/{voice_name}"))
async def get_voice(request: web.Request) -> web.Response:
    return web.json_response({"voice": voice_view(_voice(request))})


@aliased(routes, "PUT", *_v1("/voices/{voice_name}"))
async def rename_voice(request: web.Request) -> web.Response:
    old = _voice(request)
    new_name = await _field(request, "new_name")
    with _refusals("new_name"):
        entry = await _library(request).rename(old.name, new_name)
    return web.json_response(
        {
            "message": f"Voice {old.name!r} is now {entry.name!r}",
            "old_name": old.name,
            "new_name": entry.name,
            "voice": voice_view(entry),
        }
    )


@aliased(routes, "DELETE", *_v1("/voices/{voice_name}"))
async def delete_voice(request: web.Request) -> web.Response:
    with _refusals():
        gone = await _library(request).delete(request.match_info["voice_name"])
    return web.json_response({"message": f"Voice {gone.name!r} deleted", "voice_name": gone.name})


@aliased(routes, "GET", *_v1("/voices/{voice_name}/download"))
async def download_voice(request: web.Request) -> web.StreamResponse:
    entry = _voice(request)
    path = _library(request).path(entry)
    if not path.is_file():
        raise not_found(f"The audio file of voice {entry.name!r} is missing", param="voice_name")
    headers = {
        "Content-Type": entry.content_type,
        "Content-Disposition": _attachment(f"{entry.name}.{entry.extension}"),
    }
    return FileDownload(path, headers)


@aliased(routes, "GET", *_v1("/voices/{voice_name}/aliases"))
async def list_aliases(request: web.Request) -> web.Response:
    entry = _voice(request)
    return web.json_response({"voice_name": entry.name, "aliases": list(entry.aliases), "count": len(entry.aliases)})


@aliased(routes, "POST", *_v1("/voices/{voice_name}/aliases"))
async def add_alias(request: web.Request) -> web.Response:
    alias = await _field(request, "alias")
    with _refusals("alias"):
        entry = await _library(request).add_alias(request.match_info["voice_name"], alias)
    body = {
        "message": f"{alias.strip()!r} now also names voice {entry.name!r}",
        "voice_name": entry.name,
        "alias": alias.strip(),
        "aliases": list(entry.aliases),
    }
    return web.json_response(body, status=201)


@aliased(routes, "DELETE", *_v1("/voices/{voice_name}/aliases/{alias}"))
async def remove_alias(request: web.Request) -> web.Response:
    alias = request.match_info["alias"]
    with _refusals("alias"):
        entry = await _library(request).remove_alias(request.match_info["voice_name"], alias)
    return web.json_response(
        {
            "message": f"{alias!r} no longer names voice {entry.name!r}",
            "voice_name": entry.name,
            "alias": alias,
            "aliases": list(entry.aliases),
        }
    )
