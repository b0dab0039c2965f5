"""The voice library in Redis on its own: a change applies to the cluster's library, not to
a node's possibly stale copy, and the clip travels with it."""

from __future__ import annotations

import pytest
from helpers import wav_tone

from chatterbox_status.events import EventBus
from chatterbox_status.redis_voices import SharedVoiceLibrary
from chatterbox_status.voices import NameTaken, VoiceLibrary


@pytest.fixture
async def two_nodes(redis_server, tmp_path):
    """Two libraries on one Redis that are never told of each other's changes."""
    libraries = [SharedVoiceLibrary(tmp_path / name, redis_server.url, EventBus()) for name in ("a", "b")]
    for library in libraries:
        await library.start()
    yield libraries
    for library in libraries:
        await library.stop()


async def test_a_change_applies_to_the_clusters_library_not_a_stale_copy(two_nodes):
    a, b = two_nodes
    clip = wav_tone(1.0)
    await a.add("narrator", clip, "narrator.wav")
    assert b.get("narrator") is None  # b has not heard of it
    with pytest.raises(NameTaken):
        await b.add("Narrator", clip, "other.wav")  # yet the name is taken in the one library
    assert not any(p.suffix == ".wav" for p in (b.directory).glob("*"))  # its refused clip is gone
    renamed = await b.rename("narrator", "storyteller")  # b changes what it had not seen
    assert renamed.name == "storyteller"
    assert b.path(renamed).read_bytes() == clip  # the clip came with the index
    await a.start()  # a loads the library again (a node does so on each voices event)
    assert [v.name for v in a.voices()] == ["storyteller"]


async def test_a_library_kept_on_disk_goes_to_redis_once_and_no_nodes_files_are_lost(redis_server, tmp_path):
    first_clip, second_clip = wav_tone(1.0, frequency=200.0), wav_tone(1.0, frequency=300.0)
    await VoiceLibrary(tmp_path / "a").add("narrator", first_clip, "narrator.wav")
    await VoiceLibrary(tmp_path / "b").add("announcer", second_clip, "announcer.wav")
    a = SharedVoiceLibrary(tmp_path / "a", redis_server.url, EventBus())
    b = SharedVoiceLibrary(tmp_path / "b", redis_server.url, EventBus())
    try:
        await a.start()  # Redis had no library: a's becomes the cluster's
        await b.start()  # Redis has one now: b takes it
        assert [v.name for v in a.voices()] == [v.name for v in b.voices()] == ["narrator"]
        assert b.path(b.get("narrator")).read_bytes() == first_clip
        # b's own clip is not in the cluster's library, and it is still on b's disk
        assert any(p.read_bytes() == second_clip for p in (tmp_path / "b").glob("*.wav"))
    finally:
        for library in (a, b):
            await library.stop()
