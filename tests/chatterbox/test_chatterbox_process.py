"""ChatterboxTTS in the product's own engine process: the real library behind the process
boundary, with token progress, cancellation and a restart after the process is killed.

The other modules here drive the engine object in the test's process (to spy on the
model); this one goes through EngineProcess exactly as ``chatterbox-status serve`` does.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
import pytest_asyncio
from chatterbox_support.harness import TERMINAL, RequestEvents, core_of, decode_wav, serve

from chatterbox_status.supervisor import EngineFacts, EngineProcess, EngineSpec

pytestmark = pytest.mark.asyncio(loop_scope="module")

TEXT = "Hello there, this is the tiny model speaking."
TIMEOUT = 300


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def english_process(checkpoint, tmp_path_factory):
    spec = EngineSpec("chatterbox_support.harness:TinyChatterboxEngine", {"kind": "chatterbox", "checkpoint_dir": str(checkpoint("chatterbox"))})
    facts = EngineFacts("chatterbox", 24_000, "auto", True, {"en": "English"}, None)
    host = EngineProcess(spec, facts, threads=1)
    async with serve(host, tmp_path_factory.mktemp("process")) as client:
        yield client


async def test_speech_with_token_progress_comes_from_the_engine_process(english_process, every_progress_event):
    client = english_process
    watch = RequestEvents(client)
    watch.watch("process-speech-1")
    response = await client.post("/v1/audio/speech", json={"input": TEXT, "seed": 3}, headers={"X-Request-ID": "process-speech-1"})
    assert response.status == 200
    rate, channels, frames = decode_wav(await response.read())
    assert (rate, channels) == (24_000, 1) and frames > 0
    progress = [e["progress_percentage"] for e in watch.of("process-speech-1", "progress")]
    assert len(progress) >= 5 and progress == sorted(progress)  # per token, through the pipe
    memory = (await (await client.get("/memory")).json())["memory_info"]
    assert memory["engine_memory_mb"] > 100  # torch and the model live in the engine process
    assert core_of(client).host.pid != os.getpid()


async def test_cancel_mid_chunk_crosses_the_process_boundary(english_process):
    client = english_process
    watch = RequestEvents(client)
    watch.watch("process-cancel-1")
    request = asyncio.ensure_future(
        client.post("/v1/audio/speech", json={"input": TEXT}, headers={"X-Request-ID": "process-cancel-1"})
    )
    first = await asyncio.wait_for(watch.first_progress("process-cancel-1"), TIMEOUT)
    assert first.data["status"] == "generating_audio"
    pid = core_of(client).host.pid
    assert (await client.delete("/v1/audio/speech/process-cancel-1")).status == 200
    response = await asyncio.wait_for(request, TIMEOUT)
    # A token or a flow-matching step later the engine stopped: S3Gen takes seconds a chunk
    # on this CPU, so a cancel that did not reach it would have let the chunk finish first.
    assert response.status == 409
    assert await watch.ended("process-cancel-1") == "cancelled"
    assert core_of(client).host.pid == pid


async def test_a_killed_engine_process_fails_its_request_and_a_new_one_serves_the_next(english_process):
    client = english_process
    watch = RequestEvents(client)
    watch.watch("process-kill-1")
    request = asyncio.ensure_future(
        client.post("/v1/audio/speech", json={"input": TEXT}, headers={"X-Request-ID": "process-kill-1"})
    )
    await asyncio.wait_for(watch.first_progress("process-kill-1"), TIMEOUT)
    pid = core_of(client).host.pid
    os.kill(pid, signal.SIGKILL)
    response = await asyncio.wait_for(request, TIMEOUT)
    assert response.status == 500
    assert "killed by SIGKILL" in (await response.json())["error"]["message"]
    assert len([e for e in watch.of("process-kill-1", "status") if e["status"] in TERMINAL]) == 1
    after = await asyncio.wait_for(client.post("/v1/audio/speech", json={"input": "A new engine speaks."}), TIMEOUT)
    assert after.status == 200
    assert core_of(client).host.pid != pid


async def test_a_streamed_chunk_speaks_from_its_first_window_and_adds_up_to_the_whole_chunk(english_process):
    """Speech tokens are vocoded in windows as T3 samples them: the first audio reaches the
    client before the chunk is done, and the streamed samples are as many as the whole chunk's."""
    client = english_process
    core = core_of(client)
    finalizing: dict[str, float] = {}

    def listen(event) -> None:
        if event.data.get("request_id") == "process-window-1" and event.data.get("status") == "finalizing":
            finalizing.setdefault("at", time.perf_counter())

    core.bus.add_listener(listen)
    body = {"input": TEXT, "response_format": "pcm", "seed": 3}
    response = await client.post("/v1/audio/speech/stream", json=body, headers={"X-Request-ID": "process-window-1"})
    assert response.status == 200
    first_at, streamed = None, b""
    async for piece in response.content.iter_any():
        first_at = first_at or time.perf_counter()
        streamed += piece
    assert first_at is not None and first_at < finalizing["at"]  # spoken before the chunk ended
    whole = await asyncio.wait_for(client.post("/v1/audio/speech", json=body), TIMEOUT)
    assert whole.status == 200
    assert len(streamed) == len(await whole.read()) > 0  # the same tokens, the same samples


async def test_keep_alive_zero_unloads_the_model_and_all_its_memory_goes_back(english_process):
    """The real library's memory (torch, the model, its caches) leaves with the engine
    process; the next request loads the model again."""
    client = english_process
    core = core_of(client)

    async def figures() -> dict:
        return (await (await client.get("/memory")).json())["memory_info"]

    unloaded: asyncio.Future = asyncio.get_running_loop().create_future()
    core.bus.add_listener(
        lambda e: unloaded.done() or (e.type == "engine" and e.data.get("state") == "unloaded" and unloaded.set_result(e.data))
    )
    loaded = await figures()
    pid = core.host.pid
    response = await asyncio.wait_for(client.post("/v1/audio/speech", json={"input": TEXT, "keep_alive": 0}), TIMEOUT)
    assert response.status == 200
    assert "keep-alive (0 s)" in (await asyncio.wait_for(unloaded, TIMEOUT))["unload_reason"]
    after = await figures()
    print(
        f"\nchatterbox (tiny checkpoint) loaded: {loaded['cpu_memory_mb']} MB (server {loaded['server_memory_mb']}, "
        f"engine {loaded['engine_memory_mb']}); unloaded: {after['cpu_memory_mb']} MB (server {after['server_memory_mb']}, "
        f"engine {after['engine_memory_mb']})"
    )
    assert loaded["engine_memory_mb"] > 100 and after["engine_memory_mb"] == 0
    assert after["cpu_memory_mb"] == after["server_memory_mb"]  # nothing of the engine is left
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    health = await (await client.get("/health")).json()
    assert health["status"] == "healthy" and health["model_loaded"] is False

    again = await asyncio.wait_for(client.post("/v1/audio/speech", json={"input": "Loaded again.", "keep_alive": "5m"}), TIMEOUT)
    assert again.status == 200 and core.host.pid not in (None, pid)
    assert (await (await client.get("/health")).json())["model_loaded"] is True
