"""The cluster's long-text store (Redis) answers as one node's (SQLite) does: the same calls
on both give the same records, pages, counts and history statistics, so the routes and the
manager cannot tell them apart. A real redis-server, the test's own."""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import threading
import time

import pytest
import redis

from chatterbox_status.longtext.redis_store import RedisJobStore, lease
from chatterbox_status.longtext.store import (
    CANCELLED,
    COMPLETED,
    FAILED,
    FINISHED,
    PAUSED,
    PENDING,
    PROCESSING,
    RUNNABLE,
    ChunkRecord,
    JobRecord,
    JobStore,
)

DAY = 86400.0
JAN, FEB = 1767225600.0, 1769904000.0  # 2026-01-01 and 2026-02-01, UTC


def record(job_id: str, created_at: float, voice: str, chunks: int) -> JobRecord:
    return JobRecord(
        job_id=job_id, status=PENDING, created_at=created_at, updated_at=created_at, text=f"text of {job_id}",
        text_length=12, voice=voice, parameters={"voice": voice, "speed": 1.0}, synthesis={"temperature": 0.8},
        output_format="mp3", silence_padding_ms=200, total_chunks=chunks, tags=[],
    )


def history(store) -> None:
    """Nine jobs through the calls the manager makes: two voices used as often (the first
    used wins), a completed job without output figures, three still pending."""
    jobs = [
        ("a", JAN, "heart", 3), ("b", JAN + DAY, "bella", 2), ("c", FEB, "heart", 1), ("d", FEB + DAY, "bella", 2),
        ("e", FEB + 2 * DAY, "alto", 1), ("f", FEB + 2 * DAY + 1, "alto", 1),
        *((name, FEB + 3 * DAY + n, voice, 1) for n, (name, voice) in enumerate(zip("ghi", ("bella", "heart", "echo")))),
    ]
    for job_id, created, voice, chunks in jobs:
        store.create(record(job_id, created, voice, chunks), [f"chunk {i} of {job_id}" for i in range(chunks)])
    for job_id, chunks, ms in (("a", 3, 1501), ("c", 1, 701)):
        store.update(job_id, status=PROCESSING, processing_started_at=JAN)
        for index in range(chunks):
            store.chunk_started(job_id, index)
            store.chunk_done(job_id, index, 24000, 1000, ms)
        store.update(job_id, status=COMPLETED, output_path="output.mp3", output_size_bytes=4000 * chunks,
                     output_duration_seconds=1.23456 * chunks, current_chunk=None, updated_at=FEB)
    store.update("b", status=PROCESSING)
    store.chunk_started("b", 0)
    store.chunk_done("b", 0, 100, 4, 90)
    store.chunk_invalid("b", 0, "audio file is corrupt")
    store.chunk_started("b", 1)
    store.chunk_done("b", 1, 100, 4, 90)
    store.chunk_invalid("b", 1, "audio file is missing")
    store.chunk_done("b", 1, 120, 5, 80)  # made again: no error any more
    store.update("b", status=FAILED, error="Generation failed: boom", updated_at=FEB)
    store.update("d", status=PAUSED, processing_paused_at=FEB + DAY, display_name="renamed", tags=["x", "y"])
    store.update("e", status=CANCELLED, updated_at=FEB + 3 * DAY)
    store.update("f", status=COMPLETED, updated_at=FEB)
    store.update("g", status=PROCESSING)
    store.chunk_started("g", 0)
    store.update("c", display_name="renamed too")  # no status: the job stays where it is
    store.update("c", last_accessed=FEB + 5 * DAY, updated_at=FEB)


def answers(store) -> dict:
    """Everything the routes and the manager read, with the times the stores set left out."""
    def job(j: JobRecord | None) -> dict | None:
        return None if j is None else {k: v for k, v in dataclasses.asdict(j).items() if k != "updated_at" or v in (FEB, FEB + 3 * DAY)}

    def chunks(job_id: str) -> list:
        return [
            (c.index, c.text, c.done, c.samples, c.duration_ms, c.error, c.started_at is not None, c.completed_at is not None)
            for c in store.chunks(job_id)
        ]

    pages = {status: store.page(status, 2, offset) for status in (None, COMPLETED, PAUSED) for offset in (0, 1)}
    return {
        "jobs": {job_id: job(store.get(job_id)) for job_id in "abcdefghiz"},
        "recently changed": [j.job_id for j in map(store.get, "abcdefghi") if j is not None and time.time() - j.updated_at < 60],
        "chunks": {job_id: chunks(job_id) for job_id in "abcdefghi"},
        "pages": {key: ([job(j) for j in jobs], total) for key, (jobs, total) in pages.items()},
        "empty page": store.page(None, 5, 10),
        "no page": store.page(None, 0, 0),
        "one-job page": [j.job_id for j in store.page(PENDING, 1, 0)[0]],
        "counts": store.counts(),
        "stats": store.stats(),
        "runnable": store.ids_with_status(RUNNABLE),
        "finished": store.ids_with_status(FINISHED),
        "finished before": store.finished_before(FEB + 2 * DAY),
        "finished before FEB": store.finished_before(FEB),
    }


@pytest.fixture
def stores(tmp_path, redis_server):
    sqlite, shared = JobStore(tmp_path / "jobs.sqlite3"), RedisJobStore(redis_server.url)
    yield sqlite, shared
    sqlite.close()
    shared.close()


def test_the_redis_store_answers_every_call_as_the_sqlite_store_does(stores):
    sqlite, shared = stores
    assert answers(shared) == answers(sqlite)  # empty
    assert shared.usage() == 0
    history(sqlite)
    history(shared)
    expected = answers(sqlite)
    assert expected["counts"] == {COMPLETED: 3, FAILED: 1, PAUSED: 1, CANCELLED: 1, PENDING: 2, PROCESSING: 1}
    assert expected["stats"]["most_used_voice"] == "heart" and expected["finished before"] == ["a", "b", "c", "f"]
    assert expected["recently changed"] == ["d", "g"] and expected["finished before FEB"] == []
    assert answers(shared) == expected
    assert shared.update("z", status=CANCELLED) is None and sqlite.update("z", status=CANCELLED) is None
    assert shared.update("d", display_name="again") == shared.get("d")
    sqlite.update("d", display_name="again")
    for store in (sqlite, shared):
        with pytest.raises(ValueError, match=r"unknown job fields \['colour'\]"):
            store.update("d", colour="blue")
    assert shared.delete("a") is sqlite.delete("a") is True
    assert shared.delete("a") is sqlite.delete("a") is False
    assert answers(shared) == answers(sqlite)


def test_a_jobs_audio_and_its_lease_are_the_clusters(stores, redis_server):
    _, shared = stores
    client = redis.Redis.from_url(redis_server.url)

    def lease_ms(job_id: str) -> int:
        return client.pttl(lease(job_id))

    shared.create(record("j", JAN, "heart", 2), ["one", "two"])
    shared.put_file("j", "chunks/00000.npy", b"x" * 1000)
    shared.put_file("j", "chunks/00000.npy", b"y" * 600)  # written again: counted once
    shared.put_file("j", "output.mp3", b"z" * 400)
    assert shared.get_file("j", "chunks/00000.npy") == b"y" * 600
    assert shared.usage() == 1000
    assert shared.claim("j", "node-1") and not shared.claim("j", "node-2")
    assert 9000 < lease_ms("j") <= 10_000  # it lapses unless renewed
    assert shared.holder("j") == "node-1" and shared.orphans() == []
    assert shared.renew(["j"], "node-2") == ["j"]  # node-2 does not hold it
    shared.release("j", "node-2")
    assert shared.holder("j") == "node-1"  # only its holder lets it go
    shared.release("j", "node-1")
    assert shared.holder("j") is None and shared.orphans() == ["j"]
    assert shared.renew(["j"], "node-2") == [] and shared.holder("j") == "node-2"  # a lapsed lease is taken again
    assert 9000 < lease_ms("j") <= 10_000
    assert shared.delete("j")
    assert shared.usage() == 0 and shared.get_file("j", "output.mp3") is None
    shared.put_file("j", "output.mp3", b"late")  # a write racing the deletion brings nothing back
    assert shared.usage() == 0 and shared.get("j") is None and shared.chunks("j") == []
    shared.chunk_done("j", 0, 1, 1, 1)
    assert shared.get("j") is None


def test_a_redis_that_hangs_fails_a_call_within_seconds_instead_of_holding_it(stores, redis_server):
    """A Redis that stops answering (stopped, its machine gone quiet) must not hold a
    long-text route, or the lease keeper, for ever: each call gives up after 10 s."""
    _, shared = stores
    assert shared.get("x") is None  # connected
    os.kill(redis_server.process.pid, signal.SIGSTOP)
    try:
        began = time.monotonic()
        with pytest.raises(redis.exceptions.TimeoutError):
            shared.get("x")
        assert time.monotonic() - began < 15
    finally:
        os.kill(redis_server.process.pid, signal.SIGCONT)
    assert shared.get("x") is None  # and it goes on once Redis answers again


class HoldingProxy:
    """A TCP proxy in front of the test's redis-server that passes each client's commands one
    at a time, and after the first ``after`` command (HSET, ZRANGE) holds the rest until
    ``go`` is set: what another node sees, or does, in the middle of one node's calls."""

    def __init__(self, port: int, after: bytes) -> None:
        self.port, self.after, self.held, self.go = port, after, threading.Event(), threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"redis://127.0.0.1:{self.listener.getsockname()[1]}/0"
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.go.set()
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:  # closed: the test is over
                return
            server = socket.create_connection(("127.0.0.1", self.port))
            threading.Thread(target=self._replies, args=(server, client), daemon=True).start()
            threading.Thread(target=self._commands, args=(client, server), daemon=True).start()

    @staticmethod
    def _replies(server: socket.socket, client: socket.socket) -> None:
        while data := server.recv(65536):
            client.sendall(data)

    def _commands(self, client: socket.socket, server: socket.socket) -> None:
        pending = b""
        while data := client.recv(65536):
            pending += data
            while (command := _first_command(pending)) is not None:
                raw, name = command
                pending = pending[len(raw):]
                server.sendall(raw)
                if name == self.after and not self.held.is_set():
                    self.held.set()
                    self.go.wait()


def _first_command(buffer: bytes) -> tuple[bytes, bytes] | None:
    """The first whole command (a RESP array of bulk strings) in ``buffer``, and its name."""
    end = buffer.find(b"\r\n")
    if end < 0:
        return None
    position, parts = end + 2, []
    for _ in range(int(buffer[1:end])):
        end = buffer.find(b"\r\n", position)
        if end < 0:
            return None
        start = end + 2
        position = start + int(buffer[position + 1:end]) + 2
        if position > len(buffer):
            return None
        parts.append(buffer[start:position - 2])
    return buffer[:position], parts[0].upper()


@pytest.mark.parametrize("write", ["create", "add"])
def test_a_node_reading_while_another_writes_a_job_sees_all_of_it_or_nothing(stores, redis_server, write):
    """Node A writes a job (a new one, or one of its own database joining the cluster); node B
    reads the cluster after A's first command reached Redis and before the rest: B finds no
    job, not one without its chunks or missing from the listings. Once A's write is through,
    B finds all of it."""
    _, reader = stores
    proxy = HoldingProxy(redis_server.port, b"HSET")
    writer = RedisJobStore(proxy.url)
    job = record("w", JAN, "heart", 2)
    chunks = [ChunkRecord(0, "one", done=True, samples=10), ChunkRecord(1, "two")]

    def write_it() -> None:
        try:
            writer.create(job, ["one", "two"]) if write == "create" else writer.add(job, chunks)
        finally:
            proxy.held.set()  # a write that failed before its first HSET lets the test go on at once

    done = threading.Thread(target=write_it)
    done.start()
    try:
        assert proxy.held.wait(10)
        assert (reader.get("w"), reader.chunks("w"), reader.page(None, 10, 0)) == (None, [], ([], 0))
    finally:
        proxy.go.set()
        done.join(10)
        writer.close()
        proxy.close()
    assert reader.get("w") == job and [c.text for c in reader.chunks("w")] == ["one", "two"]
    assert [j.job_id for j in reader.page(None, 10, 0)[0]] == ["w"] and reader.ids_with_status({PENDING}) == ["w"]


def test_the_history_statistics_asked_while_a_job_is_deleted_count_the_jobs_that_remain(stores, redis_server):
    """Node A reads the history statistics; between its list of the jobs and its read of them,
    node B deletes one. A's statistics answer (they were a 500 waiting to happen: the deleted
    job's fields read as nothing) and count the jobs that remain."""
    _, other = stores
    history(other)
    proxy = HoldingProxy(redis_server.port, b"ZRANGE")
    reader = RedisJobStore(proxy.url)
    answers: list = []
    asking = threading.Thread(target=lambda: answers.append(reader.stats()))
    asking.start()
    try:
        assert proxy.held.wait(10)
        assert other.delete("a")
    finally:
        proxy.go.set()
        asking.join(10)
        reader.close()
        proxy.close()
    assert answers == [other.stats()]
    assert answers[0]["total_jobs"] == 8 and answers[0]["completed_jobs"] == 2
