"""Voice names a speech request may use.

The OpenAI voice names mean the server's default voice, so OpenAI clients work unchanged;
any other name is an error rather than a silent fallback.
"""

from __future__ import annotations

from .engines.base import Voice

OPENAI_VOICES = frozenset(
    {"alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer", "verse", "marin", "cedar"}
)
DEFAULT_NAMES = OPENAI_VOICES | {"default"}


def resolve(name: str, default_sample_path: str | None) -> Voice | None:
    """The voice for ``name``, or None when no voice has that name."""
    if name.strip().lower() in DEFAULT_NAMES:
        return Voice(source="default", path=default_sample_path)
    return None
