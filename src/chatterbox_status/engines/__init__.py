"""Engine registry: names to factories, and the ``auto`` choice with its reason."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

from ..config import Settings, SettingsError
from .base import Engine
from .chatterbox import CLASSES, ChatterboxEngine
from .hibari import HibariEngine


def _chatterbox(kind: str) -> Callable[[Settings], Engine]:
    def create(settings: Settings) -> Engine:
        return ChatterboxEngine(kind, settings.device, settings.model_dir, settings.model_cache_dir)

    return create


FACTORIES: dict[str, Callable[[Settings], Engine]] = {
    "hibari": lambda settings: HibariEngine(),
    **{kind: _chatterbox(kind) for kind in CLASSES},
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
    if not chatterbox_installed():
        return EngineChoice("hibari", requested, "chatterbox-tts is not installed, so the embedded hibari voice speaks")
    return EngineChoice("chatterbox", requested, "chatterbox-tts is installed")


def chatterbox_installed() -> bool:
    """chatterbox-tts and torch importable, without importing them (torch takes seconds)."""
    try:
        return all(importlib.util.find_spec(name) is not None for name in ("chatterbox.tts", "torch"))
    except ModuleNotFoundError:  # a "chatterbox" that is not the library (a bare folder on the path)
        return False


def create(choice: EngineChoice, settings: Settings) -> Engine:
    return FACTORIES[choice.name](settings)
