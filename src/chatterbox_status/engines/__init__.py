"""Engine registry: names to factories, and the ``auto`` choice with its reason."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from ..config import Settings, SettingsError
from .base import Engine
from .chatterbox import CLASSES, ChatterboxEngine
from .hibari import HibariEngine


def build(name: str, device: str = "auto", model_dir: str | None = None, cache_dir: str | None = None, threads: int = 1) -> Engine:
    """Engine ``name``, not loaded yet: what the engine process builds and loads."""
    if name == "hibari":
        return HibariEngine(threads)
    if name in CLASSES:
        return ChatterboxEngine(name, device, model_dir, cache_dir)
    raise SettingsError(f"unknown engine {name!r}")


NAMES = ("hibari", *CLASSES)


@dataclass(frozen=True)
class EngineChoice:
    name: str
    requested: str
    reason: str


def choose(settings: Settings) -> EngineChoice:
    """Which engine to run, and why: ``auto`` prefers chatterbox when it is installed."""
    requested = settings.engine
    if requested != "auto":
        if requested not in NAMES:
            raise SettingsError(
                f"ENGINE (--engine) {requested!r} is not available in this build; "
                f"available: auto, {', '.join(sorted(NAMES))}"
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


def build_kwargs(choice: EngineChoice, settings: Settings) -> dict[str, object]:
    """The arguments of :func:`build` for the chosen engine, as the engine process gets them."""
    return {
        "name": choice.name,
        "device": settings.device,
        "model_dir": settings.model_dir,
        "cache_dir": settings.model_cache_dir,
        "threads": settings.engine_threads,
    }


def create(choice: EngineChoice, settings: Settings) -> Engine:
    """The chosen engine, not loaded, in this process (the benchmark's direct baseline)."""
    return build(**build_kwargs(choice, settings))  # type: ignore[arg-type]
