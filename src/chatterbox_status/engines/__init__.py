"""Engine registry: names to factories, and the ``auto`` choice with its reason."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

from ..config import Settings, SettingsError
from .base import Engine
from .hibari import HibariEngine

FACTORIES: dict[str, Callable[[Settings], Engine]] = {
    "hibari": lambda settings: HibariEngine(),
}


@dataclass(frozen=True)
class EngineChoice:
    name: str
    requested: str
    reason: str


def choose(settings: Settings) -> EngineChoice:
    """Which engine to run, and why: ``auto`` prefers chatterbox when it is installed."""
    requested = settings.engine
    if requested != "auto":
        if requested not in FACTORIES:
            raise SettingsError(
                f"ENGINE (--engine) {requested!r} is not available in this build; "
                f"available: auto, {', '.join(sorted(FACTORIES))}"
            )
        return EngineChoice(requested, requested, f"engine {requested!r} was requested")
    if importlib.util.find_spec("chatterbox") is None:
        return EngineChoice("hibari", requested, "chatterbox-tts is not installed, so the embedded hibari voice speaks")
    if "chatterbox" not in FACTORIES:
        return EngineChoice("hibari", requested, "chatterbox-tts is installed but this build has no chatterbox engine yet")
    return EngineChoice("chatterbox", requested, "chatterbox-tts is installed")


def create(choice: EngineChoice, settings: Settings) -> Engine:
    return FACTORIES[choice.name](settings)
