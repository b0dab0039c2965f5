"""Long-text jobs in Redis, so every node of a cluster has the same jobs (REDIS_URL).

The same blocking interface as the SQLite :class:`~.store.JobStore` (the manager runs each
call in a thread), on redis-py's synchronous client, plus what a cluster needs besides:

- the jobs' audio (each finished chunk's float32 file and the final file), so a job runs
  on and downloads from any node; each node keeps copies on its disk, as on one node;
- a lease per running job (a key with a time to live that its node renews), so a job whose
  node stopped is taken over by another node, from its last finished chunk.

A job is a hash (one JSON value per field) with a hash of its chunks, and its id in a
sorted set of all jobs and in one per status (both by creation time), so pages and counts
never load every job. A change that reads and writes is one Lua script, atomic against
every node's; each checks that the job still exists, so a write racing a deletion never
brings back half a job.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import Counter
from typing import Any, cast

import redis

from ..redis_events import KEY
from .store import COMPLETED, FAILED, FINISHED, JOB_COLUMNS, JOB_STATUSES, RUNNABLE, ChunkRecord, JobRecord

PREFIX = KEY + "jobs:"
ALL = PREFIX + "all"  # sorted set: every job id by created_at
STATUS = PREFIX + "status:"  # + status: sorted set of the job ids in it
BYTES = PREFIX + "bytes"  # the audio every job holds in Redis, in bytes
# Seconds a job's lease lasts without renewal: a job of a node that stopped waits this
# long before another node takes it over.
LEASE_SECONDS = 10.0


def _job(job_id: str) -> str:
    return PREFIX + "job:" + job_id


def _chunks(job_id: str) -> str:
    return PREFIX + "chunks:" + job_id


def _done(job_id: str) -> str:
    return PREFIX + "done:" + job_id


def _sizes(job_id: str) -> str:
    return PREFIX + "files:" + job_id  # hash: file name -> bytes


def _file(job_id: str) -> str:
    return PREFIX + "file:" + job_id + ":"  # + file name


def lease(job_id: str) -> str:
    return PREFIX + "lease:" + job_id


UPDATE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return nil end
if ARGV[3] ~= '' then
    local old = cjson.decode(redis.call('HGET', KEYS[1], 'status'))
    if old ~= ARGV[3] then
        redis.call('ZREM', ARGV[2] .. old, ARGV[1])
        redis.call('ZADD', ARGV[2] .. ARGV[3], redis.call('HGET', KEYS[1], 'created_at'), ARGV[1])
    end
end
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
return redis.call('HGETALL', KEYS[1])
"""

CHUNK = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
if ARGV[3] == 'started' then
    redis.call('HSET', KEYS[1], 'current_chunk', ARGV[1], 'updated_at', ARGV[4])
    return 1
end
if ARGV[3] == 'done' then redis.call('SADD', KEYS[3], ARGV[1]) else redis.call('SREM', KEYS[3], ARGV[1]) end
redis.call('HSET', KEYS[1], 'completed_chunks', redis.call('SCARD', KEYS[3]), 'updated_at', ARGV[4])
redis.call('HINCRBY', KEYS[1], 'total_processing_time_ms', ARGV[5])
return 1
"""

PUT_FILE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local old = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
redis.call('SET', KEYS[3], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], #ARGV[2])
redis.call('INCRBY', KEYS[4], #ARGV[2] - old)
return 1
"""

DELETE = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 0 end
redis.call('ZREM', ARGV[2] .. cjson.decode(status), ARGV[1])
redis.call('ZREM', KEYS[6], ARGV[1])
local sizes = redis.call('HGETALL', KEYS[4])
local total = 0
for i = 1, #sizes, 2 do
    redis.call('DEL', ARGV[3] .. sizes[i])
    total = total + tonumber(sizes[i + 1])
end
redis.call('DECRBY', KEYS[5], total)
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
return 1
"""

# A lease that lapsed while Redis was away is taken again, unless another node took it.
RENEW = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if not holder then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]); return 1 end
return 0
"""

RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _decode(raw: dict[bytes, bytes]) -> JobRecord | None:
    if not raw:
        return None
    data = {name.decode(): json.loads(value) for name, value in raw.items()}
    return JobRecord(**data)


def _pairs(raw: list[bytes]) -> dict[bytes, bytes]:
    return dict(zip(raw[::2], raw[1::2]))


class RedisJobStore:
    """The long-text job records, chunks, audio and leases of every node sharing ``url``."""

    def __init__(self, url: str) -> None:
        self._client = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)
        self._update = self._client.register_script(UPDATE)
        self._chunk = self._client.register_script(CHUNK)
        self._put_file = self._client.register_script(PUT_FILE)
        self._delete = self._client.register_script(DELETE)
        self._renew = self._client.register_script(RENEW)
        self._release = self._client.register_script(RELEASE)

    def close(self) -> None:
        self._client.close()

    # -- jobs --------------------------------------------------------------------

    def create(self, job: JobRecord, chunks: list[str]) -> None:
        self._write(job, [ChunkRecord(i, text) for i, text in enumerate(chunks)])

    def add(self, job: JobRecord, chunks: list[ChunkRecord]) -> bool:
        """A job as it stands (one a node kept before it shared its jobs), unless the cluster
        has it already."""
        if self._client.exists(_job(job.job_id)):
            return False
        self._write(job, chunks)
        return True

    def _write(self, job: JobRecord, chunks: list[ChunkRecord]) -> None:
        fields = {name: json.dumps(value) for name, value in dataclasses.asdict(job).items()}
        records = {str(chunk.index): json.dumps(dataclasses.asdict(chunk)) for chunk in chunks}
        with self._client.pipeline(transaction=True) as pipe:
            pipe.hset(_job(job.job_id), mapping=cast(Any, fields))
            pipe.hset(_chunks(job.job_id), mapping=cast(Any, records))
            if done := [chunk.index for chunk in chunks if chunk.done]:
                pipe.sadd(_done(job.job_id), *done)
            pipe.zadd(ALL, {job.job_id: job.created_at})
            pipe.zadd(STATUS + job.status, {job.job_id: job.created_at})
            pipe.execute()

    def get(self, job_id: str) -> JobRecord | None:
        return _decode(cast(dict[bytes, bytes], self._client.hgetall(_job(job_id))))

    def update(self, job_id: str, **fields: Any) -> JobRecord | None:
        """Set fields (``updated_at`` too) and return the record as committed."""
        unknown = set(fields) - set(JOB_COLUMNS)
        if unknown:
            raise ValueError(f"unknown job fields {sorted(unknown)}")
        fields.setdefault("updated_at", time.time())
        pairs = [part for name, value in fields.items() for part in (name, json.dumps(value))]
        raw = self._update(keys=[_job(job_id)], args=[job_id, STATUS, fields.get("status", ""), *pairs])
        return None if raw is None else _decode(_pairs(raw))

    def delete(self, job_id: str) -> bool:
        """The job, its chunks and its audio."""
        keys = [_job(job_id), _chunks(job_id), _done(job_id), _sizes(job_id), BYTES, ALL]
        return bool(self._delete(keys=keys, args=[job_id, STATUS, _file(job_id)]))

    def page(self, status: str | None = None, limit: int = 50, offset: int = 0) -> tuple[list[JobRecord], int]:
        """Jobs newest first, and how many match in all."""
        key = STATUS + status if status else ALL
        total = cast(int, self._client.zcard(key))
        ids = cast(list[bytes], self._client.zrevrange(key, offset, offset + limit - 1)) if limit > 0 else []
        return self._jobs([i.decode() for i in ids]), total

    def _jobs(self, ids: list[str]) -> list[JobRecord]:
        """Those of ``ids`` that still exist, in order."""
        with self._client.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hgetall(_job(job_id))
            found = [_decode(raw) for raw in pipe.execute()]
        return [job for job in found if job is not None]

    def ids_with_status(self, statuses: frozenset[str] | set[str]) -> list[str]:
        """Oldest first."""
        with self._client.pipeline(transaction=False) as pipe:
            for status in sorted(statuses):
                pipe.zrange(STATUS + status, 0, -1, withscores=True)
            scored = [(score, member.decode()) for members in pipe.execute() for member, score in members]
        return [job_id for _, job_id in sorted(scored)]

    def finished_before(self, cutoff: float) -> list[str]:
        """Finished jobs last changed before ``cutoff``."""
        ids = self.ids_with_status(FINISHED)
        with self._client.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hget(_job(job_id), "updated_at")
            changed = pipe.execute()
        return [job_id for job_id, at in zip(ids, changed) if at is not None and json.loads(at) < cutoff]

    def counts(self) -> dict[str, int]:
        with self._client.pipeline(transaction=False) as pipe:
            for status in JOB_STATUSES:
                pipe.zcard(STATUS + status)
            sizes = pipe.execute()
        return {status: size for status, size in zip(JOB_STATUSES, sizes) if size}

    def stats(self) -> dict[str, Any]:
        """The totals JobStore.stats gives, over every node's jobs."""
        ids = [i.decode() for i in cast(list[bytes], self._client.zrange(ALL, 0, -1))]
        names = ("status", "voice", "created_at", "output_duration_seconds", "output_size_bytes", "total_processing_time_ms")
        with self._client.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hmget(_job(job_id), names)
            rows: list[dict[str, Any]] = [dict(zip(names, (json.loads(v) if v is not None else None for v in row))) for row in pipe.execute()]
        rows = [row for row in rows if row["status"] is not None]
        completed = [row for row in rows if row["status"] == COMPLETED]
        failed = sum(row["status"] == FAILED for row in rows)
        ended = len(completed) + failed
        voices = Counter(row["voice"] for row in rows)  # in the order of first use (rows are oldest first)
        months = Counter(time.strftime("%Y-%m", time.gmtime(row["created_at"])) for row in rows)
        return {
            "total_jobs": len(rows),
            "completed_jobs": len(completed),
            "failed_jobs": failed,
            "total_audio_duration_seconds": round(sum(row["output_duration_seconds"] or 0.0 for row in completed), 3),
            "total_storage_bytes": sum(row["output_size_bytes"] or 0 for row in completed),
            "average_processing_time_seconds": (
                round(sum(row["total_processing_time_ms"] for row in completed) / len(completed) / 1000, 3) if completed else 0.0
            ),
            "success_rate_percentage": round(100.0 * len(completed) / ended, 1) if ended else 0.0,
            "most_used_voice": min(voices, key=lambda voice: -voices[voice]) if voices else None,  # ties: the first used
            "jobs_by_month": dict(sorted(months.items())),
        }

    # -- chunks ------------------------------------------------------------------

    def chunks(self, job_id: str) -> list[ChunkRecord]:
        raw = cast(dict[bytes, bytes], self._client.hgetall(_chunks(job_id)))
        return sorted((ChunkRecord(**json.loads(value)) for value in raw.values()), key=lambda chunk: chunk.index)

    def _chunk_change(self, job_id: str, index: int, how: str, processing_ms: int = 0, **changes: Any) -> None:
        raw = cast(bytes | None, self._client.hget(_chunks(job_id), str(index)))
        if raw is None:
            return
        chunk = {**json.loads(raw), **changes}
        now = json.dumps(time.time())
        self._chunk(keys=[_job(job_id), _chunks(job_id), _done(job_id)], args=[index, json.dumps(chunk), how, now, processing_ms])

    def chunk_started(self, job_id: str, index: int) -> None:
        self._chunk_change(job_id, index, "started", started_at=time.time())

    def chunk_done(self, job_id: str, index: int, samples: int, duration_ms: int, processing_ms: int) -> None:
        """Mark a chunk finished (its audio is already stored) and count it on the job."""
        self._chunk_change(
            job_id, index, "done", processing_ms, done=True, samples=samples, duration_ms=duration_ms, completed_at=time.time(), error=None
        )

    def chunk_invalid(self, job_id: str, index: int, reason: str) -> None:
        """A finished chunk's audio is missing or corrupt: it must be generated again."""
        self._chunk_change(job_id, index, "undone", done=False, samples=None, error=reason)

    # -- audio -------------------------------------------------------------------

    def put_file(self, job_id: str, name: str, data: bytes) -> None:
        """One of the job's files (``name`` relative to its folder), for every node."""
        self._put_file(keys=[_job(job_id), _sizes(job_id), _file(job_id) + name, BYTES], args=[name, data])

    def get_file(self, job_id: str, name: str) -> bytes | None:
        return cast(bytes | None, self._client.get(_file(job_id) + name))

    def usage(self) -> int:
        """Bytes of audio every job holds."""
        return int(cast(bytes | None, self._client.get(BYTES)) or 0)

    # -- leases ------------------------------------------------------------------

    def claim(self, job_id: str, node: str) -> bool:
        """Run the job on ``node``, unless a node holds it already."""
        return bool(self._client.set(lease(job_id), node, nx=True, px=int(LEASE_SECONDS * 1000)))

    def renew(self, job_ids: list[str], node: str) -> list[str]:
        """Renew ``node``'s leases; the ids whose lease another node holds now."""
        held = [self._renew(keys=[lease(job_id)], args=[node, int(LEASE_SECONDS * 1000)]) for job_id in job_ids]
        return [job_id for job_id, kept in zip(job_ids, held) if not kept]

    def release(self, job_id: str, node: str) -> None:
        self._release(keys=[lease(job_id)], args=[node])

    def holder(self, job_id: str) -> str | None:
        raw = cast(bytes | None, self._client.get(lease(job_id)))
        return None if raw is None else raw.decode()

    def orphans(self) -> list[str]:
        """Jobs that should run and that no node holds, oldest first."""
        ids = self.ids_with_status(RUNNABLE)
        with self._client.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.exists(lease(job_id))
            held = pipe.execute()
        return [job_id for job_id, taken in zip(ids, held) if not taken]
