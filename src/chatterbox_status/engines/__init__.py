"""Engine registry: names to factories, and the ``auto`` choice with its reason."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass

from ..config import Settings, SettingsError, names
from .base import Engine
from .chatterbox import CLASSES, ChatterboxEngine
from .hibari import HibariEngine


def build(
    name: str, device: str = "auto", model_dir: str | None = None, cache_dir: str | None = None, threads: int = 1, max_batch_size: int = 0
) -> Engine:
    """Engine ``name``, not loaded yet: what the engine process builds and loads."""
    if name == "hibari":
        return HibariEngine(threads)
    if name in CLASSES:
        return ChatterboxEngine(name, device, model_dir, cache_dir, max_batch_size)
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


# OpenAI's speech model names: they choose the default engine unless MODEL_ALIASES says otherwise.
OPENAI_MODELS = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")


@dataclass(frozen=True)
class Catalog:
    """The engines a server offers (the default first) and the model names that choose them."""

    engines: tuple[str, ...]
    aliases: dict[str, str]

    @property
    def default(self) -> str:
        return self.engines[0]

    def engine_for(self, model: str | None) -> str | None:
        """The engine a request's ``model`` chooses (the default when it names none), or
        None when no engine goes by that name."""
        if model is None or model == "":
            return self.default
        return model if model in self.engines else self.aliases.get(model)

    @property
    def model_names(self) -> list[str]:
        """Every name a request may send as ``model``."""
        return [*self.engines, *self.aliases]


def catalog(default: str, others: Sequence[str], model_aliases: str) -> Catalog:
    """The default engine first, then the others (ENGINES); OpenAI's names choose the default
    and MODEL_ALIASES maps more names (or OpenAI's) onto these engines."""
    engines = [default, *(name for name in dict.fromkeys(others) if name != default)]
    aliases = {name: default for name in OPENAI_MODELS}
    for pair in names(model_aliases):
        alias, _, target = (part.strip() for part in pair.partition("="))
        if target not in engines:
            raise SettingsError(
                f"MODEL_ALIASES (--model-aliases) maps {alias!r} to {target!r}, which is not configured; "
                f"add it to ENGINES or use one of {', '.join(engines)}"
            )
        aliases[alias] = target
    for name in engines:
        aliases.pop(name, None)
    return Catalog(tuple(engines), aliases)


def chatterbox_installed() -> bool:
    """chatterbox-tts and torch importable, without importing them (torch takes seconds)."""
    try:
        return all(importlib.util.find_spec(name) is not None for name in ("chatterbox.tts", "torch"))
    except ModuleNotFoundError:  # a "chatterbox" that is not the library (a bare folder on the path)
        return False


def build_kwargs(name: str, settings: Settings) -> dict[str, object]:
    """The arguments of :func:`build` for engine ``name``, as the engine process gets them."""
    return {
        "name": name,
        "device": settings.device,
        "model_dir": settings.model_dir,
        "cache_dir": settings.model_cache_dir,
        "threads": settings.engine_threads,
        "max_batch_size": settings.max_batch_size,
    }


def create(choice: EngineChoice, settings: Settings) -> Engine:
    """The chosen engine, not loaded, in this process (the benchmark's direct baseline)."""
    return build(**build_kwargs(choice.name, settings))  # type: ignore[arg-type]
