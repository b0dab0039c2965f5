"""The long-text settings the job manager needs, taken from Settings (checked there)."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import Settings

# Seconds between two retention sweeps.
CLEANUP_INTERVAL = 3600.0


@dataclass(frozen=True)
class LongTextConfig:
    data_dir: str = "./data"
    max_length: int = 100_000
    max_concurrent_jobs: int = 1
    # 0: no quota.
    max_disk_mb: float = 2048.0
    # 0: keep finished jobs for ever.
    retention_days: float = 7.0
    silence_padding_ms: int = 200
    cleanup_interval: float = CLEANUP_INTERVAL

    @classmethod
    def from_settings(cls, settings: Settings) -> LongTextConfig:
        return cls(
            data_dir=settings.data_dir,
            max_length=settings.long_text_max_length,
            max_concurrent_jobs=settings.long_text_max_concurrent_jobs,
            max_disk_mb=settings.long_text_max_disk_mb,
            retention_days=settings.long_text_job_retention_days,
            silence_padding_ms=settings.long_text_silence_padding_ms,
        )
