"""Durable long-text job records: an embedded SQLite database (WAL) behind a small interface.

The runner and the routes use only :class:`JobStore`'s methods, so a Redis-backed store
can replace this one. Every method is blocking and short; callers on the event loop run
them with ``asyncio.to_thread`` (see ``LongTextManager._db``). One connection is shared
under a lock, so calls from several threads are serialised.
"""

from __future__ import annotations

import errno
import json
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..exceptions import OutOfSpace, StorageUnavailable

log = logging.getLogger(__name__)

PENDING = "pending"
CHUNKING = "chunking"
PROCESSING = "processing"
PAUSED = "paused"
COMPLETED = "completed"
FAILED = "failed"
CANCELLED = "cancelled"
JOB_STATUSES = (PENDING, CHUNKING, PROCESSING, PAUSED, COMPLETED, FAILED, CANCELLED)
FINISHED = frozenset({COMPLETED, FAILED, CANCELLED})
# Statuses a job is in while it should be run (at start, these resume).
RUNNABLE = frozenset({PENDING, CHUNKING, PROCESSING})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    text TEXT NOT NULL,
    text_length INTEGER NOT NULL,
    voice TEXT NOT NULL,
    parameters TEXT NOT NULL,
    synthesis TEXT NOT NULL,
    output_format TEXT NOT NULL,
    silence_padding_ms INTEGER NOT NULL,
    total_chunks INTEGER NOT NULL,
    completed_chunks INTEGER NOT NULL DEFAULT 0,
    current_chunk INTEGER,
    session_id TEXT,
    display_name TEXT,
    tags TEXT NOT NULL DEFAULT '[]',
    error TEXT,
    retry_count INTEGER NOT NULL DEFAULT 0,
    processing_started_at REAL,
    processing_paused_at REAL,
    processing_completed_at REAL,
    total_processing_time_ms INTEGER NOT NULL DEFAULT 0,
    output_path TEXT,
    output_size_bytes INTEGER,
    output_duration_seconds REAL,
    last_accessed REAL,
    is_archived INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS chunks (
    job_id TEXT NOT NULL REFERENCES jobs(job_id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    text TEXT NOT NULL,
    done INTEGER NOT NULL DEFAULT 0,
    samples INTEGER,
    duration_ms INTEGER,
    started_at REAL,
    completed_at REAL,
    error TEXT,
    PRIMARY KEY (job_id, idx)
);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs(created_at);
"""

JOB_COLUMNS = (
    "status", "updated_at", "completed_chunks", "current_chunk", "display_name", "tags", "error",
    "retry_count", "processing_started_at", "processing_paused_at", "processing_completed_at",
    "total_processing_time_ms", "output_path", "output_size_bytes", "output_duration_seconds", "last_accessed",
    "is_archived",
)


@dataclass
class JobRecord:
    job_id: str
    status: str
    created_at: float
    updated_at: float
    text: str
    text_length: int
    voice: str
    parameters: dict[str, Any]
    synthesis: dict[str, Any]
    output_format: str
    silence_padding_ms: int
    total_chunks: int
    completed_chunks: int = 0
    current_chunk: int | None = None
    session_id: str | None = None
    display_name: str | None = None
    tags: list[str] = field(default_factory=list)
    error: str | None = None
    retry_count: int = 0
    processing_started_at: float | None = None
    processing_paused_at: float | None = None
    processing_completed_at: float | None = None
    total_processing_time_ms: int = 0
    output_path: str | None = None
    output_size_bytes: int | None = None
    output_duration_seconds: float | None = None
    last_accessed: float | None = None
    is_archived: bool = False


@dataclass
class ChunkRecord:
    index: int
    text: str
    done: bool = False
    samples: int | None = None
    duration_ms: int | None = None
    started_at: float | None = None
    completed_at: float | None = None
    error: str | None = None


def _encode(name: str, value: Any) -> Any:
    return json.dumps(value) if name in ("tags", "parameters", "synthesis") else value


class JobStore:
    """The few operations the long-text runner and routes need, on SQLite."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = _connect(path)
        except sqlite3.OperationalError as exc:
            # It cannot be opened now (a full disk, another process holding it locked, a folder
            # in its place), which says nothing against what it holds: it stays where it is,
            # and the next call tries again.
            if _is_full(exc):
                raise OutOfSpace(f"The long-text database cannot be opened: {exc}") from exc
            log.warning("long-text database %s cannot be opened (%s): left as it is", path, exc)
            raise StorageUnavailable(f"The long-text database cannot be opened: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            # Not a database any more: keep it for whoever wants to look, and start afresh,
            # as a corrupt voice index is. Jobs in it are lost to this server.
            aside = set_aside(path, "corrupt")
            log.error("long-text database %s is corrupt (%s): set aside as %s, starting a new one", path, exc, aside)
            self._db = _connect(path)


    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- jobs --------------------------------------------------------------------

    def create(self, job: JobRecord, chunks: list[str]) -> None:
        names = [f for f in JobRecord.__dataclass_fields__]
        values = [_encode(n, getattr(job, n)) for n in names]
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.execute(
                f"INSERT INTO jobs ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})", values
            )
            self._db.executemany(
                "INSERT INTO chunks (job_id, idx, text) VALUES (?, ?, ?)",
                [(job.job_id, i, text) for i, text in enumerate(chunks)],
            )

    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return None if row is None else _job(row)

    def update(self, job_id: str, **fields: Any) -> JobRecord | None:
        """Set fields (``updated_at`` too) and return the record as committed."""
        unknown = set(fields) - set(JOB_COLUMNS)
        if unknown:
            raise ValueError(f"unknown job fields {sorted(unknown)}")
        fields.setdefault("updated_at", time.time())
        assignments = ", ".join(f"{name} = ?" for name in fields)
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.execute(
                f"UPDATE jobs SET {assignments} WHERE job_id = ?",
                [*(_encode(n, v) for n, v in fields.items()), job_id],
            )
            row = self._db.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return None if row is None else _job(row)

    def delete(self, job_id: str) -> bool:
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.execute("DELETE FROM chunks WHERE job_id = ?", (job_id,))
            return self._db.execute("DELETE FROM jobs WHERE job_id = ?", (job_id,)).rowcount > 0

    def page(self, status: str | None = None, limit: int = 50, offset: int = 0) -> tuple[list[JobRecord], int]:
        """Jobs newest first, and how many match in all."""
        where, args = ("WHERE status = ?", [status]) if status else ("", [])
        with self._lock:
            total = self._db.execute(f"SELECT COUNT(*) FROM jobs {where}", args).fetchone()[0]
            rows = self._db.execute(
                f"SELECT * FROM jobs {where} ORDER BY created_at DESC, rowid DESC LIMIT ? OFFSET ?", [*args, limit, offset]
            ).fetchall()
        return [_job(r) for r in rows], total

    def ids_with_status(self, statuses: frozenset[str] | set[str]) -> list[str]:
        """Oldest first."""
        marks = ", ".join("?" * len(statuses))
        with self._lock:
            rows = self._db.execute(
                f"SELECT job_id FROM jobs WHERE status IN ({marks}) ORDER BY created_at, rowid", sorted(statuses)
            ).fetchall()
        return [r[0] for r in rows]

    def finished_before(self, cutoff: float) -> list[str]:
        """Finished jobs last changed before ``cutoff``."""
        marks = ", ".join("?" * len(FINISHED))
        with self._lock:
            rows = self._db.execute(
                f"SELECT job_id FROM jobs WHERE status IN ({marks}) AND updated_at < ?", [*sorted(FINISHED), cutoff]
            ).fetchall()
        return [r[0] for r in rows]

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
        return {r[0]: r[1] for r in rows}

    def stats(self) -> dict[str, Any]:
        """Totals over every job, by SQL aggregates (never loading a job's text)."""
        with self._lock:
            totals = self._db.execute(
                "SELECT COUNT(*), SUM(status = ?), SUM(status = ?), "
                "SUM(CASE WHEN status = ? THEN COALESCE(output_duration_seconds, 0) END), "
                "SUM(CASE WHEN status = ? THEN COALESCE(output_size_bytes, 0) END), "
                "AVG(CASE WHEN status = ? THEN total_processing_time_ms END) FROM jobs",
                (COMPLETED, FAILED, COMPLETED, COMPLETED, COMPLETED),
            ).fetchone()
            voice = self._db.execute(
                "SELECT voice FROM jobs GROUP BY voice ORDER BY COUNT(*) DESC, MIN(created_at) LIMIT 1"
            ).fetchone()
            months = self._db.execute(
                "SELECT strftime('%Y-%m', created_at, 'unixepoch') AS month, COUNT(*) FROM jobs GROUP BY month ORDER BY month"
            ).fetchall()
        total, completed, failed, duration, size, average_ms = totals
        completed, failed = completed or 0, failed or 0
        ended = completed + failed
        return {
            "total_jobs": total,
            "completed_jobs": completed,
            "failed_jobs": failed,
            "total_audio_duration_seconds": round(duration or 0.0, 3),
            "total_storage_bytes": size or 0,
            "average_processing_time_seconds": round(average_ms / 1000, 3) if average_ms is not None else 0.0,
            "success_rate_percentage": round(100.0 * completed / ended, 1) if ended else 0.0,
            "most_used_voice": voice[0] if voice else None,
            "jobs_by_month": {month: count for month, count in months},
        }

    # -- chunks ------------------------------------------------------------------

    def chunks(self, job_id: str) -> list[ChunkRecord]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM chunks WHERE job_id = ? ORDER BY idx", (job_id,)).fetchall()
        return [
            ChunkRecord(r["idx"], r["text"], bool(r["done"]), r["samples"], r["duration_ms"], r["started_at"], r["completed_at"], r["error"])
            for r in rows
        ]

    def chunk_started(self, job_id: str, index: int) -> None:
        now = time.time()
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.execute("UPDATE chunks SET started_at = ? WHERE job_id = ? AND idx = ?", (now, job_id, index))
            self._db.execute("UPDATE jobs SET current_chunk = ?, updated_at = ? WHERE job_id = ?", (index, now, job_id))

    def chunk_done(self, job_id: str, index: int, samples: int, duration_ms: int, processing_ms: int) -> None:
        """Mark a chunk finished (its audio is already on disk) and count it on the job."""
        now = time.time()
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.execute(
                "UPDATE chunks SET done = 1, samples = ?, duration_ms = ?, completed_at = ?, error = NULL WHERE job_id = ? AND idx = ?",
                (samples, duration_ms, now, job_id, index),
            )
            self._db.execute(
                "UPDATE jobs SET completed_chunks = (SELECT COUNT(*) FROM chunks WHERE job_id = ? AND done = 1), "
                "total_processing_time_ms = total_processing_time_ms + ?, updated_at = ? WHERE job_id = ?",
                (job_id, processing_ms, now, job_id),
            )

    def chunk_invalid(self, job_id: str, index: int, reason: str) -> None:
        """A finished chunk's audio is missing or corrupt: it must be generated again."""
        now = time.time()
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.execute(
                "UPDATE chunks SET done = 0, samples = NULL, error = ? WHERE job_id = ? AND idx = ?", (reason, job_id, index)
            )
            self._db.execute(
                "UPDATE jobs SET completed_chunks = (SELECT COUNT(*) FROM chunks WHERE job_id = ? AND done = 1), updated_at = ? WHERE job_id = ?",
                (job_id, now, job_id),
            )


def set_aside(path: Path, why: str) -> Path:
    """Move the database (with its -wal and -shm files) out of the way, named for why and when."""
    aside = path.with_name(f"{path.name}.{why}-{int(time.time())}")
    for suffix in ("", "-wal", "-shm"):
        source = path.with_name(path.name + suffix)
        if source.exists():
            source.replace(aside.with_name(aside.name + suffix))
    return aside


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
    try:
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        db.executescript(_SCHEMA)
        columns = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
        if "is_archived" not in columns:  # a database made before the column existed
            db.execute("ALTER TABLE jobs ADD COLUMN is_archived INTEGER NOT NULL DEFAULT 0")
    except BaseException:
        db.close()
        raise
    return db


def _is_full(exc: sqlite3.Error) -> bool:
    return exc.sqlite_errorcode == sqlite3.SQLITE_FULL


def storage_errors(exc: BaseException) -> BaseException:
    """A full disk, however it shows (sqlite or the OS), as the OutOfSpace refusal; a write
    that waited out the busy timeout behind another process's, as StorageUnavailable."""
    if isinstance(exc, sqlite3.OperationalError):
        if _is_full(exc):
            return OutOfSpace(f"The long-text storage is out of space: {exc}")
        if (exc.sqlite_errorcode & 0xFF) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            return StorageUnavailable(f"The long-text database is held by another process: {exc}")
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return OutOfSpace(f"The long-text storage is out of space: {exc.strerror}")
    return exc


def _job(row: sqlite3.Row) -> JobRecord:
    data = dict(row)
    for name in ("tags", "parameters", "synthesis"):
        data[name] = json.loads(data[name])
    data["is_archived"] = bool(data["is_archived"])
    return JobRecord(**data)
