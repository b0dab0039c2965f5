"""The `auto` engine choice and its reason."""

from __future__ import annotations

import sys

import pytest

from chatterbox_status import engines
from chatterbox_status.config import Settings, SettingsError


def test_auto_without_chatterbox_tts_picks_hibari_and_says_why(tmp_path, monkeypatch):
    # A bare folder named "chatterbox" on the path is not the library.
    (tmp_path / "chatterbox").mkdir()
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "chatterbox", raising=False)
    choice = engines.choose(Settings(engine="auto"))
    assert (choice.name, choice.requested) == ("hibari", "auto")
    assert "chatterbox-tts is not installed" in choice.reason


def test_auto_prefers_chatterbox_when_the_library_and_torch_are_importable(monkeypatch):
    monkeypatch.setattr(engines, "chatterbox_installed", lambda: True)
    choice = engines.choose(Settings(engine="auto"))
    assert choice.name == "chatterbox" and "installed" in choice.reason


@pytest.mark.parametrize("name", ["hibari", "chatterbox", "chatterbox-multilingual", "chatterbox-turbo"])
def test_every_named_engine_can_be_chosen_and_built_without_loading(name):
    settings = Settings(engine=name)
    choice = engines.choose(settings)
    engine = engines.create(choice, settings)
    assert (choice.name, engine.name) == (name, name)
    assert engine.sample_rate == 24_000


def test_an_engine_that_is_not_built_is_refused_at_start(monkeypatch):
    monkeypatch.setattr(engines, "NAMES", tuple(n for n in engines.NAMES if n != "chatterbox-turbo"))
    with pytest.raises(SettingsError, match="ENGINE"):
        engines.choose(Settings(engine="chatterbox-turbo"))
