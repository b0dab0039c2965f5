"""The long-text settings the job manager needs, taken from Settings (checked there)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..config import Settings

# Seconds between two retention sweeps.
CLEANUP_INTERVAL = 3600.0


def _default(name: str) -> Any:
    """The Settings field's own default: one place for every default."""
    return next(f.default for f in dataclasses.fields(Settings) if f.name == name)


@dataclass(frozen=True)
class LongTextConfig:
    data_dir: str = _default("data_dir")
    max_length: int = _default("long_text_max_length")
    max_concurrent_jobs: int = _default("long_text_max_concurrent_jobs")
    # Jobs accepted and not finished (generating or pending) before a new one is a 429:
    # MAX_QUEUE_SIZE, the same bound as interactive requests waiting for the engine.
    max_pending_jobs: int = _default("max_queue_size")
    # 0: no quota.
    max_disk_mb: float = _default("long_text_max_disk_mb")
    # 0: keep finished jobs for ever.
    retention_days: float = _default("long_text_job_retention_days")
    silence_padding_ms: int = _default("long_text_silence_padding_ms")
    cleanup_interval: float = CLEANUP_INTERVAL
    # Set: the jobs are the cluster's, in this Redis (see longtext.redis_store).
    redis_url: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> LongTextConfig:
        return cls(
            data_dir=settings.data_dir,
            max_length=settings.long_text_max_length,
            max_concurrent_jobs=settings.long_text_max_concurrent_jobs,
            max_pending_jobs=settings.max_queue_size,
            max_disk_mb=settings.long_text_max_disk_mb,
            retention_days=settings.long_text_job_retention_days,
            silence_padding_ms=settings.long_text_silence_padding_ms,
            redis_url=settings.redis_url,
        )
