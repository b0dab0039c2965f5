"""Job files on disk: each finished chunk as float32 .npy, the final audio, all written
atomically (temporary name, fsync, rename, fsync of the folder)."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np


def job_dir(root: Path, job_id: str) -> Path:
    return root / "jobs" / job_id


def chunk_name(index: int) -> str:
    """A chunk's file, relative to its job's folder."""
    return f"chunks/{index:05d}.npy"


def chunk_path(root: Path, job_id: str, index: int) -> Path:
    return job_dir(root, job_id) / chunk_name(index)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def npy(samples: np.ndarray) -> bytes:
    """A chunk's file: its audio as a float32 .npy, in memory, so a full disk fails as the
    OS says it (ENOSPC), not as numpy's short write."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(samples, dtype=np.float32).reshape(-1), allow_pickle=False)
    return buffer.getvalue()


def write_atomic(path: Path, data: bytes) -> int:
    """Write ``data`` to ``path`` so that a crash leaves the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    finally:  # a failed write (a full disk) leaves nothing behind
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return path.stat().st_size


def read_chunk(path: Path, samples: int | None) -> np.ndarray | None:
    """A chunk's audio, or None when the file is missing, corrupt or of the wrong length."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if array.dtype != np.float32 or array.ndim != 1 or (samples is not None and array.shape[0] != samples):
        return None
    if not np.all(np.isfinite(array)):
        return None
    return array


def remove_job(root: Path, job_id: str) -> None:
    shutil.rmtree(job_dir(root, job_id), ignore_errors=True)


def disk_usage(root: Path) -> int:
    """Bytes of the files under ``root``."""
    total = 0
    for folder, _, names in os.walk(root):
        for name in names:
            try:
                total += os.stat(os.path.join(folder, name)).st_size
            except OSError:
                pass
    return total
