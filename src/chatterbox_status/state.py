"""Typed keys for what the app factory puts on the application."""

from __future__ import annotations

from aiohttp import web

from .config import Settings
from .core import Core
from .metrics import Metrics
from .voices import VoiceLibrary

SETTINGS = web.AppKey("settings", Settings)
CORE = web.AppKey("core", Core)
METRICS = web.AppKey("metrics", Metrics)
VOICE_LIBRARY = web.AppKey("voice_library", VoiceLibrary)
