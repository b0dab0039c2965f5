"""The voice library: its routes under both prefixes, its files on disk, and resolve().

Uploads are real audio (a tone as WAV through ``wave``, as FLAC/MP3 through PyAV) so the
library's decode check runs for real. Concurrency is driven with asyncio.gather, never sleeps.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import wave

import aiohttp
import av
import numpy as np
import pytest
from conftest import core_of
from doubles import ScriptedEngine

from chatterbox_status.engines.base import Voice
from chatterbox_status.voices import INDEX_NAME, MAX_UPLOAD_BYTES, VoiceLibrary, resolve

PREFIXES = ("", "/v1")


# -- audio and helpers ---------------------------------------------------------------


def tone(seconds: float, rate: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def wav(seconds: float = 2.0, rate: int = 16_000) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes((tone(seconds, rate) * 32767).astype("<i2").tobytes())
    return buffer.getvalue()


def encoded(container: str, codec: str, seconds: float = 2.0, rate: int = 24_000) -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container) as out:
        stream = out.add_stream(codec, rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(tone(seconds, rate)[None, :], format="flt", layout="mono")
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    return buffer.getvalue()


WAV = wav()
FLAC = encoded("flac", "flac")
MP3 = encoded("mp3", "libmp3lame")


def form(
    name: str | None = "alice", data: bytes | None = WAV, filename: str = "alice.wav", **fields: str
) -> aiohttp.FormData:
    body = aiohttp.FormData()
    if name is not None:
        body.add_field("voice_name", name)
    if data is not None:
        body.add_field("voice_file", data, filename=filename, content_type="application/octet-stream")
    for key, value in fields.items():
        body.add_field(key, value)
    return body


async def upload(client, name: str = "alice", data: bytes = WAV, filename: str = "a.wav", prefix: str = "", **fields):
    response = await client.post(f"{prefix}/voices", data=form(name, data, filename, **fields))
    assert response.status == 201, await response.text()
    return (await response.json())["voice"]


async def error_of(response, status: int) -> dict:
    assert response.status == status, await response.text()
    body = await response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def stored_files(library: VoiceLibrary) -> set[str]:
    """Audio files in the library directory (not the index, temporaries or set-aside files)."""
    return {p.name for p in library.directory.glob("*") if not p.name.startswith((".", INDEX_NAME))}


def assert_consistent(library: VoiceLibrary) -> None:
    """The index on disk reads back as what memory holds, and names exactly the files present."""
    reread = VoiceLibrary(library.directory)
    assert not list(library.directory.glob(f"{INDEX_NAME}.corrupt-*")), "the index had to be recovered"
    assert reread.voices() == library.voices()
    assert reread.default() == library.default()
    assert stored_files(library) == {entry.filename for entry in library.voices()}
    for entry in library.voices():
        assert hashlib.sha256(library.path(entry).read_bytes()).hexdigest() == entry.sha256


@pytest.fixture
async def client(make_client, scripted):
    """The whole app on a scripted engine (its voice listing says what the engine can use)."""
    return await make_client(engine=scripted)


@pytest.fixture
def library(client) -> VoiceLibrary:
    return core_of(client).voices


# -- every route ---------------------------------------------------------------------


@pytest.mark.parametrize("prefix", PREFIXES)
async def test_every_route_answers_under_both_prefixes(client, library, prefix):
    voice = await upload(client, prefix=prefix, language="fr")
    assert voice["name"] == "alice" and voice["language"] == "fr" and voice["file_extension"] == ".wav"

    listing = await (await client.get(f"{prefix}/voices")).json()
    assert listing["count"] == 1 and listing["voices"][0]["name"] == "alice"
    assert (await (await client.get(f"{prefix}/voices/alice")).json())["voice"] == voice

    added = await client.post(f"{prefix}/voices/alice/aliases", data={"alias": "ally"})
    assert added.status == 201
    assert (await added.json())["aliases"] == ["ally"]
    aliases = await (await client.get(f"{prefix}/voices/alice/aliases")).json()
    assert aliases == {"voice_name": "alice", "aliases": ["ally"], "count": 1}
    names = await (await client.get(f"{prefix}/voices/all-names")).json()
    assert names == {"voice_names": ["alice", "ally"], "count": 2}
    removed = await client.delete(f"{prefix}/voices/alice/aliases/ally")
    assert removed.status == 200 and (await removed.json())["aliases"] == []

    assert (await (await client.get(f"{prefix}/voices/default")).json())["default_voice"] is None
    chosen = await client.post(f"{prefix}/voices/default", data={"voice_name": "alice"})
    assert chosen.status == 200 and (await chosen.json())["default_voice"] == "alice"
    current = await (await client.get(f"{prefix}/voices/default")).json()
    assert current["default_voice"] == "alice" and current["voice_info"]["name"] == "alice"
    cleared = await client.delete(f"{prefix}/voices/default")
    assert cleared.status == 200 and (await cleared.json())["default_voice"] is None
    assert (await (await client.get(f"{prefix}/voices/default")).json())["default_voice"] is None

    download = await client.get(f"{prefix}/voices/alice/download")
    assert download.status == 200 and await download.read() == WAV

    renamed = await client.put(f"{prefix}/voices/alice", data={"new_name": "bob"})
    assert renamed.status == 200
    assert {k: v for k, v in (await renamed.json()).items() if k in ("old_name", "new_name")} == {
        "old_name": "alice",
        "new_name": "bob",
    }

    cleanup = await client.post(f"{prefix}/voices/cleanup")
    assert (await cleanup.json())["removed_voices"] == []

    deleted = await client.delete(f"{prefix}/voices/bob")
    assert deleted.status == 200 and (await deleted.json())["voice_name"] == "bob"
    listing = await (await client.get(f"{prefix}/voices")).json()
    assert (listing["voices"], listing["count"]) == ([], 0)


async def test_chatterbox_tts_api_extra_aliases_reach_the_library(client):
    await upload(client)
    for path in ("/audio/voices", "/v1/audio/voices", "/voice-library", "/voice_library"):
        assert (await (await client.get(path)).json())["count"] == 1, path
    response = await client.post("/voice-library", data=form("bob"))
    assert response.status == 201
    assert (await client.post("/default-voice", data={"voice_name": "bob"})).status == 200
    assert (await (await client.get("/default-voice")).json())["default_voice"] == "bob"


async def test_names_may_come_as_query_parameters(client):
    await upload(client)
    assert (await client.post("/voices/alice/aliases?alias=ally")).status == 201
    assert (await client.put("/voices/alice?new_name=bob")).status == 200
    assert (await client.post("/voices/default?voice_name=ally")).status == 200
    assert (await (await client.get("/voices/default")).json())["default_voice"] == "bob"


@pytest.mark.parametrize(
    ("method", "path", "data"),
    [
        ("GET", "/voices/nobody", None),
        ("PUT", "/voices/nobody", {"new_name": "x"}),
        ("DELETE", "/voices/nobody", None),
        ("GET", "/voices/nobody/download", None),
        ("GET", "/voices/nobody/aliases", None),
        ("POST", "/voices/nobody/aliases", {"alias": "x"}),
        ("DELETE", "/voices/nobody/aliases/x", None),
        ("DELETE", "/voices/alice/aliases/never-added", None),
        ("POST", "/voices/default", {"voice_name": "nobody"}),
    ],
)
async def test_unknown_voices_are_404(client, method, path, data):
    await upload(client)
    error = await error_of(await client.request(method, path, data=data), 404)
    assert error["param"] == "voice_name"


# -- files on disk -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "filename", "content_type"), [(WAV, "a.wav", "audio/wav"), (FLAC, "a.flac", "audio/flac")]
)
async def test_upload_list_get_and_download_give_back_the_same_bytes(client, library, data, filename, content_type):
    voice = await upload(client, "Alice Smith", data, filename)
    assert voice["file_size"] == len(data)
    assert voice["sha256"] == hashlib.sha256(data).hexdigest()
    assert voice["duration"] == pytest.approx(2.0, abs=0.05)
    assert (await (await client.get("/voices")).json())["voices"] == [voice]
    assert (await (await client.get("/voices/alice%20smith")).json())["voice"] == voice

    download = await client.get("/voices/Alice Smith/download")
    assert await download.read() == data
    assert download.headers["Content-Type"] == content_type
    extension = filename.rpartition(".")[2]
    assert f'filename="Alice Smith.{extension}"' in download.headers["Content-Disposition"]
    assert library.path(library.get("alice smith")).read_bytes() == data


async def test_stored_files_are_named_by_the_library_and_typed_by_their_content(client, library):
    # Written by hand: aiohttp's client would percent-encode the slashes of this file name.
    body = b"".join(
        [
            b'--b\r\nContent-Disposition: form-data; name="voice_name"\r\n\r\nalice\r\n',
            b'--b\r\nContent-Disposition: form-data; name="voice_file"; filename="../../sneaky.wav"\r\n\r\n',
            MP3,
            b"\r\n--b--\r\n",
        ]
    )
    response = await client.post("/voices", data=body, headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert response.status == 201, await response.text()
    voice = (await response.json())["voice"]
    assert voice["original_filename"] == "sneaky.wav"
    assert voice["filename"].endswith(".mp3") and voice["filename"] != "sneaky.wav"
    assert stored_files(library) == {voice["filename"]}
    download = await client.get("/voices/alice/download")
    assert download.headers["Content-Type"] == "audio/mpeg" and await download.read() == MP3


async def test_rename_keeps_the_file_aliases_and_default(client, library):
    await upload(client)
    await client.post("/voices/alice/aliases", data={"alias": "ally"})
    await client.post("/voices/default", data={"voice_name": "alice"})
    before = library.get("alice")

    response = await client.put("/voices/alice", data={"new_name": "Bob"})
    assert response.status == 200
    after = library.get("bob")
    assert after.name == "Bob" and after.filename == before.filename and after.aliases == ("ally",)
    assert library.path(after).read_bytes() == WAV
    assert library.get("alice") is None and library.get("ally") is after
    assert (await (await client.get("/voices/default")).json())["default_voice"] == "Bob"
    assert resolve("alloy", None, library) == Voice(source="library:Bob", path=str(library.path(after)))
    await error_of(await client.get("/voices/alice"), 404)
    assert_consistent(library)


async def test_renaming_a_voice_to_its_own_alias_makes_the_alias_its_name(client, library):
    await upload(client)
    await client.post("/voices/alice/aliases", data={"alias": "ally"})
    assert (await client.put("/voices/alice", data={"new_name": "ally"})).status == 200
    assert library.get("ally").aliases == ()
    assert library.all_names() == ["ally"]


async def test_delete_removes_the_file_and_the_default(client, library):
    await upload(client)
    await upload(client, "bob")
    await client.post("/voices/default", data={"voice_name": "alice"})
    path = library.path(library.get("alice"))
    assert path.is_file()

    assert (await client.delete("/voices/alice")).status == 200
    assert not path.exists()
    assert library.default() is None
    assert [entry.name for entry in library.voices()] == ["bob"]
    await error_of(await client.get("/voices/alice/download"), 404)
    assert_consistent(library)


async def test_cleanup_forgets_voices_whose_file_is_gone(client, library):
    await upload(client)
    await upload(client, "bob")
    library.path(library.get("alice")).unlink()
    body = await (await client.post("/voices/cleanup")).json()
    assert body == {"message": body["message"], "removed_voices": ["alice"], "count": 1}
    assert library.all_names() == ["bob"]
    assert_consistent(library)


async def test_a_restart_forgets_voices_whose_file_is_gone(client, library):
    await upload(client)
    await upload(client, "bob")
    library.path(library.get("bob")).unlink()
    assert VoiceLibrary(library.directory).all_names() == ["alice"]
    assert json.loads((library.directory / INDEX_NAME).read_bytes())["voices"][0]["name"] == "alice"


# -- resolve -------------------------------------------------------------------------


async def test_aliases_resolve_to_the_voice_file(client, library):
    await upload(client)
    await client.post("/voices/alice/aliases", data={"alias": "The Narrator"})
    path = str(library.path(library.get("alice")))
    expected = Voice(source="library:alice", path=path)
    assert resolve("alice", None, library) == expected
    assert resolve("the narrator", None, library) == expected
    assert resolve(" THE NARRATOR ", None, library) == expected
    assert resolve("nobody", None, library) is None

    await client.delete("/voices/alice/aliases/the%20narrator")
    assert resolve("The Narrator", None, library) is None


async def test_default_voice_set_get_clear_and_resolve_follows(client, library):
    assert resolve("alloy", "sample.wav", library) == Voice(source="default", path="sample.wav")
    assert resolve("default", "sample.wav") == Voice(source="default", path="sample.wav")
    await upload(client)
    await client.post("/voices/alice/aliases", data={"alias": "ally"})

    assert (await client.post("/voices/default", data={"voice_name": "ally"})).status == 200
    body = await (await client.get("/voices/default")).json()
    assert body["default_voice"] == "alice" and body["source"] == "voice_library"
    library_voice = Voice(source="library:alice", path=str(library.path(library.get("alice"))))
    assert resolve("alloy", "sample.wav", library) == library_voice
    assert resolve("Default", "sample.wav", library) == library_voice

    assert (await client.delete("/voices/default")).status == 200
    body = await (await client.get("/voices/default")).json()
    assert body == {"default_voice": None, "source": "file_system"}
    assert resolve("alloy", "sample.wav", library) == Voice(source="default", path="sample.wav")


async def test_the_library_survives_a_restart(client, library):
    await upload(client)
    await upload(client, "bob", FLAC, "bob.flac", language="de")
    await client.post("/voices/bob/aliases", data={"alias": "robert"})
    await client.post("/voices/default", data={"voice_name": "bob"})

    restarted = VoiceLibrary(library.directory)
    assert restarted.voices() == library.voices()
    assert restarted.get("robert").language == "de"
    assert restarted.default().name == "bob"
    assert resolve("alloy", None, restarted) == resolve("alloy", None, library)


# -- refused uploads -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "param", "code"),
    [
        (dict(data=b"this is plain text, not audio" * 20), "voice_file", "undecodable_audio"),
        (dict(data=b""), "voice_file", "empty_file"),
        (dict(data=wav(0.5)), "voice_file", "audio_too_short"),
        (dict(data=wav(61, rate=8_000)), "voice_file", "audio_too_long"),
        (dict(data=b"\0" * (MAX_UPLOAD_BYTES + 1)), "voice_file", "file_too_large"),
        (dict(filename="alice.txt"), "voice_file", "unsupported_format"),
        (dict(data=None), "voice_file", None),
        (dict(name=None), "voice_name", None),
        (dict(name="a/b"), "voice_name", "invalid_voice_name"),
        (dict(name=".."), "voice_name", "invalid_voice_name"),
        (dict(name="../etc"), "voice_name", "invalid_voice_name"),
        (dict(name="a\\b"), "voice_name", "invalid_voice_name"),
        (dict(name=".hidden"), "voice_name", "invalid_voice_name"),
        (dict(name=""), "voice_name", "invalid_voice_name"),
        (dict(name="x" * 65), "voice_name", "invalid_voice_name"),
        (dict(name="alloy"), "voice_name", "invalid_voice_name"),
        (dict(name="Shimmer"), "voice_name", "invalid_voice_name"),
        (dict(name="default"), "voice_name", "invalid_voice_name"),
        (dict(name="all-names"), "voice_name", "invalid_voice_name"),
        (dict(language="english!"), "language", "invalid_language"),
    ],
    ids=[
        "not-audio", "empty", "too-short", "too-long", "too-big", "bad-extension", "no-file", "no-name",
        "slash", "dot-dot", "dot-dot-slash", "backslash", "leading-dot", "empty-name", "long-name",
        "openai-name", "openai-name-cased", "default", "route-name", "bad-language",
    ],
)  # fmt: skip
async def test_bad_uploads_are_400_and_leave_nothing_behind(client, library, fields, param, code):
    error = await error_of(await client.post("/voices", data=form(**fields)), 400)
    assert error["param"] == param
    assert error["code"] == code
    assert library.voices() == [] and stored_files(library) == set()


async def test_upload_must_be_a_well_formed_form(client, library):
    await error_of(await client.post("/voices", json={"voice_name": "alice"}), 415)
    garbage = await client.post("/voices", data=b"garbage", headers={"Content-Type": "multipart/form-data; boundary=b"})
    await error_of(garbage, 400)
    assert library.voices() == []


@pytest.mark.parametrize("bad", ["a/b", "..", ".x", "nova"])
async def test_bad_new_names_and_aliases_are_400(client, library, bad):
    await upload(client)
    error = await error_of(await client.put("/voices/alice", data={"new_name": bad}), 400)
    assert error["param"] == "new_name"
    error = await error_of(await client.post("/voices/alice/aliases", data={"alias": bad}), 400)
    assert error["param"] == "alias"
    assert library.all_names() == ["alice"]


async def test_taken_names_are_409(client, library):
    await upload(client)
    await upload(client, "bob")
    await client.post("/voices/bob/aliases", data={"alias": "robert"})
    for name in ("alice", "ALICE", "Robert"):
        error = await error_of(await client.post("/voices", data=form(name)), 409)
        assert error["param"] == "voice_name" and error["code"] == "voice_exists"
    assert (await error_of(await client.put("/voices/alice", data={"new_name": "bob"}), 409))["param"] == "new_name"
    for alias in ("Bob", "robert"):
        error = await error_of(await client.post("/voices/alice/aliases", data={"alias": alias}), 409)
        assert error["param"] == "alias"
    assert sorted(library.all_names()) == ["alice", "bob", "robert"]
    assert_consistent(library)


# -- concurrency and recovery ---------------------------------------------------------------


async def test_concurrent_uploads_renames_and_deletes_keep_the_index_whole(client, library):
    uploads = await asyncio.gather(*(client.post("/voices", data=form(f"v{i}")) for i in range(20)))
    assert [r.status for r in uploads] == [201] * 20

    changes = [
        *(client.put(f"/voices/v{i}", data={"new_name": f"renamed{i}"}) for i in range(8)),
        *(client.post(f"/voices/v{i}/aliases", data={"alias": f"alias{i}"}) for i in range(8, 12)),
        *(client.delete(f"/voices/v{i}") for i in range(12, 16)),
        *(client.post("/voices", data=form(f"new{i}", FLAC, "x.flac")) for i in range(4)),
    ]
    responses = await asyncio.gather(*changes)
    assert all(r.status in (200, 201) for r in responses), [r.status for r in responses]

    expected = {
        *(f"renamed{i}" for i in range(8)),
        *(f"v{i}" for i in range(8, 12)),
        *(f"alias{i}" for i in range(8, 12)),
        *(f"v{i}" for i in range(16, 20)),
        *(f"new{i}" for i in range(4)),
    }
    assert set(library.all_names()) == expected
    assert_consistent(library)


async def test_concurrent_uploads_of_one_name_keep_exactly_one(client, library):
    responses = await asyncio.gather(*(client.post("/voices", data=form("same")) for _ in range(10)))
    assert sorted(r.status for r in responses) == [201] + [409] * 9
    assert library.all_names() == ["same"]
    assert_consistent(library)


async def test_a_corrupt_index_is_set_aside_and_rebuilt_from_the_audio_files(client, library, caplog):
    await upload(client)
    await upload(client, "bob", FLAC, "bob.flac")
    files = {entry.filename: entry for entry in library.voices()}
    index = library.directory / INDEX_NAME
    index.write_bytes(b'{"version": 1, "voices": [')

    with caplog.at_level(logging.ERROR, logger="chatterbox_status.voices"):
        recovered = VoiceLibrary(library.directory)
    assert "unreadable" in caplog.text
    assert {entry.filename for entry in recovered.voices()} == set(files)
    for entry in recovered.voices():
        assert entry.name == entry.filename.rpartition(".")[0]
        assert entry.sha256 == files[entry.filename].sha256
        assert resolve(entry.name, None, recovered).path == str(recovered.path(entry))
    [aside] = library.directory.glob(f"{INDEX_NAME}.corrupt-*")
    assert aside.read_bytes() == b'{"version": 1, "voices": ['
    assert VoiceLibrary(library.directory).voices() == recovered.voices()


async def test_an_index_naming_files_outside_the_library_counts_as_corrupt(client, library):
    await upload(client)
    index = library.directory / INDEX_NAME
    body = json.loads(index.read_bytes())
    body["voices"][0]["filename"] = "../outside.wav"
    index.write_text(json.dumps(body))

    recovered = VoiceLibrary(library.directory)
    assert [library.path(entry).parent for entry in recovered.voices()] == [library.directory]
    assert len(list(library.directory.glob(f"{INDEX_NAME}.corrupt-*"))) == 1


async def test_a_missing_directory_is_an_empty_library_made_on_the_first_upload(aiohttp_client, tmp_path):
    library = VoiceLibrary(tmp_path / "new" / "voices")
    assert library.voices() == [] and library.all_names() == [] and library.default() is None
    assert resolve("nobody", None, library) is None
    assert not (tmp_path / "new").exists()
    await library.add("alice", WAV, "a.wav")
    assert VoiceLibrary(library.directory).all_names() == ["alice"]


# -- the voices a client can use -------------------------------------------------------


async def test_a_fresh_server_lists_default_and_the_openai_names(client):
    body = await (await client.get("/v1/audio/voices")).json()
    assert (body["voices"], body["count"]) == ([], 0)  # chatterbox-tts-api's library listing
    assert body["available_names"][0] == "default"
    assert set(body["available_names"]) == {"default", "alloy", "ash", "ballad", "coral", "echo", "fable",
                                            "onyx", "nova", "sage", "shimmer", "verse", "marin", "cedar"}
    assert {v["id"] for v in body["available_voices"]} == set(body["available_names"])
    assert all(v["source"] == "default" and v["languages"] == ["en", "fr"] for v in body["available_voices"])


@pytest.mark.parametrize("cloning", [True, False])
async def test_library_voices_are_usable_only_when_the_engine_clones(make_client, cloning):
    client = await make_client(engine=ScriptedEngine(cloning=cloning))
    await upload(client, "alice", language="fr")
    await client.post("/voices/alice/aliases", data={"alias": "ally"})
    body = await (await client.get("/v1/audio/voices")).json()
    # Open WebUI maps each listed voice's id to its name.
    assert {v["id"]: v["name"] for v in body["voices"]} == {"alice": "alice"}
    library = [v for v in body["available_voices"] if v["source"] == "library"]
    if cloning:
        assert library == [{"id": "alice", "name": "alice", "source": "library", "languages": ["fr"]}]
        assert body["available_names"][-2:] == ["alice", "ally"]
    else:
        assert library == [] and "alice" not in body["available_names"]
