"""Memory snapshots for the status API: process and system RAM, and CUDA when in use.

CUDA figures are read only when torch is already imported by an engine: asking for them
must never import torch (seconds of start-up, gigabytes of libraries) on its own.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Sequence
from typing import Any

import psutil

from .exceptions import EngineOutOfMemory

_MB = 1024 * 1024
_process = psutil.Process()

DISABLED = {
    "enabled": False,
    "note": "memory monitoring is disabled (ENABLE_MEMORY_MONITORING=false)",
}


def snapshot(engines: Sequence[tuple[int | None, dict[str, Any] | None]] = ()) -> dict[str, Any]:
    """Current memory use in MB: the CPU figures add the server and its engine processes
    (``engines``: each running one's pid and last CUDA report, from :func:`gpu_figures`),
    each side also shown alone; the GPU figures add the engine processes', 0 without CUDA."""
    server = _process.memory_info().rss
    engine, engine_percent = 0, 0.0
    gpu: dict[str, Any] = {}
    for pid, figures in engines:
        if pid is None:  # not running: whatever it last reported is gone with it
            continue
        rss, percent = _process_memory(pid)
        engine, engine_percent = engine + rss, engine_percent + percent
        for name, value in (figures or {}).items():
            gpu[name] = value if name == "gpu_available" else round(gpu.get(name, 0.0) + value, 1)
    system = psutil.virtual_memory()
    info: dict[str, Any] = {
        "cpu_memory_mb": round((server + engine) / _MB, 1),
        "cpu_memory_percent": round(_process.memory_percent() + engine_percent, 2),
        "server_memory_mb": round(server / _MB, 1),
        "engine_memory_mb": round(engine / _MB, 1),
        "system_memory_total_mb": round(system.total / _MB, 1),
        "system_memory_available_mb": round(system.available / _MB, 1),
        "gpu_available": False,
        "gpu_memory_allocated_mb": 0.0,
        "gpu_memory_reserved_mb": 0.0,
        "gpu_memory_max_allocated_mb": 0.0,
    }
    info.update(gpu)
    return info


def _process_memory(pid: int | None) -> tuple[int, float]:
    """Resident bytes and percent of RAM of process ``pid``; 0 when there is none."""
    if pid is None:
        return 0, 0.0
    try:
        process = psutil.Process(pid)
        return process.memory_info().rss, process.memory_percent()
    except psutil.Error:
        return 0, 0.0


def gpu_figures() -> dict[str, Any] | None:
    """This process's CUDA figures in MB, or None without CUDA (never imports torch)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return None
    return {
        "gpu_available": True,
        "gpu_memory_allocated_mb": round(torch.cuda.memory_allocated() / _MB, 1),
        "gpu_memory_reserved_mb": round(torch.cuda.memory_reserved() / _MB, 1),
        "gpu_memory_max_allocated_mb": round(torch.cuda.max_memory_allocated() / _MB, 1),
    }


def report(enabled: bool, engines: Sequence[tuple[int | None, dict[str, Any] | None]] = ()) -> dict[str, Any]:
    """What the status API shows: a snapshot, or a note saying why there is none."""
    return snapshot(engines) if enabled else dict(DISABLED)


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
    """MemoryError, or torch's OutOfMemoryError (CUDA), without importing torch, or the
    engine process's report of either."""
    return isinstance(exc, (MemoryError, EngineOutOfMemory)) or type(exc).__name__ == "OutOfMemoryError"
