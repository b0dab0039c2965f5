"""A long-text job's output for the pipeline: each chunk to a file on disk, committed to
the job's store before the pipeline announces it, and the final audio encoded chunk by
chunk into its file, so a job never holds more than one chunk in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import audio
from ..pipeline import CONCATENATING_AT, FINALIZING_AT, Progress, StopReason
from . import files
from .store import CANCELLED, COMPLETED, FAILED, PAUSED, PROCESSING, ChunkRecord, JobRecord, storage_errors

Db = Callable[..., Awaitable[Any]]


class ChunkFileOutput:
    """``shared``: the job is the cluster's (REDIS_URL), so every file written here goes to
    the store too, and a chunk another node finished is copied here before it is read."""

    def __init__(
        self, db: Db, root: Path, job: JobRecord, chunks: list[ChunkRecord], check_quota: Callable[[], Awaitable[None]], shared: bool = False
    ) -> None:
        self.db = db
        self.root = root
        self.shared = shared
        self.job = job
        self.chunks = chunks
        self.check_quota = check_quota
        self.sample_rate = 0
        self.samples = 0
        self._began = 0.0

    async def start(self, sample_rate: int, chunks: Sequence[str]) -> list[int]:
        self.sample_rate = sample_rate
        self.job = await self.db(
            "update", self.job.job_id, status=PROCESSING, processing_started_at=self.job.processing_started_at or time.time()
        )
        return [c.index for c in self.chunks if not c.done]

    async def chunk_started(self, index: int) -> None:
        await self.check_quota()
        await self.db("chunk_started", self.job.job_id, index)
        self._began = time.perf_counter()

    async def add(self, index: int, samples: np.ndarray) -> None:
        job_id = self.job.job_id
        data = files.npy(samples)
        try:
            await asyncio.to_thread(files.write_atomic, files.chunk_path(self.root, job_id, index), data)
        except OSError as exc:
            raise storage_errors(exc) from exc
        if self.shared:
            await self.db("put_file", job_id, files.chunk_name(index), data)
        duration_ms = int(round(1000 * len(samples) / self.sample_rate))
        elapsed_ms = int(round(1000 * (time.perf_counter() - self._began)))
        await self.db("chunk_done", job_id, index, len(samples), duration_ms, elapsed_ms)
        chunk = self.chunks[index]
        chunk.done, chunk.samples = True, len(samples)

    async def check(self) -> list[int]:
        """Chunks whose file went missing or bad since it was written: marked undone."""
        if self.shared:
            await self._copy_missing()
        bad = await asyncio.to_thread(self._unreadable)
        for chunk, reason in bad:
            await self.db("chunk_invalid", self.job.job_id, chunk.index, reason)
            chunk.done, chunk.samples = False, None
        return [chunk.index for chunk, _ in bad]

    async def _copy_missing(self) -> None:
        """The finished chunks this node has no file of (another node made them), from the store."""
        for chunk in self.chunks:
            path = files.chunk_path(self.root, self.job.job_id, chunk.index)
            if chunk.done and not await asyncio.to_thread(path.is_file):
                data = await self.db("get_file", self.job.job_id, files.chunk_name(chunk.index))
                if data is not None:
                    await asyncio.to_thread(files.write_atomic, path, data)

    def _unreadable(self) -> list[tuple[ChunkRecord, str]]:
        bad = []
        for chunk in self.chunks:
            path = files.chunk_path(self.root, self.job.job_id, chunk.index)
            if files.read_chunk(path, chunk.samples) is None:
                bad.append((chunk, "audio file is missing" if not path.exists() else "audio file is corrupt"))
        return bad

    async def finish(self, progress: Progress) -> bytes:
        progress.stage("concatenating", f"Combining {len(self.chunks)} audio chunks", CONCATENATING_AT)
        fmt = self.job.output_format
        output = files.job_dir(self.root, self.job.job_id) / f"output.{fmt}"
        progress.stage("finalizing", f"Converting to {fmt}", FINALIZING_AT)
        try:
            size, self.samples = await asyncio.to_thread(self._encode, output)
        except OSError as exc:  # a full disk fails the job "out of space", as a chunk's file does
            translated = storage_errors(exc)
            if translated is exc:
                raise
            raise translated from exc
        if self.shared:
            await self.db("put_file", self.job.job_id, output.name, await asyncio.to_thread(output.read_bytes))
        self.job = await self.db(
            "update",
            self.job.job_id,
            status=COMPLETED,
            current_chunk=None,
            processing_completed_at=time.time(),
            output_path=output.name,
            output_size_bytes=size,
            output_duration_seconds=round(self.samples / self.sample_rate, 3),
        )
        return b""

    def _encode(self, output: Path) -> tuple[int, int]:
        """Chunk files, with the job's silence between them, into ``output`` (atomically)."""
        gap = np.zeros(int(round(self.job.silence_padding_ms / 1000.0 * self.sample_rate)), dtype=np.float32)
        tmp = output.with_name(f".{output.name}.tmp")
        total = 0
        try:
            with open(tmp, "wb") as target:
                encoder = audio.FileEncoder(target, self.job.output_format, self.sample_rate)
                try:
                    for chunk in self.chunks:
                        piece = files.read_chunk(files.chunk_path(self.root, self.job.job_id, chunk.index), chunk.samples)
                        if piece is None:
                            raise OSError(f"chunk {chunk.index} of job {self.job.job_id} could not be read back")
                        if total:
                            encoder.write(gap)
                            total += len(gap)
                        encoder.write(piece)
                        total += len(piece)
                except BaseException:
                    with contextlib.suppress(Exception):  # the file is thrown away; its writer still ends here,
                        encoder.close()  # not later in the garbage collector, against a closed file
                    raise
                encoder.close()
                target.flush()
                os.fsync(target.fileno())
            os.replace(tmp, output)
        finally:
            tmp.unlink(missing_ok=True)
        return output.stat().st_size, total

    async def failed(self, message: str) -> None:
        self.job = await self.db("update", self.job.job_id, status=FAILED, error=message, current_chunk=None)

    async def stopped(self, reason: StopReason) -> None:
        paused = reason == "pause"
        self.job = await self.db(
            "update",
            self.job.job_id,
            status=PAUSED if paused else CANCELLED,
            current_chunk=None,
            processing_paused_at=time.time() if paused else None,
        )
