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

from ..engines.base import EngineDescription
from ..errors import ApiError
from ..exceptions import Conflict, InvalidInput, NotFound, Unavailable
from ..schemas.voices import (
    AliasChanged,
    AliasForm,
    DefaultVoice,
    DefaultVoiceCleared,
    DefaultVoiceSet,
    LibraryDefault,
    NewNameForm,
    OwnDefault,
    UsableVoice,
    Voice,
    VoiceAliases,
    VoiceCreated,
    VoiceDeleted,
    VoiceDetail,
    VoiceList,
    VoiceNameForm,
    VoiceNames,
    VoiceRenamed,
    VoicesCleanup,
    VoiceUpload,
)
from ..state import CORE, VOICE_LIBRARY
from ..voices import (
    CONTENT_TYPES,
    DEFAULT_LANGUAGE,
    MAX_UPLOAD_BYTES,
    OPENAI_VOICES,
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
from .routing import Form, Param, Reply, api_route, json_model, with_v1

routes = web.RouteTableDef()


_TEXT_FIELDS = ("voice_name", "language")
_PARAMS = {InvalidAudio: "voice_file", InvalidLanguage: "language"}


VOICE_NAME = {"voice_name": "A voice's name or one of its aliases (case-insensitive)"}
# Names may come as form fields or, as chatterbox-tts-api's documentation shows, in the query.
NAME_FORM = "as a form field; it may come as a query parameter instead"


def _name_form(model: type, name: str) -> Form:
    return Form(model, f"`{name}` {NAME_FORM}.", required=False)


def _name_query(name: str, description: str) -> Param:
    return Param(name, {"type": "string"}, f"{description} (when not sent as a form field)")


def voice_view(entry: VoiceEntry) -> Voice:
    """A voice as chatterbox-tts-api's clients read it, plus its duration and checksum."""
    return Voice(
        id=entry.name,
        name=entry.name,
        filename=entry.filename,
        original_filename=entry.original_filename,
        file_extension=f".{entry.extension}",
        file_size=entry.file_size,
        upload_date=entry.upload_date,
        language=entry.language,
        aliases=list(entry.aliases),
        duration=entry.duration,
        sha256=entry.sha256,
    )


@contextmanager
def _refusals(name_param: str = "voice_name") -> Iterator[None]:
    """The library's refusals as API errors: unknown 404, name taken 409, bad input 400."""
    try:
        yield
    except UnknownVoice as exc:
        raise NotFound(str(exc), param="voice_name") from None
    except NameTaken as exc:
        raise ApiError(409, str(exc), param=name_param, code=exc.code) from None
    except VoiceError as exc:
        raise InvalidInput(str(exc), param=_PARAMS.get(type(exc), name_param), code=exc.code) from None


def _library(request: web.Request) -> VoiceLibrary:
    return request.app[VOICE_LIBRARY]


def _voice(request: web.Request) -> VoiceEntry:
    name = request.match_info["voice_name"]
    entry = _library(request).get(name)
    if entry is None:
        raise NotFound(f"Voice {name!r} not found", param="voice_name")
    return entry


async def _field(request: web.Request, name: str) -> str:
    """A form field (multipart or urlencoded), else a query parameter of that name."""
    form = await posted_form(request)
    value = form.get(name, request.query.get(name))
    if not isinstance(value, str):
        raise InvalidInput(f"Field {name} is required", param=name)
    return value


def _attachment(filename: str) -> str:
    """Content-Disposition naming the download, with an ASCII fallback for old clients."""
    fallback = filename.encode("ascii", "replace").decode("ascii").replace("?", "_")
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename)}"


# -- the collection and the fixed paths under it ---------------------------------------


@api_route(
    routes, "GET", *with_v1("/voices", "/audio/voices"), "/voice-library", "/voice_library",
    summary="The voice library, and every voice a speech request may use",
    tag="voices",
    responses={200: Reply("The library's voices (chatterbox-tts-api's shape), and the voices usable now", VoiceList)},
)
async def list_voices(request: web.Request) -> web.Response:
    library = _library(request)
    views = [voice_view(entry) for entry in library.voices()]
    available = usable_voices(request.app[CORE].engine, library)
    names = [voice.id for voice in available if voice.source == "default"]
    if request.app[CORE].engine.supports_cloning:
        names += library.all_names()
    return json_model(
        VoiceList(voices=views, count=len(views), available_voices=available, available_names=names)
    )


def usable_voices(engine: EngineDescription, library: VoiceLibrary) -> list[UsableVoice]:
    """'default' and the OpenAI names (the default voice), then the library's voices when
    the engine can clone them."""
    default = [
        UsableVoice(id=name, name=name if name == "default" else f"{name} (the default voice)", source="default",
                    languages=list(engine.languages))
        for name in ("default", *sorted(OPENAI_VOICES))
    ]
    if not engine.supports_cloning:
        return default
    return default + [
        UsableVoice(id=entry.name, name=entry.name, source="library", languages=[entry.language])
        for entry in library.voices()
    ]


@api_route(
    routes, "POST", *with_v1("/voices"), "/voice-library", "/voice_library",
    summary="Add a voice to the library",
    tag="voices",
    body=Form(
        VoiceUpload,
        file=("voice_file", "The clip: wav, mp3, flac, ogg, opus, m4a, aac or webm, 1-60 s, 10 MiB at most"),
        file_required=True,
        multipart_only=True,
    ),
    responses={201: Reply("The voice is stored", VoiceCreated)},
    errors=(InvalidInput, Conflict, Unavailable),
)
async def upload_voice(request: web.Request) -> web.Response:
    upload = await read_form(request, _TEXT_FIELDS, "voice_file", MAX_UPLOAD_BYTES)
    name = upload.fields.get("voice_name")
    if name is None:
        raise InvalidInput("Field voice_name is required", param="voice_name")
    if upload.data is None:
        raise InvalidInput("Field voice_file is required: send the audio as a file part", param="voice_file")
    language = upload.fields.get("language", DEFAULT_LANGUAGE)
    with _refusals():
        entry = await _library(request).add(name, upload.data, upload.filename, language)
    return json_model(VoiceCreated(message=f"Voice {entry.name!r} added", voice=voice_view(entry)), status=201)


@api_route(
    routes, "GET", *with_v1("/voices/default"), "/default-voice",
    summary="The voice the OpenAI voice names and 'default' speak with",
    tag="voices",
    responses={200: DefaultVoice},
)
async def get_default_voice(request: web.Request) -> web.Response:
    entry = _library(request).default()
    if entry is None:
        return json_model(DefaultVoice(OwnDefault(default_voice=None, source="file_system")))
    return json_model(
        DefaultVoice(LibraryDefault(default_voice=entry.name, source="voice_library", voice_info=voice_view(entry)))
    )


@api_route(
    routes, "POST", *with_v1("/voices/default"), "/default-voice",
    summary="Make a library voice the default",
    tag="voices",
    body=_name_form(VoiceNameForm, "voice_name"),
    responses={200: Reply("The new default", DefaultVoiceSet)},
    errors=(InvalidInput, NotFound, Unavailable),
    params=(_name_query("voice_name", "The voice"),),
)
async def set_default_voice(request: web.Request) -> web.Response:
    name = await _field(request, "voice_name")
    with _refusals():
        entry = await _library(request).set_default(name)
    return json_model(
        DefaultVoiceSet(
            message=f"The default voice is now {entry.name!r}", default_voice=entry.name, voice_info=voice_view(entry)
        )
    )


@api_route(
    routes, "DELETE", *with_v1("/voices/default"), "/default-voice",
    summary="Go back to the server's own default voice",
    tag="voices",
    responses={200: Reply("No library default", DefaultVoiceCleared)},
    errors=(Unavailable,),
)
async def clear_default_voice(request: web.Request) -> web.Response:
    await _library(request).clear_default()
    return json_model(
        DefaultVoiceCleared(
            message="The default voice is the server's own again", default_voice=None, source="file_system"
        )
    )


@api_route(
    routes, "GET", *with_v1("/voices/all-names"),
    operation_id="listVoiceNames",
    summary="Every name a speech request may use for a library voice",
    tag="voices",
    responses={200: VoiceNames},
)
async def all_voice_names(request: web.Request) -> web.Response:
    names = _library(request).all_names()
    return json_model(VoiceNames(voice_names=names, count=len(names)))


@api_route(
    routes, "POST", *with_v1("/voices/cleanup"),
    summary="Forget voices whose audio file is missing",
    tag="voices",
    responses={200: Reply("What was forgotten", VoicesCleanup)},
    errors=(Unavailable,),
)
async def cleanup_voices(request: web.Request) -> web.Response:
    removed = await _library(request).prune_missing()
    return json_model(
        VoicesCleanup(
            message=f"Forgot {len(removed)} voices whose files were missing", removed_voices=removed, count=len(removed)
        )
    )


# -- one voice ---------------------------------------------------------------------------


@api_route(
    routes, "GET", *with_v1("/voices/{voice_name}"),
    summary="One voice",
    tag="voices",
    responses={200: Reply("The voice", VoiceDetail)},
    errors=(NotFound,),
    path_params=VOICE_NAME,
)
async def get_voice(request: web.Request) -> web.Response:
    return json_model(VoiceDetail(voice=voice_view(_voice(request))))


@api_route(
    routes, "PUT", *with_v1("/voices/{voice_name}"),
    summary="Rename a voice",
    tag="voices",
    body=_name_form(NewNameForm, "new_name"),
    responses={200: Reply("The voice under its new name", VoiceRenamed)},
    errors=(InvalidInput, NotFound, Conflict, Unavailable),
    params=(_name_query("new_name", "The new name"),),
    path_params=VOICE_NAME,
)
async def rename_voice(request: web.Request) -> web.Response:
    old = _voice(request)
    new_name = await _field(request, "new_name")
    with _refusals("new_name"):
        entry = await _library(request).rename(old.name, new_name)
    return json_model(
        VoiceRenamed(
            message=f"Voice {old.name!r} is now {entry.name!r}",
            old_name=old.name,
            new_name=entry.name,
            voice=voice_view(entry),
        )
    )


@api_route(
    routes, "DELETE", *with_v1("/voices/{voice_name}"),
    summary="Delete a voice and its file",
    tag="voices",
    responses={200: Reply("The voice is gone", VoiceDeleted)},
    errors=(NotFound, Unavailable),
    path_params=VOICE_NAME,
)
async def delete_voice(request: web.Request) -> web.Response:
    with _refusals():
        gone = await _library(request).delete(request.match_info["voice_name"])
    return json_model(VoiceDeleted(message=f"Voice {gone.name!r} deleted", voice_name=gone.name))


@api_route(
    routes, "GET", *with_v1("/voices/{voice_name}/download"),
    summary="A voice's audio file, as uploaded",
    tag="voices",
    responses={
        200: Reply(
            "The clip",
            media=tuple(dict.fromkeys(CONTENT_TYPES.values())),
            headers={"Content-Disposition": "attachment; filename=<voice name>.<extension>"},
        )
    },
    errors=(NotFound, 416),
    path_params=VOICE_NAME,
)
async def download_voice(request: web.Request) -> web.StreamResponse:
    entry = _voice(request)
    path = _library(request).path(entry)
    if not path.is_file():
        raise NotFound(f"The audio file of voice {entry.name!r} is missing", param="voice_name")
    headers = {
        "Content-Type": entry.content_type,
        "Content-Disposition": _attachment(f"{entry.name}.{entry.extension}"),
    }
    return FileDownload(path, headers)


@api_route(
    routes, "GET", *with_v1("/voices/{voice_name}/aliases"),
    operation_id="listVoiceAliases",
    summary="A voice's aliases",
    tag="voices",
    responses={200: Reply("The aliases", VoiceAliases)},
    errors=(NotFound,),
    path_params=VOICE_NAME,
)
async def list_aliases(request: web.Request) -> web.Response:
    entry = _voice(request)
    return json_model(VoiceAliases(voice_name=entry.name, aliases=list(entry.aliases), count=len(entry.aliases)))


@api_route(
    routes, "POST", *with_v1("/voices/{voice_name}/aliases"),
    operation_id="addVoiceAlias",
    summary="Give a voice another name",
    tag="voices",
    body=_name_form(AliasForm, "alias"),
    responses={201: Reply("The alias is added (or was there already)", AliasChanged)},
    errors=(InvalidInput, NotFound, Conflict, Unavailable),
    params=(_name_query("alias", "The alias"),),
    path_params=VOICE_NAME,
)
async def add_alias(request: web.Request) -> web.Response:
    alias = await _field(request, "alias")
    with _refusals("alias"):
        entry = await _library(request).add_alias(request.match_info["voice_name"], alias)
    body = AliasChanged(
        message=f"{alias.strip()!r} now also names voice {entry.name!r}",
        voice_name=entry.name,
        alias=alias.strip(),
        aliases=list(entry.aliases),
    )
    return json_model(body, status=201)


@api_route(
    routes, "DELETE", *with_v1("/voices/{voice_name}/aliases/{alias}"),
    operation_id="removeVoiceAlias",
    summary="Remove one of a voice's aliases",
    tag="voices",
    responses={200: Reply("The alias is removed", AliasChanged)},
    errors=(NotFound, Unavailable),
    path_params={**VOICE_NAME, "alias": "The alias to remove"},
)
async def remove_alias(request: web.Request) -> web.Response:
    alias = request.match_info["alias"]
    with _refusals("alias"):
        entry = await _library(request).remove_alias(request.match_info["voice_name"], alias)
    return json_model(
        AliasChanged(
            message=f"{alias!r} no longer names voice {entry.name!r}",
            voice_name=entry.name,
            alias=alias,
            aliases=list(entry.aliases),
        )
    )
