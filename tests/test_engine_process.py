"""The engine in a process of its own: killed, hung, cancelled and crashing, seen over HTTP.

The engine here is tests/doubles.py's GatedEngine, built inside the real engine process
(python -m chatterbox_status.engine_process) by the product's EngineProcess; a chunk whose
text holds "HOLD" waits in the child until the test creates its gate file.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from conftest import core_of
from doubles import GatedEngine, in_process_of_its_own
from test_faults import assert_statistics_add_up, terminal_counter

from chatterbox_status import engine_pool
from chatterbox_status.config import Settings
from chatterbox_status.supervisor import engine_process


def watch(client, request_id: str, status: str) -> asyncio.Future:
    """Resolves with the first bus event of ``request_id`` that shows ``status``."""
    seen: asyncio.Future = asyncio.get_running_loop().create_future()

    def listen(event) -> None:
        if event.data.get("request_id") == request_id and event.data.get("status") == status and not seen.done():
            if event.type == "progress" or status != "generating_audio":
                seen.set_result(event.data)

    core_of(client).bus.add_listener(listen)
    return seen


def engine_events(client) -> list[dict]:
    seen: list[dict] = []
    core_of(client).bus.add_listener(lambda e: seen.append(dict(e.data)) if e.type == "engine" else None)
    return seen


def speak(client, text: str, request_id: str):
    return asyncio.ensure_future(client.post("/v1/audio/speech", json={"input": text}, headers={"X-Request-ID": request_id}))


async def test_a_worker_killed_mid_request_ends_it_as_error_once_and_the_queued_one_runs_on_a_new_worker(make_client, tmp_path):
    host = in_process_of_its_own(GatedEngine, gate=str(tmp_path / "gate"))
    client = await make_client(engine=host)
    counts, engine = terminal_counter(client), engine_events(client)
    first_pid = host.pid
    working = watch(client, "doomed-one", "generating_audio")
    doomed = speak(client, "HOLD on, this one is killed.", "doomed-one")
    await asyncio.wait_for(working, 30)  # its first progress came from the child, mid-chunk
    waiting = speak(client, "This one waits and then speaks.", "patient-one")
    os.kill(first_pid, signal.SIGKILL)

    failed = await doomed
    assert failed.status == 500
    message = (await failed.json())["error"]["message"]
    assert "engine process killed by SIGKILL" in message, message
    spoken = await waiting
    assert spoken.status == 200 and len(await spoken.read()) > 1000
    assert host.pid != first_pid
    assert counts == {"doomed-one": 1, "patient-one": 1}
    stats = await assert_statistics_add_up(client)
    assert (stats["error_requests"], stats["completed_requests"]) == (1, 1)
    restarting = [e for e in engine if e.get("state") == "restarting"]
    assert len(restarting) == 1 and "killed by SIGKILL" in restarting[0]["error"]
    assert [e["state"] for e in engine if "state" in e][-1] == "ready"
    health = await (await client.get("/health")).json()
    assert health["status"] == "healthy" and health["engine"]["error"] is None


async def test_a_worker_that_dies_after_running_a_while_is_restarted_at_once_every_time(make_client, tmp_path, monkeypatch):
    """The backoff is for a worker that keeps dying soon after it is ready; one that ran a
    while (STABLE_SECONDS, cut to nothing here) is restarted at once each time it dies, and
    while it restarts it shows no load progress."""
    monkeypatch.setattr(engine_pool, "STABLE_SECONDS", 0.0)
    host = in_process_of_its_own(GatedEngine, gate=str(tmp_path / "gate"))
    client = await make_client(engine=host)
    engine = engine_events(client)
    for deaths in (1, 2):
        os.kill(host.pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while len([e for e in engine if e.get("state") == "ready"]) < deaths:
            assert time.monotonic() < deadline, f"no new worker is ready after death {deaths}"
            await asyncio.sleep(0.02)  # poll interval; the deadline decides
    restarting = [e for e in engine if e.get("state") == "restarting"]
    assert [e["error"].rsplit("; restart ", 1)[1] for e in restarting] == ["1 in 0 s", "2 in 0 s"]
    assert [e["load_progress"] for e in restarting] == [0.0, 0.0]
    assert (await (await client.post("/v1/audio/speech", json={"input": "Still speaking."})).read())[:4] == b"RIFF"


async def test_a_worker_that_hangs_past_chunk_timeout_is_killed_and_replaced(make_client, tmp_path):
    host = in_process_of_its_own(GatedEngine, gate=str(tmp_path / "never"), ignore_cancel=True)
    client = await make_client(engine=host, chunk_timeout=0.5)
    counts, engine = terminal_counter(client), engine_events(client)
    first_pid = host.pid
    stuck = await client.post("/v1/audio/speech", json={"input": "HOLD forever, ignoring every cancel."})
    assert stuck.status == 500
    assert "CHUNK_TIMEOUT" in (await stuck.json())["error"]["message"]
    fine = await client.post("/v1/audio/speech", json={"input": "The next request is not stuck behind it."})
    assert fine.status == 200
    assert host.pid != first_pid
    assert sorted(counts.values()) == [1, 1]
    await assert_statistics_add_up(client)
    reasons = [e["error"] for e in engine if e.get("state") == "restarting"]
    assert len(reasons) == 1 and "ignored cancellation" in reasons[0], reasons


async def test_cancelling_mid_chunk_reaches_the_engine_process_and_keeps_it(make_client, tmp_path):
    host = in_process_of_its_own(GatedEngine, gate=str(tmp_path / "never"))
    client = await make_client(engine=host)
    pid = host.pid
    working = watch(client, "stop-me-now", "generating_audio")
    held = speak(client, "HOLD until cancelled, mid chunk.", "stop-me-now")
    await asyncio.wait_for(working, 30)
    cancel = await client.delete("/v1/audio/speech/stop-me-now")
    assert cancel.status == 200
    assert (await held).status == 409  # the child stopped the chunk: nothing ever opened the gate
    after = await client.post("/v1/audio/speech", json={"input": "Same worker, next request."})
    assert after.status == 200
    assert host.pid == pid
    stats = await assert_statistics_add_up(client)
    assert (stats["cancelled_requests"], stats["completed_requests"]) == (1, 1)


async def test_a_worker_that_keeps_dying_is_restarted_with_growing_pauses_and_health_says_why(make_client):
    host = in_process_of_its_own(GatedEngine, die_on_load=True)
    client = await make_client(engine=host, wait_loaded=False)
    engine = engine_events(client)
    while len([e for e in engine if e.get("state") == "restarting"]) < 3:
        await asyncio.sleep(0.05)  # each restart is a new process dying at load
    restarts = [e["error"].rsplit("; restart ", 1)[1] for e in engine if e.get("state") == "restarting"][:3]
    assert restarts == ["1 in 0 s", "2 in 1 s", "3 in 2 s"]  # each numbered, and each pause longer
    fresh = {"load_progress": 0.0, "error": None, "idle_since": None, "unloads_at": None}
    for loading in [e for e in engine if e.get("state") == "loading"]:  # each start begins afresh
        assert {key: loading.get(key, "left out") for key in fresh} == fresh, loading
    health = await (await client.get("/health")).json()
    assert health["status"] == "initializing" and health["model_loaded"] is False
    assert "killed by SIGKILL while loading the model" in health["initialization_error"]
    waiting = watch(client, "waiting-one", "initializing")
    queued = speak(client, "Still accepted, waiting for an engine.", "waiting-one")
    await asyncio.wait_for(waiting, 10)
    assert (await client.delete("/v1/audio/speech/waiting-one")).status == 200
    assert (await queued).status == 409


def test_the_server_process_never_imports_the_model_library(tmp_path):
    """A real server on hibari: the engine process has onnxruntime mapped, the server has not."""
    script = textwrap.dedent(
        f"""
        import asyncio, json, sys
        from aiohttp.test_utils import TestClient, TestServer
        from chatterbox_status.app import create_app
        from chatterbox_status.config import Settings
        from chatterbox_status.state import CORE

        async def main():
            settings = Settings(voice_library_dir={str(tmp_path / "v")!r}, enable_memory_monitoring=True)
            async with TestClient(TestServer(create_app(settings))) as client:
                core = client.server.app[CORE]
                await core.worker.wait_loaded()
                spoken = await client.post("/v1/audio/speech", json={{"input": "Hello from the other process."}})
                memory = await (await client.get("/memory")).json()
                maps = open(f"/proc/{{core.host.pid}}/maps").read()
                print(json.dumps({{
                    "status": spoken.status,
                    "server_modules": sorted(m for m in ("onnxruntime", "hibari", "torch") if m in sys.modules),
                    "engine_has_onnxruntime": "onnxruntime" in maps,
                    "memory": memory["memory_info"],
                }}))

        asyncio.run(main())
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["status"] == 200
    assert found["server_modules"] == []
    assert found["engine_has_onnxruntime"] is True
    memory = found["memory"]
    assert memory["engine_memory_mb"] > 10 and memory["server_memory_mb"] > 10
    assert abs(memory["cpu_memory_mb"] - memory["server_memory_mb"] - memory["engine_memory_mb"]) < 0.2



@pytest.mark.parametrize("ignore_cancel", [False, True], ids=["checks-cancel", "hangs"])
def test_an_engine_process_mid_chunk_ends_with_its_server_killed(tmp_path, ignore_cancel):
    """A server killed while its engine speaks a chunk leaves no engine process behind, even
    one stuck in a chunk that never checks for cancellation."""
    tests = str(Path(__file__).resolve().parent)
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        sys.path.insert(0, {tests!r})
        from aiohttp.test_utils import TestClient, TestServer
        from doubles import GatedEngine, in_process_of_its_own
        from chatterbox_status.app import create_app
        from chatterbox_status.config import Settings
        from chatterbox_status.state import CORE

        async def main():
            host = in_process_of_its_own(GatedEngine, gate={str(tmp_path / "never")!r}, ignore_cancel={ignore_cancel!r})
            settings = Settings(voice_library_dir={str(tmp_path / "v")!r}, data_dir={str(tmp_path / "d")!r})
            async with TestClient(TestServer(create_app(settings, host))) as client:
                core = client.server.app[CORE]
                await core.worker.wait_loaded()
                speaking = asyncio.get_running_loop().create_future()
                core.bus.add_listener(lambda e: e.type == "progress" and not speaking.done() and speaking.set_result(None))
                request = asyncio.ensure_future(client.post("/v1/audio/speech", json={{"input": "HOLD this chunk for ever."}}))
                await speaking
                print(host.pid, flush=True)
                await request

        asyncio.run(main())
        """
    )
    server = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    engine_pid = None
    try:
        engine_pid = int(server.stdout.readline())  # printed once the engine is mid-chunk
        os.kill(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
        deadline = time.monotonic() + 15
        while engine_alive(engine_pid) and time.monotonic() < deadline:
            time.sleep(0.05)  # polling another process's state, bounded by the deadline
        assert not engine_alive(engine_pid), "the engine process outlived its server"
    finally:
        if server.poll() is None:
            server.kill()
        if engine_pid is not None and engine_alive(engine_pid):  # an orphan this test made
            os.kill(engine_pid, signal.SIGKILL)


def engine_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def test_an_engine_process_that_cannot_be_started_is_started_again_and_health_says_why(make_client, monkeypatch):
    """Starting the engine's process can fail (no file descriptor or memory left for it): the
    engine shows it restarting with the reason, pausing longer each time, and a later start
    serves; the server never waits for good on an engine that is not coming."""
    spawn, listening, refused = asyncio.create_subprocess_exec, asyncio.Event(), []

    async def spawn_refused_twice(*args, **kwargs):
        await listening.wait()  # until the test hears the engine's events
        if len(refused) < 2:
            refused.append(args)
            raise OSError(errno.EMFILE, "Too many open files")
        return await spawn(*args, **kwargs)

    monkeypatch.setattr(asyncio, "create_subprocess_exec", spawn_refused_twice)
    client = await make_client(engine=in_process_of_its_own(GatedEngine), wait_loaded=False)
    engine = engine_events(client)
    listening.set()
    deadline = time.monotonic() + 10
    while len([e for e in engine if e.get("state") == "restarting"]) < 2:
        assert time.monotonic() < deadline, f"the engine did not restart twice: {engine}"
        await asyncio.sleep(0.02)  # poll interval; the deadline decides
    health = await (await client.get("/health")).json()  # in the second pause, of 1 s
    assert health["status"] == "initializing" and health["model_loaded"] is False
    assert "the engine process could not start: [Errno 24] Too many open files; restart 2 in 1 s" in health["initialization_error"]
    await asyncio.wait_for(core_of(client).worker.wait_loaded(), 30)
    spoken = await client.post("/v1/audio/speech", json={"input": "Speaking after all."})
    assert spoken.status == 200 and (await spoken.read())[:4] == b"RIFF"
    health = await (await client.get("/health")).json()
    assert health["status"] == "healthy" and health["engine"]["error"] is None


def thread_niceness(pid: int) -> set[int]:
    """The nice value of every thread of process ``pid`` (Linux keeps one per thread, and
    psutil reads a thread's by its id)."""
    return {psutil.Process(thread.id).nice() for thread in psutil.Process(pid).threads()}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a nice value per thread is Linux's")
@pytest.mark.parametrize("nice", [None, 0, 7])
async def test_the_engine_process_runs_below_the_servers_cpu_priority_by_engine_nice(make_client, nice):
    """On busy cores the kernel serves the server's loop (the status path) before the engine:
    every thread of the engine process, onnxruntime's that spoke a request included, runs
    ENGINE_NICE (default 10) below the server, and 0 keeps them level."""
    settings = Settings(engine_threads=1) if nice is None else Settings(engine_threads=1, engine_nice=nice)
    host = engine_process("hibari", settings)
    client = await make_client(engine=host)
    resp = await client.post("/v1/audio/speech", json={"input": "Spoken below the server's priority."})
    assert resp.status == 200, await resp.text()
    server = os.getpriority(os.PRIO_PROCESS, 0)
    assert thread_niceness(host.pid) == {min(19, server + (10 if nice is None else nice))}
