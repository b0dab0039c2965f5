"""Long-text jobs are the cluster's (REDIS_URL): any node takes one, follows it, pauses,
resumes and deletes it, and serves its audio, and a job whose node is killed is taken over.

The nodes serve HTTP only; one gated engine worker speaks every chunk, so a chunk whose
text holds HOLD waits for the gate file and the test knows where the job is.
"""

from __future__ import annotations

import io
import os
import signal
import wave
from pathlib import Path

import pytest
from doubles import ScriptedEngine

from .test_cluster_status import wait_for

SENTENCES = [
    "The first sentence of the long job is right here.",
    "HOLD the second sentence until the gate opens.",
    "The third sentence follows the second one.",
    "And the fourth sentence ends the little story.",
]
FLAGS = ("--workers", "none", "--max-chunk-length", "60")
PADDING_MS = 200


def submit(node) -> str:
    body = {"input": " ".join(SENTENCES), "response_format": "wav", "silence_padding_ms": PADDING_MS}
    return node.json("POST", "/audio/speech/long", body)["job_id"]


def job(node, job_id: str) -> dict:
    return node.json("GET", f"/audio/speech/long/{job_id}")


def on_the_held_chunk(node, job_id: str) -> dict | None:
    view = job(node, job_id)
    return view if view["status"] == "processing" and view["progress"]["current_chunk"] == 1 else None


def frames_of(data: bytes) -> int:
    with wave.open(io.BytesIO(data)) as wav:
        samples = wav.readframes(wav.getnframes())
        assert max(samples) > 0, "the audio is silent"
        return wav.getnframes()


def expected_frames() -> int:
    """Every sentence once, in the worker's engine (GatedEngine: ScriptedEngine's lengths),
    with the padding between them."""
    engine = ScriptedEngine()
    speech = sum(int(len(s) * engine.seconds_per_char * engine.sample_rate) for s in SENTENCES)
    return speech + (len(SENTENCES) - 1) * int(round(PADDING_MS / 1000 * engine.sample_rate))


def job_dir(node_dir: Path, job_id: str) -> Path:
    return node_dir / "data" / "long_text" / "jobs" / job_id


async def test_any_node_follows_pauses_resumes_serves_and_deletes_a_job_another_node_took(tmp_path, start_node, start_worker):
    gate = tmp_path / "gate"
    start_worker("w1", gate)
    a, b = start_node("a", *FLAGS), start_node("b", *FLAGS)
    job_id = submit(a)
    view = wait_for(lambda: on_the_held_chunk(b, job_id), "node B sees the job on its second chunk", 60)
    assert view["progress"]["completed_chunks"] == 1

    paused = b.json("PUT", f"/audio/speech/long/{job_id}/pause")  # asked of B, run by A
    assert paused["status"] == "paused"
    assert job(a, job_id)["status"] == "paused"
    assert wait_for(lambda: a.json("GET", f"/status/requests/{job_id}")["status"] == "paused", "A's status API says paused")

    gate.touch()
    assert b.json("PUT", f"/audio/speech/long/{job_id}/resume")["status"] == "pending"
    done = wait_for(lambda: (v := job(a, job_id))["status"] == "completed" and v, "the job completes", 60)
    assert done["progress"]["completed_chunks"] == 4
    record = a.json("GET", f"/status/requests/{job_id}")
    assert record["status"] == "completed" and record["node"] == b.name  # B resumed it, so B ran it

    status, from_a = a.call("GET", f"/audio/speech/long/{job_id}/download")
    assert status == 200
    status, from_b = b.call("GET", f"/audio/speech/long/{job_id}/download")
    assert status == 200 and from_a == from_b
    assert frames_of(from_a) == expected_frames()  # every chunk once: A's first, B's other three
    for node in (a, b):
        stats = node.statistics()
        assert (stats["total_requests"], stats["completed_requests"], stats["cancelled_requests"]) == (1, 1, 0)
    assert a.json("GET", "/audio/speech/long")["total_jobs"] == b.json("GET", "/audio/speech/long")["total_jobs"] == 1

    assert job_dir(tmp_path / "a", job_id).is_dir() and job_dir(tmp_path / "b", job_id).is_dir()
    assert a.call("DELETE", f"/audio/speech/long/{job_id}?action=delete")[0] == 200
    assert b.call("GET", f"/audio/speech/long/{job_id}")[0] == 404
    wait_for(lambda: not job_dir(tmp_path / "b", job_id).exists(), "B removed its copy of the job's files")
    assert not job_dir(tmp_path / "a", job_id).exists()


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["killed", "shut-down"])
async def test_a_job_whose_node_stops_is_taken_over_from_its_last_finished_chunk(tmp_path, start_node, start_worker, how):
    """Killed, the node's lease lapses; shut down, it lets the job go and leaves it runnable:
    either way another node finishes it."""
    gate = tmp_path / "gate"
    start_worker("w1", gate)
    a, b = start_node("a", *FLAGS), start_node("b", *FLAGS)
    job_id = submit(a)
    wait_for(lambda: on_the_held_chunk(b, job_id), "the job runs its second chunk", 60)
    first = b.json("GET", f"/audio/speech/long/{job_id}/details")["chunks"][0]
    assert first["status"] == "completed"
    os.kill(a.process.pid, how)
    gate.touch()

    done = wait_for(lambda: (v := job(b, job_id))["status"] == "completed" and v, "node B takes the job over and finishes it", 60)
    assert done["progress"]["completed_chunks"] == 4
    assert b.json("GET", f"/audio/speech/long/{job_id}/details")["chunks"][0] == first  # A's, not spoken again
    status, data = b.call("GET", f"/audio/speech/long/{job_id}/download")
    assert status == 200
    assert frames_of(data) == expected_frames()  # A's first chunk, from Redis, and B's three
    record = b.json("GET", f"/status/requests/{job_id}")
    assert record["status"] == "completed" and record["node"] == b.name
    stats = b.statistics()
    assert (stats["total_requests"], stats["completed_requests"], stats["error_requests"]) == (1, 1, 0)
