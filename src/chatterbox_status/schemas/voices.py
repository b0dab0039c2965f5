"""The voice library's bodies, with chatterbox-tts-api's field names."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, RootModel

from ..voices import DEFAULT_LANGUAGE
from . import Body, sometimes
from .status import Count


class Voice(Body):
    """A voice as chatterbox-tts-api's clients read it, plus its duration and checksum, and
    the ``id`` Open WebUI reads from each voice it lists."""

    id: str = Field(description="The name to send as a speech request's `voice` (its name)")
    name: str
    filename: str
    original_filename: str
    file_extension: Annotated[str, Field(pattern="^\\.")]
    file_size: Count
    upload_date: str
    language: str
    aliases: list[str]
    duration: float
    sha256: Annotated[str, Field(pattern="^[0-9a-f]{64}$")]


class UsableVoice(Body):
    """A voice a speech request may name, as OpenAI-compatible clients list them."""

    id: str = Field(description="What to send as `voice`")
    name: str
    source: Literal["default", "library"] = Field(
        description="`default`: 'default' and the OpenAI names, all the default voice; `library`: an uploaded voice"
    )
    languages: list[str]


class VoiceList(Body):
    """chatterbox-tts-api's library listing (``voices``, ``count``), plus every voice the
    engine can speak with now, the OpenAI names and 'default' included."""

    voices: list[Voice] = Field(description="The library's voices")
    available_voices: list[UsableVoice] = Field(
        description="Every voice a speech request may use now: 'default', the OpenAI names, and the library's "
        "voices when the engine can clone"
    )
    available_names: list[str] = Field(description="Every name `voice` may take now, aliases included")
    count: Count


class VoiceCreated(Body):
    message: str
    voice: Voice


class LibraryDefault(Body):
    default_voice: str
    source: Literal["voice_library"]
    voice_info: Voice


class OwnDefault(Body):
    default_voice: None
    source: Literal["file_system"]


class DefaultVoice(RootModel[Annotated[LibraryDefault | OwnDefault, Field(discriminator="source")]]):
    """The library default, or the server's own voice."""


class DefaultVoiceSet(Body):
    message: str
    default_voice: str
    voice_info: Voice


class DefaultVoiceCleared(Body):
    message: str
    default_voice: None
    source: Literal["file_system"]


class VoiceNames(Body):
    """Every name a speech request may use for a library voice: names and aliases."""

    voice_names: list[str]
    count: Count


class VoicesCleanup(Body):
    message: str
    removed_voices: list[str]
    count: Count


class VoiceDetail(Body):
    voice: Voice


class VoiceRenamed(Body):
    message: str
    old_name: str
    new_name: str
    voice: Voice


class VoiceDeleted(Body):
    message: str
    voice_name: str


class VoiceAliases(Body):
    voice_name: str
    aliases: list[str]
    count: Count


class AliasChanged(Body):
    message: str
    voice_name: str
    alias: str
    aliases: list[str]


# -- forms -------------------------------------------------------------------------------


class VoiceUpload(BaseModel):
    """A new voice: its name and language (the clip comes as the voice_file part)."""

    voice_name: str = Field(description="1-64 letters, digits, spaces, '-', '_', '.'")
    language: str = Field(DEFAULT_LANGUAGE, description="A language code such as en or pt-br")


class VoiceNameForm(BaseModel):
    voice_name: str = sometimes(description="The voice")


class NewNameForm(BaseModel):
    new_name: str = sometimes(description="The new name")


class AliasForm(BaseModel):
    alias: str = sometimes(description="The alias")
