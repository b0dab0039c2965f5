"""Memory snapshots for the status API: process and system RAM, and CUDA when in use.

CUDA figures are read only when torch is already imported by an engine: asking for them
must never import torch (seconds of start-up, gigabytes of libraries) on its own.
"""

from __future__ import annotations

import gc
import sys
from typing import Any

import psutil

_MB = 1024 * 1024
_process = psutil.Process()

DISABLED = {
    "enabled": False,
    "note": "memory monitoring is disabled (ENABLE_MEMORY_MONITORING=false)",
}


def snapshot() -> dict[str, Any]:
    """Current memory use in MB; GPU figures are 0 without a CUDA device."""
    rss = _process.memory_info().rss
    system = psutil.virtual_memory()
    info: dict[str, Any] = {
        "cpu_memory_mb": round(rss / _MB, 1),
        "cpu_memory_percent": round(_process.memory_percent(), 2),
        "system_memory_total_mb": round(system.total / _MB, 1),
        "system_memory_available_mb": round(system.available / _MB, 1),
        "gpu_available": False,
        "gpu_memory_allocated_mb": 0.0,
        "gpu_memory_reserved_mb": 0.0,
        "gpu_memory_max_allocated_mb": 0.0,
    }
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        info.update(
            gpu_available=True,
            gpu_memory_allocated_mb=round(torch.cuda.memory_allocated() / _MB, 1),
            gpu_memory_reserved_mb=round(torch.cuda.memory_reserved() / _MB, 1),
            gpu_memory_max_allocated_mb=round(torch.cuda.max_memory_allocated() / _MB, 1),
        )
    return info


def report(enabled: bool) -> dict[str, Any]:
    """What the status API shows: a snapshot, or a note saying why there is none."""
    return snapshot() if enabled else dict(DISABLED)


def release(reset_peak: bool = False) -> None:
    """Give back what generation no longer holds: Python garbage, and torch's CUDA cache
    (its peak statistics too, when asked)."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
        if reset_peak:
            torch.cuda.reset_peak_memory_stats()


def is_out_of_memory(exc: BaseException) -> bool:
    """MemoryError, or torch's OutOfMemoryError (CUDA), without importing torch."""
    return isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError"
