"""Storage that fails: a full disk and a corrupt jobs database, on the real filesystem.

The full disk is a tiny tmpfs mounted in a mount namespace of the server's own
(``unshare -m``), so nothing outside the test sees it; the test reads the server's view
of it through /proc/PID/root. In process, a chunk meets a full disk as its temporary file
is a link to /dev/full, where every write fails with ENOSPC.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import clean_environ, free_port, http, lock_exclusively, stop, wait_healthy

TEXT = " ".join(f"Sentence number {n} of a story that will not fit on this very small disk." for n in range(1, 40))


def can_mount() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"], capture_output=True)
    return probe.returncode == 0


@pytest.fixture
def full_disk_server(tmp_path):
    if not can_mount():
        pytest.skip("needs root and unshare to mount a tiny filesystem in a private namespace")
    data = tmp_path / "data"
    data.mkdir()
    port = free_port()
    log_path = tmp_path / "serve.log"
    env = {k: v for k, v in clean_environ().items() if not k.startswith("LONG_TEXT_")}
    env.update(DATA_DIR=str(data), MAX_CHUNK_LENGTH="90", ENGINE="hibari", LONG_TEXT_MAX_DISK_MB="0")
    serve = f"exec {sys.executable} -m chatterbox_status serve --host 127.0.0.1 --port {port}"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            ["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=900k tmpfs '{data}' && {serve}"],
            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, process, log_path, deadline_s=90)
        yield base, process, data
    finally:
        stop(process)


def get(base: str, path: str) -> dict:
    status, _, raw = http("GET", base + path)
    assert status == 200, raw[:300]
    return json.loads(raw)


def test_a_full_disk_fails_the_job_once_and_leaves_no_phantom(full_disk_server):
    base, process, data = full_disk_server
    status, _, raw = http("POST", base + "/audio/speech/long", {"input": TEXT, "response_format": "wav"})
    assert status == 200, raw
    job_id = json.loads(raw)["job_id"]
    deadline = time.monotonic() + 120
    while (view := get(base, f"/audio/speech/long/{job_id}"))["status"] not in ("failed", "completed"):
        assert process.poll() is None, "the server died"
        assert time.monotonic() < deadline, view
        time.sleep(0.05)  # poll interval; the deadline decides
    assert view["status"] == "failed"
    assert "space" in (view["progress"]["error"] or ""), view
    record = get(base, f"/status/requests/{job_id}")
    assert record["status"] == "error" and "space" in record["error_message"]
    assert get(base, "/status/progress")["status"] == "idle"
    stats = get(base, "/status/statistics")
    assert (stats["total_requests"], stats["error_requests"], stats["is_processing"]) == (1, 1, False)
    _, _, metrics = http("GET", base + "/metrics")
    active = next(line for line in metrics.decode().splitlines() if line.startswith("chatterbox_requests_active"))
    assert float(active.rsplit(" ", 1)[1]) == 0
    status, _, raw = http("DELETE", base + f"/audio/speech/long/{job_id}")
    assert status == 409, raw  # it really ended: nothing left to cancel
    # The server's own view of its disk: no temporary file was left behind.
    seen = Path(f"/proc/{process.pid}/root") / str(data).lstrip("/")
    leftovers = [p.name for p in seen.rglob("*.tmp")]
    assert leftovers == []
    # A new job on the full disk is refused as out of space, and speech still works.
    status, _, raw = http("POST", base + "/audio/speech/long", {"input": TEXT, "response_format": "wav"})
    assert status in (200, 507), raw
    status, _, audio = http("POST", base + "/v1/audio/speech", {"input": "Still speaking."})
    assert status == 200 and audio[:4] == b"RIFF"


async def test_a_corrupt_jobs_database_is_set_aside_and_speech_goes_on(aiohttp_client, tmp_path, caplog):
    from conftest import build_app
    from doubles import ScriptedEngine

    db = tmp_path / "data" / "long_text" / "jobs.sqlite3"
    db.parent.mkdir(parents=True)
    garbage = os.urandom(8192)
    db.write_bytes(garbage)
    client = await aiohttp_client(build_app(ScriptedEngine(), tmp_path / "data", tmp_path / "voices"))
    resp = await client.post("/audio/speech/long", json={"input": "A job on a fresh database.", "response_format": "wav"})
    assert resp.status == 200, await resp.text()
    job_id = (await resp.json())["job_id"]
    assert (await client.get(f"/audio/speech/long/{job_id}")).status == 200
    # The corrupt file is kept aside as it was, and the log says where.
    aside = [p for p in db.parent.iterdir() if ".corrupt-" in p.name]
    assert len(aside) == 1 and aside[0].name.startswith("jobs.sqlite3.corrupt-")
    assert aside[0].read_bytes() == garbage
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR" and "corrupt" in r.getMessage()]
    assert errors == [f"long-text database {db} is corrupt (file is not a database): set aside as {aside[0]}, starting a new one"]
    # The new database is where the old one was, and holds the new job.
    with contextlib.closing(sqlite3.connect(db)) as fresh:
        assert fresh.execute("SELECT job_id FROM jobs").fetchall() == [(job_id,)]
    resp = await client.post("/v1/audio/speech", json={"input": "Interactive speech works too."})
    assert resp.status == 200


async def second_chunk_started(make_long):
    """A long-text job whose first chunk is on disk and whose second is being spoken (held):
    the client, the engine and the job's id."""
    from doubles import ScriptedEngine
    from test_long_text import SENTENCES, in_thread, submit

    engine = ScriptedEngine()
    client = await make_long(engine, hold=True)
    job_id = (await submit(client))["job_id"]
    await in_thread(engine.wait_started)
    engine.release(1)
    assert await in_thread(engine.wait_started) == SENTENCES[1]
    return client, engine, job_id


async def fails_out_of_space(client, engine, job_id: str) -> None:
    """Let the job run on: it fails as out of space, in the jobs API and the status API alike."""
    from test_long_text import finished

    engine.release(10)
    view = await finished(client, job_id)
    assert view["status"] == "failed"
    assert "out of space" in view["progress"]["error"], view
    record = await (await client.get(f"/status/requests/{job_id}")).json()
    assert record["status"] == "error" and "out of space" in record["error_message"]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
async def test_a_chunk_written_where_the_disk_is_full_fails_its_job_as_out_of_space(make_long):
    """In process, one file meets a full disk: the chunk's temporary file is a link to
    /dev/full, where every write fails with ENOSPC as on a full filesystem. The job fails as
    out of space, in the jobs API and the status API alike, and leaves no temporary file."""
    from test_long_text import manager_of

    from chatterbox_status.longtext import files

    client, engine, job_id = await second_chunk_started(make_long)  # chunk 1 is on disk
    root = manager_of(client).root
    second = files.chunk_path(root, job_id, 1)
    (second.parent / f".{second.name}.tmp").symlink_to("/dev/full")
    await fails_out_of_space(client, engine, job_id)
    assert list(second.parent.iterdir()) == [files.chunk_path(root, job_id, 0)]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
async def test_a_final_file_written_where_the_disk_is_full_fails_its_job_as_out_of_space(make_long):
    """Every chunk is on disk; the job's final file meets a full disk (its temporary file is a
    link to /dev/full). The job fails as out of space, as README says a full disk does, in the
    jobs API and the status API alike, and leaves no final file, whole or temporary."""
    from test_long_text import manager_of

    from chatterbox_status.longtext import files

    client, engine, job_id = await second_chunk_started(make_long)  # the job's folder exists
    folder = files.job_dir(manager_of(client).root, job_id)
    (folder / ".output.wav.tmp").symlink_to("/dev/full")
    await fails_out_of_space(client, engine, job_id)
    assert [p.name for p in folder.iterdir()] == ["chunks"]
    assert (await client.get(f"/audio/speech/long/{job_id}/download")).status != 200


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
async def test_a_jobs_database_that_a_full_disk_keeps_from_opening_is_a_507_not_set_aside(aiohttp_client, tmp_path):
    """The first long-text job opens the jobs database, and the disk is full as it does (the
    database is a link to /dev/full, where every write fails with ENOSPC, so SQLite itself
    says "database or disk is full"): the job is refused with a 507 that says the database
    cannot be opened, nothing is set aside as corrupt, and once there is room the next job is
    taken on the database in the same place."""
    from conftest import build_app
    from doubles import ScriptedEngine

    db = tmp_path / "data" / "long_text" / "jobs.sqlite3"
    db.parent.mkdir(parents=True)
    db.symlink_to("/dev/full")
    client = await aiohttp_client(build_app(ScriptedEngine(), tmp_path / "data", tmp_path / "voices"))
    body = {"input": "A job for a disk that is full.", "response_format": "wav"}
    resp = await client.post("/audio/speech/long", json=body)
    assert resp.status == 507, await resp.text()
    error = (await resp.json())["error"]
    assert error["message"] == "The long-text database cannot be opened: database or disk is full", error
    assert [p.name for p in db.parent.iterdir()] == ["jobs.sqlite3"] and db.is_symlink()
    db.unlink()  # room again
    resp = await client.post("/audio/speech/long", json=body)
    assert resp.status == 200, await resp.text()
    job_id = (await resp.json())["job_id"]
    with contextlib.closing(sqlite3.connect(db)) as opened:
        assert opened.execute("SELECT job_id FROM jobs").fetchall() == [(job_id,)]


async def test_a_jobs_database_another_process_holds_locked_is_left_as_it_is_and_its_jobs_resume_once_free(
    aiohttp_client, tmp_path, monkeypatch, caplog
):
    """A job stopped at its third chunk, and while the server is down another process takes the
    jobs database in exclusive locking mode (sqlite3's shell doing maintenance, a backup). The
    server starts and speaks anyway; a new long-text job is a 503 that says the database cannot
    be opened, and the database is not set aside as corrupt (which would lose the job). Once the
    lock is let go, the job resumes where it stopped, without a restart, and completes."""
    from conftest import build_app, core_of
    from doubles import ScriptedEngine
    from test_long_text import SENTENCES, finished, spoken, third_chunk_running
    from test_status_api import until_status

    from chatterbox_status.longtext import manager

    monkeypatch.setattr(manager, "REOPEN_SECONDS", 0.2)
    engine = ScriptedEngine()
    client = await aiohttp_client(build_app(engine, tmp_path / "data", tmp_path / "voices"))
    await core_of(client).worker.wait_loaded()
    job_id = await third_chunk_running(client, engine)
    await client.close()

    db = tmp_path / "data" / "long_text" / "jobs.sqlite3"
    holder = lock_exclusively(db)
    try:
        fresh = ScriptedEngine()
        client = await aiohttp_client(build_app(fresh, tmp_path / "data", tmp_path / "voices"))
        await core_of(client).worker.wait_loaded()
        assert (await client.post("/v1/audio/speech", json={"input": "Speech goes on."})).status == 200
        resp = await client.post("/audio/speech/long", json={"input": "A job while the database is locked.", "response_format": "wav"})
        assert resp.status == 503, await resp.text()
        error = (await resp.json())["error"]
        assert (error["code"], error["message"]) == ("storage_unavailable", "The long-text database cannot be opened: database is locked")
        assert db.is_file() and not [p.name for p in db.parent.iterdir() if ".corrupt-" in p.name]
        warned = {r.getMessage() for r in caplog.records if r.name == "chatterbox_status.longtext.store" and r.levelname == "WARNING"}
        assert warned == {f"long-text database {db} cannot be opened (database is locked): left as it is"}
        waits = [r.getMessage() for r in caplog.records if r.name == "chatterbox_status.longtext.manager" and r.levelname == "ERROR"]
        assert waits == ["long-text jobs wait to resume until their database opens: The long-text database cannot be opened: database is locked"]
        assert spoken(fresh) == ["Speech goes on."]
    finally:
        holder.close()
    await until_status(client, job_id, "completed", timeout=30)
    view = await finished(client, job_id)
    assert view["status"] == "completed"
    assert spoken(fresh)[1:] == SENTENCES[2:]


async def test_a_new_job_waiting_out_another_processs_write_on_the_jobs_database_is_a_503(aiohttp_client, tmp_path):
    """Another process holds a write transaction on the jobs database longer than SQLite's busy
    timeout (5 s) while a job is submitted: the POST is a 503 that says so (it was a 500,
    "Internal server error"), the job that finished before is untouched, and once the other
    process lets go a job is taken again."""
    from conftest import build_app
    from doubles import ScriptedEngine
    from test_long_text import finished

    client = await aiohttp_client(build_app(ScriptedEngine(), tmp_path / "data", tmp_path / "voices"))
    body = {"input": "A job.", "response_format": "wav"}
    resp = await client.post("/audio/speech/long", json=body)
    assert resp.status == 200, await resp.text()
    first = (await resp.json())["job_id"]
    assert (await finished(client, first))["status"] == "completed"
    holder = sqlite3.connect(tmp_path / "data" / "long_text" / "jobs.sqlite3", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        resp = await client.post("/audio/speech/long", json=body)
        assert resp.status == 503, await resp.text()
        error = (await resp.json())["error"]
        assert (error["code"], error["message"]) == (
            "storage_unavailable", "The long-text database is held by another process: database is locked"
        )
        assert (await client.get(f"/audio/speech/long/{first}")).status == 200  # reading goes on (WAL)
    finally:
        holder.close()
    resp = await client.post("/audio/speech/long", json=body)
    assert resp.status == 200, await resp.text()
    assert (await finished(client, (await resp.json())["job_id"]))["status"] == "completed"


async def test_a_jobs_database_that_fills_the_disk_while_the_server_runs_refuses_the_job_as_507(make_long):
    """The jobs database has no room to grow (SQLite's own page limit, set on the server's
    connection to the pages it holds, is how SQLite meets a full disk: "database or disk is
    full"): a new job is a 507 that says the storage is out of space, nothing of it is listed,
    and once there is room the next job is taken."""
    from doubles import ScriptedEngine
    from test_long_text import finished, manager_of

    client = await make_long(ScriptedEngine())
    body = {"input": "A first job opens the database.", "response_format": "wav"}
    first = (await (await client.post("/audio/speech/long", json=body)).json())["job_id"]
    assert (await finished(client, first))["status"] == "completed"
    database = manager_of(client).store._db
    pages = database.execute("PRAGMA page_count").fetchone()[0]
    database.execute(f"PRAGMA max_page_count = {pages}")
    long_body = {"input": " ".join(["A sentence that takes room in the jobs database."] * 200), "response_format": "wav"}
    resp = await client.post("/audio/speech/long", json=long_body)
    assert resp.status == 507, await resp.text()
    error = (await resp.json())["error"]
    assert (error["code"], error["message"]) == ("insufficient_storage", "The long-text storage is out of space: database or disk is full")
    listed = await (await client.get("/audio/speech/long")).json()
    assert [job["job_id"] for job in listed["jobs"]] == [first]
    database.execute(f"PRAGMA max_page_count = {2 ** 30}")
    resp = await client.post("/audio/speech/long", json=body)
    assert resp.status == 200, await resp.text()
