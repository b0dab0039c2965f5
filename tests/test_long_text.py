"""Long-text jobs (/audio/speech/long) on the scripted engine: routes, pause/resume,
cancel/retry, priority of interactive requests, limits, retention, durability."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import io
import itertools
import logging
import re
import sqlite3
import struct
import time
import wave
from datetime import datetime

import aiohttp
import av
import numpy as np
import pytest
from conftest import build_app, core_of, record_events
from doubles import ScriptedEngine
from helpers import wav_tone
from test_faults import RecordingHost

from chatterbox_status import pipeline
from chatterbox_status.api.long_text import LONG_TEXT
from chatterbox_status.config import Settings, SettingsError
from chatterbox_status.engine_pool import WARM_UP_TEXT
from chatterbox_status.longtext import files
from chatterbox_status.longtext.config import LongTextConfig
from chatterbox_status.longtext.manager import MB, LongTextManager
from chatterbox_status.longtext.store import CANCELLED, PAUSED, JobStore
from chatterbox_status.pipeline import GENERATION_SHARE, PRIOR_WEIGHT_CHARS
from chatterbox_status.planning import SPEECH_SECONDS_PER_CHAR
from chatterbox_status.tracker import THROUGHPUT_ALPHA

SENTENCES = [
    "The first sentence of the long text is here.",
    "A second sentence follows the first one closely.",
    "Then comes a third sentence with a few more words.",
    "And the fourth sentence ends this short story.",
]
TEXT = " ".join(SENTENCES)
CHUNK = 55  # every sentence is its own chunk


def manager_of(client) -> LongTextManager:
    return client.server.app[LONG_TEXT]


async def submit(client, text=TEXT, prefix="", **fields):
    body = {"input": text, "response_format": "wav", "chunk_size": CHUNK, **fields}
    resp = await client.post(f"{prefix}/audio/speech/long", json=body)
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def status_of(client, job_id):
    resp = await client.get(f"/audio/speech/long/{job_id}")
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def finished(client, job_id):
    await asyncio.wait_for(manager_of(client).wait(job_id), 30)
    return await status_of(client, job_id)


def turns_asked(core) -> asyncio.Queue:
    """A spy on the seam: each time a job asks for its turn at the engine (once before each
    chunk), its count from 0 goes into the queue."""
    asks: asyncio.Queue = asyncio.Queue()
    turn, asked = core.worker.turn, itertools.count()

    def spy(*args):
        asks.put_nowait(next(asked))
        return turn(*args)

    core.worker.turn = spy
    return asks


async def in_thread(fn, *args):
    return await asyncio.to_thread(fn, *args)


def wav_frames(data: bytes) -> tuple[int, np.ndarray]:
    """Sample rate and samples of a download, which is mono 16-bit WAV."""
    with wave.open(io.BytesIO(data)) as w:
        assert (w.getnchannels(), w.getsampwidth()) == (1, 2)
        return w.getframerate(), np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")


def expected_frames(engine: ScriptedEngine, chunks: list[str], padding_ms: int) -> int:
    per_chunk = [int(len(c) * engine.seconds_per_char * engine.sample_rate) for c in chunks]
    return sum(per_chunk) + (len(chunks) - 1) * int(round(padding_ms / 1000 * engine.sample_rate))


def spoken(engine: ScriptedEngine) -> list[str]:
    """What the engine spoke, less its warm-up."""
    return [text for text in engine.calls if text != WARM_UP_TEXT]


def error_of(body: dict) -> dict:
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


# --- the whole route set -----------------------------------------------------------


async def test_submit_poll_download_with_range_and_manage(make_long):
    engine = ScriptedEngine()
    engine.seconds_per_char = 0.0207  # chunks of any number of samples, so durations have more than 3 decimals
    client = await make_long(engine, silence_padding_ms=100)
    submitted = time.monotonic()
    created = await submit(client, display_name="story")
    job_id = created["job_id"]
    assert created["status"] == "pending"
    assert created["total_chunks"] == 4
    assert created["status_url"] == f"/audio/speech/long/{job_id}"
    assert created["sse_url"] == f"/audio/speech/long/{job_id}/sse"

    view = await finished(client, job_id)
    took_ms = 1000 * (time.monotonic() - submitted)
    assert view["status"] == "completed"
    assert 0 <= view["metadata"]["total_processing_time_ms"] <= took_ms
    assert view["progress"]["overall_progress"] == 100.0
    assert view["progress"]["completed_chunks"] == 4 and view["progress"]["current_chunk"] is None
    assert view["download_url"] == f"/audio/speech/long/{job_id}/download"
    assert (view["can_pause"], view["can_resume"], view["can_cancel"]) == (False, False, False)
    assert view["metadata"]["display_name"] == "story"
    assert spoken(engine) == SENTENCES

    resp = await client.get(view["download_url"])
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "audio/wav"
    whole = await resp.read()
    rate, pcm = wav_frames(whole)
    assert rate == engine.sample_rate
    assert len(pcm) == expected_frames(engine, SENTENCES, 100)
    assert view["metadata"]["output_size_bytes"] == len(whole)
    assert view["metadata"]["output_duration_seconds"] == round(len(pcm) / rate, 3) != round(len(pcm) / rate, 4)
    completed_at = view["metadata"]["processing_completed_at"]
    assert completed_at is not None and view["metadata"]["completion_timestamp"] == completed_at
    started_at = view["metadata"]["processing_started_at"]
    assert started_at is not None and started_at <= completed_at

    resp = await client.get(f"/v1/audio/speech/long/{job_id}/download", headers={"Range": "bytes=10-109"})
    assert resp.status == 206
    assert await resp.read() == whole[10:110]
    assert resp.headers["Content-Range"] == f"bytes 10-109/{len(whole)}"

    details = await (await client.get(f"/audio/speech/long/{job_id}/details")).json()
    assert [c["text"] for c in details["chunks"]] == SENTENCES
    assert all(c["status"] == "completed" for c in details["chunks"])
    assert all((files.job_dir(manager_of(client).root, job_id) / c["audio_file"]).is_file() for c in details["chunks"])
    assert [c["duration_ms"] for c in details["chunks"]] == [round(1000 * len(engine.tone(s)) / engine.sample_rate) for s in SENTENCES]
    assert details["input_text"] == TEXT
    for chunk in details["chunks"]:
        started, ended = when(chunk["processing_started_at"]), when(chunk["processing_completed_at"])
        assert started is not None and ended is not None and started <= ended <= when(completed_at)

    resp = await client.patch(f"/audio/speech/long/{job_id}", json={"display_name": "renamed", "tags": [" a ", "b"]})
    assert resp.status == 200, await resp.text()
    meta = (await status_of(client, job_id))["metadata"]
    assert (meta["display_name"], meta["tags"]) == ("renamed", ["a", "b"])

    second = (await submit(client, prefix="/v1", text="Only one sentence here."))["job_id"]
    await finished(client, second)
    listing = await (await client.get("/audio/speech/long?limit=1")).json()
    assert [j["job_id"] for j in listing["jobs"]] == [second]  # newest first
    assert listing["total_jobs"] == 2 and listing["completed_jobs"] == 2
    listing = await (await client.get("/v1/audio/speech/long?limit=1&offset=1")).json()
    assert [j["job_id"] for j in listing["jobs"]] == [job_id]
    listing = await (await client.get("/audio/speech/long?status=failed")).json()
    assert listing["jobs"] == []
    history = await (await client.get("/audio/speech/long-history")).json()
    assert {j["job_id"] for j in history["jobs"]} == {job_id, second}
    stats = await (await client.get("/v1/audio/speech/long-history/stats")).json()
    assert stats["total_jobs"] == 2 and stats["completed_jobs"] == 2 and stats["success_rate_percentage"] == 100.0
    assert stats["total_audio_duration_seconds"] > 0 and stats["most_used_voice"] == "alloy"

    job_dir = files.job_dir(manager_of(client).root, job_id)
    assert (job_dir / "output.wav").is_file()
    resp = await client.delete(f"/audio/speech/long/{job_id}?action=delete")
    assert resp.status == 200
    assert not job_dir.exists()
    assert (await client.get(f"/audio/speech/long/{job_id}")).status == 404

    resp = await client.post("/audio/speech/long/bulk", json={"job_ids": [second, "nope-nope"], "action": "delete", "confirm": True})
    bulk = await resp.json()
    assert (bulk["success_count"], bulk["failed_count"], bulk["failed_jobs"]) == (1, 1, ["nope-nope"])
    assert (await client.get(f"/audio/speech/long/{second}")).status == 404


DOWNLOAD_TYPES = {"pcm": "audio/pcm", "flac": "audio/flac", "mp3": "audio/mpeg", "opus": "audio/ogg", "aac": "audio/aac"}


def decoded(data: bytes) -> tuple[int, np.ndarray]:
    """Sample rate and mono samples of a compressed file, via PyAV."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        assert stream.channels == 1
        return stream.rate, np.concatenate([frame.to_ndarray().reshape(-1) for frame in container.decode(stream)])


@pytest.mark.parametrize("response_format", list(DOWNLOAD_TYPES))
async def test_a_job_in_each_format_downloads_as_a_finished_file_of_the_same_audio(make_long, response_format):
    """A job's audio is encoded piece by piece into its file. The download is a whole file of
    its format holding what the same job gives in WAV: the same samples for pcm and flac (whose
    header states the length and checksum, as players read them), the same length within a
    codec frame for the lossy formats (Opus's last page ending exactly where the audio does)."""
    client = await make_long(ScriptedEngine(), silence_padding_ms=100)
    reference_job = (await submit(client))["job_id"]
    job_id = (await submit(client, response_format=response_format))["job_id"]
    assert (await finished(client, reference_job))["status"] == "completed"
    assert (await finished(client, job_id))["status"] == "completed"
    rate, reference = wav_frames(await (await client.get(f"/audio/speech/long/{reference_job}/download")).read())
    resp = await client.get(f"/audio/speech/long/{job_id}/download")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == DOWNLOAD_TYPES[response_format]
    data = await resp.read()
    seconds = len(reference) / rate
    if response_format == "pcm":
        assert data == reference.astype("<i2").tobytes()
        return
    output_rate, samples = decoded(data)
    assert output_rate == (48_000 if response_format == "opus" else rate)
    if response_format == "flac":
        assert np.array_equal(samples, reference)
        assert data[:4] == b"fLaC" and data[4] & 0x7F == 0  # the first metadata block is STREAMINFO
        info = data[8:42]
        packed = int.from_bytes(info[10:18], "big")
        assert (packed >> 44, ((packed >> 41) & 7) + 1, ((packed >> 36) & 31) + 1, packed & (2**36 - 1)) == (rate, 1, 16, len(reference))
        assert info[18:34] == hashlib.md5(reference.astype("<i2").tobytes()).digest()
        return
    frame = {"mp3": 576 / rate, "aac": 1024 / rate, "opus": 0.02}[response_format]
    assert seconds - 0.01 <= len(samples) / output_rate <= seconds + 0.05 + frame
    if response_format == "opus":
        pages = [offset for offset in range(len(data) - 3) if data[offset : offset + 4] == b"OggS"]
        head = data.index(b"OpusHead")
        granule, pre_skip = struct.unpack_from("<q", data, pages[-1] + 6)[0], struct.unpack_from("<H", data, head + 10)[0]
        assert granule - pre_skip == round(seconds * 48_000)


async def test_history_statistics_add_up_what_the_job_views_show(make_long):
    """An empty history's statistics are zeros and no voice. Over two completed jobs in one
    voice and a failed one in another: the counts, the success rate to a tenth, the completed
    jobs' audio seconds, bytes and mean processing time as their views give them, the voice used
    most, and the jobs per month of their creation."""
    engine = ScriptedEngine(fail_on="Failing", work_seconds_per_char=0.004)  # chunks take some 0.2 s
    engine.seconds_per_char = 0.0207  # audio durations with more than 3 decimals
    client = await make_long(engine)
    stats = await (await client.get("/audio/speech/long-history/stats")).json()
    assert stats == {
        "total_jobs": 0, "completed_jobs": 0, "failed_jobs": 0, "total_audio_duration_seconds": 0.0, "total_storage_bytes": 0,
        "average_processing_time_seconds": 0.0, "success_rate_percentage": 0.0, "most_used_voice": None, "jobs_by_month": {},
    }
    views = []
    for text, voice in [(TEXT, "nova"), (" ".join(SENTENCES[:2]), "nova"), ("Failing at once.", "alloy")]:
        views.append(await finished(client, (await submit(client, text=text, voice=voice))["job_id"]))
    assert [v["status"] for v in views] == ["completed", "completed", "failed"]
    done = [v["metadata"] for v in views[:2]]
    months: dict[str, int] = {}
    for view in views:
        month = view["metadata"]["created_at"][:7]  # YYYY-MM, in UTC
        months[month] = months.get(month, 0) + 1
    stats = await (await client.get("/v1/audio/speech/long-history/stats")).json()
    assert stats == {
        "total_jobs": 3,
        "completed_jobs": 2,
        "failed_jobs": 1,
        "total_audio_duration_seconds": round(sum(m["output_duration_seconds"] for m in done), 3),
        "total_storage_bytes": sum(m["output_size_bytes"] for m in done),
        "average_processing_time_seconds": round(sum(m["total_processing_time_ms"] for m in done) / 2 / 1000, 3),
        "success_rate_percentage": 66.7,
        "most_used_voice": "nova",
        "jobs_by_month": months,
    }
    assert stats["average_processing_time_seconds"] >= 0.5  # far enough from 0 that every digit counts
    assert stats["total_audio_duration_seconds"] != round(stats["total_audio_duration_seconds"])


async def test_clear_history_removes_finished_jobs_only_when_confirmed(make_long):
    client = await make_long(ScriptedEngine())
    job_id = (await submit(client))["job_id"]
    await finished(client, job_id)
    resp = await client.delete("/audio/speech/long/history")
    assert resp.status == 400
    assert error_of(await resp.json())["param"] == "confirm"
    resp = await client.delete("/v1/audio/speech/long/history?confirm=true")
    assert (await resp.json())["cleared_count"] == 1
    assert (await client.get(f"/audio/speech/long/{job_id}")).status == 404


async def test_jobs_show_up_on_the_bus_like_requests(make_long):
    engine = ScriptedEngine()
    client = await make_long(engine)
    seen = []
    core_of(client).bus.add_listener(lambda e: seen.append(e) if e.type == "status" else None)
    job_id = (await submit(client))["job_id"]
    await finished(client, job_id)
    mine = [e.data for e in seen if e.data["request_id"] == job_id]
    assert mine[0]["status"] == "queued"
    assert mine[0]["durable"] is True  # a long-text job outlives its node: another must not fail it
    generating = [(d["current_chunk"], d["total_chunks"]) for d in mine if d["status"] == "generating_audio"]
    assert generating == [(1, 4), (2, 4), (3, 4), (4, 4)]
    ending = [(d["status"], d["current_step"], d["progress_percentage"]) for d in mine if d["status"] in ("concatenating", "finalizing")]
    assert ending == [("concatenating", "Combining 4 audio chunks", 95.0), ("finalizing", "Converting to wav", 97.5)]
    assert mine[-1]["status"] == "completed" and mine[-1]["progress_percentage"] == 100.0
    record = core_of(client).tracker.find(job_id)
    assert record is not None and record.status == "completed"
    response = await client.post("/v1/audio/speech", json={"input": "A request ends with its node."}, headers={"X-Request-ID": "not-durable"})
    assert response.status == 200
    queued = [e.data for e in seen if e.data["request_id"] == "not-durable" and e.data["status"] == "queued"]
    assert len(queued) == 1 and "durable" not in queued[0]


async def test_sse_streams_progress_then_completed(make_long):
    engine = ScriptedEngine()
    client = await make_long(engine, hold=True)
    job_id = (await submit(client))["job_id"]
    await in_thread(engine.wait_started)
    resp = await client.get(f"/v1/audio/speech/long/{job_id}/sse")
    assert resp.status == 200
    engine.release(10)
    body = (await asyncio.wait_for(resp.read(), 30)).decode()
    events = [line.split(":", 1)[1].strip() for line in body.splitlines() if line.startswith("event:")]
    assert events[0] == "progress" and events[-1] == "completed"
    assert events.count("progress") >= 4


# --- bad input ------------------------------------------------------------------------


async def test_bad_input_is_a_clear_error_and_writes_nothing(make_long):
    engine = ScriptedEngine()
    client = await make_long(engine, max_length=300)
    assert not manager_of(client).root.exists()  # a server that never took a job wrote nothing
    cases = [
        ({"input": "   "}, "input"),
        ({"input": "x" * 301}, "input"),
        ({"voice": "alloy"}, "input"),
        ({"input": 5}, "input"),
        ({"input": TEXT, "response_format": "xyz"}, "response_format"),
        ({"input": TEXT, "chunk_size": 5}, "chunk_size"),
        ({"input": TEXT, "voice": "no-such-voice"}, "voice"),
        ({"input": TEXT, "silence_padding_ms": -1}, "silence_padding_ms"),
    ]
    for body, param in cases:
        resp = await client.post("/audio/speech/long", json=body)
        assert resp.status in (400, 404), (body, resp.status)
        assert error_of(await resp.json())["param"] == param, body
    resp = await client.post("/audio/speech/long", data=b"{not json", headers={"Content-Type": "application/json"})
    assert resp.status == 400
    resp = await client.post("/audio/speech/long", data=b"[1]", headers={"Content-Type": "application/json"})
    assert resp.status == 400
    resp = await client.post("/audio/speech/long", data=b"input=hi", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert resp.status == 415
    too_long = await client.post("/audio/speech/long", json={"input": "x" * 301})
    assert error_of(await too_long.json())["code"] == "input_too_long"

    listing = await (await client.get("/audio/speech/long")).json()
    assert listing["total_jobs"] == 0
    assert not (manager_of(client).root / "jobs").exists()
    assert spoken(engine) == []

    for method, path in [
        ("GET", "/audio/speech/long/unknown1"),
        ("GET", "/audio/speech/long/unknown1/details"),
        ("GET", "/audio/speech/long/unknown1/download"),
        ("GET", "/audio/speech/long/unknown1/sse"),
        ("PUT", "/audio/speech/long/unknown1/pause"),
        ("PUT", "/v1/audio/speech/long/unknown1/resume"),
        ("POST", "/audio/speech/long/unknown1/retry"),
        ("DELETE", "/audio/speech/long/unknown1"),
        ("DELETE", "/audio/speech/long/unknown1?action=delete"),
    ]:
        resp = await client.request(method, path)
        assert resp.status == 404, (method, path)
        error = error_of(await resp.json())
        assert (error["type"], error["message"], error["param"]) == ("not_found_error", "Job unknown1 not found", "job_id"), (method, path)
    resp = await client.patch("/audio/speech/long/unknown1", json={"display_name": "x"})
    assert resp.status == 404

    for query in ("status=bogus", "limit=0", "limit=abc", "offset=-1"):
        resp = await client.get(f"/audio/speech/long?{query}")
        assert resp.status == 400, query


async def test_actions_the_state_does_not_allow_are_409(make_long):
    engine = ScriptedEngine()
    client = await make_long(engine, hold=True)
    job_id = (await submit(client))["job_id"]
    await in_thread(engine.wait_started)
    resp = await client.get(f"/audio/speech/long/{job_id}/download")
    assert resp.status == 409
    assert "not completed" in error_of(await resp.json())["message"]
    for method, action in [("PUT", "resume"), ("POST", "retry")]:
        resp = await client.request(method, f"/audio/speech/long/{job_id}/{action}")
        assert resp.status == 409, action
    engine.release(10)
    await finished(client, job_id)
    for method, action in [("PUT", "resume"), ("PUT", "pause"), ("POST", "retry")]:
        resp = await client.request(method, f"/audio/speech/long/{job_id}/{action}")
        assert resp.status == 409, action
        error = error_of(await resp.json())
        assert error["code"] == "invalid_job_state"
        assert error["message"].startswith(f"Cannot {action} job in completed state"), error
    resp = await client.delete(f"/audio/speech/long/{job_id}")
    assert resp.status == 409
    assert error_of(await resp.json())["message"] == "Cannot cancel job in completed state"
    resp = await client.delete(f"/audio/speech/long/{job_id}?action=explode")
    assert resp.status == 400
    resp = await client.patch(f"/audio/speech/long/{job_id}", json={"display_name": 5})
    assert resp.status == 400
    resp = await client.patch(f"/audio/speech/long/{job_id}", json={"tags": ["x" * 51]})
    assert resp.status == 400
    resp = await client.post("/audio/speech/long/bulk", json={"job_ids": [job_id], "action": "delete", "confirm": False})
    assert resp.status == 400
    assert (await status_of(client, job_id))["status"] == "completed"


# --- pause, resume, cancel, retry ----------------------------------------------------


async def test_pause_then_resume_finishes_the_job(make_long):
    engine = ScriptedEngine()
    client = await make_long(engine, hold=True, silence_padding_ms=0)
    job_id = (await submit(client))["job_id"]
    assert await in_thread(engine.wait_started) == SENTENCES[0]
    engine.release(1)
    assert await in_thread(engine.wait_started) == SENTENCES[1]
    view = await status_of(client, job_id)
    assert view["status"] == "processing" and view["can_pause"] and not view["can_resume"]
    assert view["progress"]["current_chunk"] == 1  # the second chunk, counted from 0 as in the details
    details = await (await client.get(f"/audio/speech/long/{job_id}/details")).json()
    assert [c["status"] for c in details["chunks"]] == ["completed", "processing", "pending", "pending"]

    resp = await client.put(f"/audio/speech/long/{job_id}/pause")
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["status"] == "paused"
    view = await status_of(client, job_id)
    assert view["status"] == "paused" and view["can_resume"] and not view["can_pause"]
    assert view["progress"]["completed_chunks"] == 1
    assert view["progress"]["current_chunk"] is None and view["metadata"]["processing_paused_at"] is not None
    assert core_of(client).tracker.find(job_id).status == "paused"  # not running any more
    assert not core_of(client).tracker.is_processing
    assert not manager_of(client).is_running(await manager_of(client).get(job_id))

    resp = await client.put(f"/v1/audio/speech/long/{job_id}/resume")
    assert resp.status == 200
    assert (await resp.json())["status"] == "pending"
    assert (await status_of(client, job_id))["metadata"]["processing_paused_at"] is None  # not paused any more
    engine.release(10)
    view = await finished(client, job_id)
    assert view["status"] == "completed"
    # The interrupted chunk was spoken again; the finished one was not.
    assert spoken(engine) == [SENTENCES[0], SENTENCES[1], SENTENCES[1], SENTENCES[2], SENTENCES[3]]
    _, pcm = wav_frames(await (await client.get(f"/audio/speech/long/{job_id}/download")).read())
    assert len(pcm) == expected_frames(engine, SENTENCES, 0)


async def test_cancelled_job_retries_from_its_last_finished_chunk(make_long):
    engine = ScriptedEngine()
    client = await make_long(engine, hold=True)
    job_id = (await submit(client))["job_id"]
    await in_thread(engine.wait_started)
    engine.release(2)
    assert await in_thread(engine.wait_started) == SENTENCES[1]
    assert await in_thread(engine.wait_started) == SENTENCES[2]
    resp = await client.delete(f"/audio/speech/long/{job_id}")
    assert resp.status == 200
    view = await status_of(client, job_id)
    assert view["status"] == "cancelled" and view["progress"]["completed_chunks"] == 2
    assert not view["can_cancel"]
    assert view["progress"]["current_chunk"] is None and view["metadata"]["processing_paused_at"] is None  # never paused

    calls_before = len(spoken(engine))
    resp = await client.post(f"/audio/speech/long/{job_id}/retry", json={})
    assert resp.status == 200, await resp.text()
    assert ((await resp.json())["job_id"], (await resp.json())["status"]) == (job_id, "pending")
    # It starts at the share of the work its two finished chunks did, by their text.
    record = await (await client.get(f"/status/requests/{job_id}")).json()
    done = len(SENTENCES[0]) + len(SENTENCES[1])
    assert record["progress"]["progress_percentage"] == round(GENERATION_SHARE * done / sum(map(len, SENTENCES)), 1)
    engine.release(10)
    view = await finished(client, job_id)
    assert view["status"] == "completed" and view["metadata"]["retry_count"] == 1
    assert spoken(engine)[calls_before:] == SENTENCES[2:]


async def test_failed_job_reports_its_error_and_retries(make_long):
    engine = ScriptedEngine(fail_on="third")
    client = await make_long(engine)
    job_id = (await submit(client))["job_id"]
    view = await finished(client, job_id)
    assert view["status"] == "failed"
    assert "scripted failure" in view["progress"]["error"]
    assert view["progress"]["completed_chunks"] == 2
    assert view["progress"]["current_chunk"] is None  # no chunk is being generated any more
    engine.fail_on = None
    resp = await client.post(f"/v1/audio/speech/long/{job_id}/retry")
    assert resp.status == 200, await resp.text()
    view = await finished(client, job_id)
    assert view["status"] == "completed" and view["metadata"]["error"] is None
    assert spoken(engine) == SENTENCES[:3] + SENTENCES[2:]


async def test_a_failed_job_is_logged_once_by_its_id_and_nothing_else_is_an_error(make_long, caplog):
    """The operator's log names the job whose engine raised, once, and holds no other error:
    no asyncio "exception was never retrieved" for a failed or cancelled job's result, as it
    ends or once it is gone."""
    engine = ScriptedEngine(fail_on="third")
    client = await make_long(engine)
    job_id = (await submit(client))["job_id"]
    assert (await finished(client, job_id))["status"] == "failed"
    engine.hold()
    cancelled = (await submit(client, text="A job cancelled while it speaks."))["job_id"]
    await in_thread(engine.wait_started)
    assert (await client.delete(f"/audio/speech/long/{cancelled}")).status == 200
    engine.release(10)
    await client.close()
    gc.collect()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [(r.name, r.getMessage()) for r in errors] == [("chatterbox_status.pipeline", f"request {job_id} failed")]


def disk_full() -> sqlite3.OperationalError:
    """SQLite's own error for a full disk, its code included: the store reads the code."""
    error = sqlite3.OperationalError("database or disk is full")
    error.sqlite_errorcode, error.sqlite_errorname = sqlite3.SQLITE_FULL, "SQLITE_FULL"
    return error


async def test_a_failure_that_cannot_be_stored_is_logged_and_still_ends_the_job_in_error(make_long, caplog, monkeypatch):
    """The engine raises, and the disk is full when the job's failure is written: the operator's
    log says so under the job's id, with the storage error, and the status API still ends the
    request in error with the engine's message (it does not stay generating)."""
    update = JobStore.update

    def full_when_failing(self, job_id, **fields):
        if fields.get("status") == "failed":
            raise disk_full()
        return update(self, job_id, **fields)

    monkeypatch.setattr(JobStore, "update", full_when_failing)
    engine = ScriptedEngine(fail_on="third")
    client = await make_long(engine)
    job_id = (await submit(client))["job_id"]
    await asyncio.wait_for(manager_of(client).wait(job_id), 30)
    record = await (await client.get(f"/status/requests/{job_id}")).json()
    assert record["status"] == "error" and "scripted failure" in record["error_message"], record
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and r.name == "chatterbox_status.pipeline"]
    assert [r.getMessage() for r in errors] == [f"request {job_id} failed", f"request {job_id}: its failure could not be stored"]
    assert "out of space" in str(errors[1].exc_info[1])


async def test_long_text_jobs_count_toward_the_periodic_memory_cleanup(make_long):
    """MEMORY_CLEANUP_INTERVAL=1: the engine frees its memory after each long-text job too."""
    host = RecordingHost(ScriptedEngine())
    client = await make_long(host, settings={"memory_cleanup_interval": 1})
    for text in ("A first job of one sentence.", "And a second job."):
        job_id = (await submit(client, text=text))["job_id"]
        assert (await finished(client, job_id))["status"] == "completed"
    assert host.releases == [False, False]


# --- scheduling ------------------------------------------------------------------------


INTERACTIVE = ["Quick interactive words come first here.", "Then a second interactive chunk follows."]  # two chunks at 45


async def test_an_interactive_request_runs_before_the_jobs_next_chunk(make_long):
    """A request posted while a job's chunk runs gets the engine for all of its chunks
    before the job's next chunk starts: the job delays it by one chunk at most."""
    engine = ScriptedEngine()
    client = await make_long(engine, hold=True, settings={"max_chunk_length": 45})
    core = core_of(client)
    events = []
    core.bus.add_listener(lambda e: events.append(e) if e.type == "status" else None)
    asks = turns_asked(core)
    job_id = (await submit(client))["job_id"]
    assert await asyncio.wait_for(asks.get(), 10) == 0
    assert await in_thread(engine.wait_started) == SENTENCES[0]

    queued = asyncio.Event()
    core.bus.add_listener(lambda e: queued.set() if e.type == "status" and e.data["request_id"] == "interactive-1" else None)
    speech = asyncio.create_task(
        client.post("/v1/audio/speech", json={"input": " ".join(INTERACTIVE)}, headers={"X-Request-ID": "interactive-1"})
    )
    await asyncio.wait_for(queued.wait(), 10)
    engine.release(1)  # the job's chunk 1 ends; the interactive request's chunk 1 takes the engine
    assert await in_thread(engine.wait_started) == INTERACTIVE[0]
    assert await asyncio.wait_for(asks.get(), 10) == 1  # the job now wants the engine for chunk 2
    engine.release(20)
    resp = await asyncio.wait_for(speech, 30)
    assert resp.status == 200
    await finished(client, job_id)

    def first(request_id, status, chunk=None):
        return next(
            e for e in events
            if e.data["request_id"] == request_id and e.data["status"] == status and (chunk is None or e.data["current_chunk"] == chunk)
        )

    interactive_start = first("interactive-1", "generating_audio")
    interactive_done = first("interactive-1", "completed")
    job_chunk_2 = first(job_id, "generating_audio", 2)
    assert interactive_start.id < interactive_done.id < job_chunk_2.id
    assert interactive_start.data["timestamp"] <= interactive_done.data["timestamp"] <= job_chunk_2.data["timestamp"]
    assert spoken(engine) == [SENTENCES[0], *INTERACTIVE, *SENTENCES[1:]]


async def test_a_job_waiting_for_its_turn_behind_a_request_is_cancelled_at_once(make_long):
    """The job's chunk 1 ends while an interactive request holds the engine: the job waits
    for its turn. Cancelling it then ends it right away (the DELETE answers, the job shows
    cancelled after one chunk), not once the request is done with the engine."""
    engine = ScriptedEngine()
    client = await make_long(engine, hold=True, settings={"max_chunk_length": 45})
    try:
        core = core_of(client)
        asks = turns_asked(core)
        job_id = (await submit(client))["job_id"]
        await asyncio.wait_for(asks.get(), 10)
        assert await in_thread(engine.wait_started) == SENTENCES[0]
        queued = asyncio.Event()
        core.bus.add_listener(lambda e: queued.set() if e.type == "status" and e.data["request_id"] == "in-the-way" else None)
        speech = asyncio.create_task(
            client.post("/v1/audio/speech", json={"input": " ".join(INTERACTIVE)}, headers={"X-Request-ID": "in-the-way"})
        )
        await asyncio.wait_for(queued.wait(), 10)
        engine.release(1)  # the job's chunk 1 ends; the request's first chunk takes the engine and is held
        assert await in_thread(engine.wait_started) == INTERACTIVE[0]
        await asyncio.wait_for(asks.get(), 10)  # the job waits for its turn for chunk 2

        resp = await asyncio.wait_for(client.delete(f"/audio/speech/long/{job_id}"), 10)
        assert resp.status == 200
        view = await status_of(client, job_id)
        assert view["status"] == "cancelled" and view["progress"]["completed_chunks"] == 1
        assert not speech.done()  # the request still holds the engine
        engine.release(20)
        assert (await asyncio.wait_for(speech, 30)).status == 200
        assert spoken(engine) == [SENTENCES[0], *INTERACTIVE]  # the job's chunk 2 never ran
    finally:
        engine.release(10_000)


async def test_deleting_a_job_mid_chunk_answers_once_it_has_stopped(make_long):
    """DELETE ?action=delete of a job whose chunk is being spoken answers once the job has
    stopped: the status API already shows it cancelled and nothing processing, and nothing
    of it is left on disk; once the engine is free, no more of the job is spoken and no file
    of it comes back."""
    engine = ScriptedEngine()
    client = await make_long(engine, hold=True)
    try:
        job_id = (await submit(client))["job_id"]
        await in_thread(engine.wait_started)
        resp = await client.delete(f"/audio/speech/long/{job_id}?action=delete")
        assert resp.status == 200
        record = await (await client.get(f"/status/requests/{job_id}")).json()
        assert (record["status"], record["progress"]["current_step"]) == ("cancelled", "Cancelled")
        assert (await (await client.get("/status")).json())["is_processing"] is False
        assert not files.job_dir(manager_of(client).root, job_id).exists()
        assert (await client.get(f"/audio/speech/long/{job_id}")).status == 404
        engine.release(10)  # the engine is free again: nothing more of the job is spoken
        await asyncio.wait_for(manager_of(client).wait(job_id), 30)
        assert spoken(engine) == SENTENCES[:1]
        assert not files.job_dir(manager_of(client).root, job_id).exists()
    finally:
        engine.release(10)


async def one_running_one_pending(make_long):
    """A held engine speaking a first job, and a second job waiting behind the limit of one."""
    engine = ScriptedEngine()
    client = await make_long(engine, hold=True, max_concurrent_jobs=1)
    first = (await submit(client))["job_id"]
    await in_thread(engine.wait_started)
    second = (await submit(client, text="Second job speaks this. And this too."))["job_id"]
    return engine, client, first, second


async def test_jobs_beyond_the_concurrency_limit_wait_pending(make_long):
    engine, client, first, second = await one_running_one_pending(make_long)
    assert (await status_of(client, first))["status"] == "processing"
    view = await status_of(client, second)
    assert view["status"] == "pending" and view["can_pause"]
    # Waiting, it has no chunk yet, and its event no estimate of its own (the queue view chains one).
    record = await (await client.get(f"/status/requests/{second}")).json()
    assert (record["status"], record["progress"]["current_step"]) == ("queued", "Waiting for a long-text slot")
    assert (record["progress"]["current_chunk"], record["progress"]["progress_percentage"]) == (0, 0.0)
    replayed = [e.data for e in core_of(client).bus.since(0) if e.data.get("request_id") == second]  # as a stream from the start
    assert [(e["status"], e["current_chunk"], e["estimated_completion"]) for e in replayed] == [("queued", 0, None)]
    engine.release(20)
    await finished(client, first)
    await finished(client, second)
    assert spoken(engine) == [*SENTENCES, "Second job speaks this. And this too."]
    assert (await status_of(client, second))["status"] == "completed"


async def test_a_pending_job_that_never_started_can_be_deleted(make_long):
    """A job waiting behind the concurrency limit has no files yet: deleting it still works."""
    engine, client, first, second = await one_running_one_pending(make_long)
    assert (await status_of(client, second))["status"] == "pending"
    assert not files.job_dir(manager_of(client).root, second).exists()
    resp = await client.delete(f"/audio/speech/long/{second}?action=delete")
    assert resp.status == 200, await resp.text()
    assert (await client.get(f"/audio/speech/long/{second}")).status == 404
    # The status API saw it end: cancelled, out of the queue.
    record = await (await client.get(f"/status/requests/{second}")).json()
    assert (record["status"], record["progress"]["current_step"]) == ("cancelled", "Cancelled")
    assert (await (await client.get("/status")).json())["queue"]["requests"] == []
    engine.release(20)
    assert (await finished(client, first))["status"] == "completed"
    assert spoken(engine) == SENTENCES


async def test_a_pending_job_that_never_started_can_be_cancelled_and_retried(make_long):
    """A cancel (DELETE without action) of a job waiting behind the concurrency limit ends it
    cancelled, in its view and in the status API, and frees the queue; retried, it runs."""
    engine, client, first, second = await one_running_one_pending(make_long)
    resp = await client.delete(f"/audio/speech/long/{second}")
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["status"] == "cancelled"
    assert (await status_of(client, second))["status"] == "cancelled"
    record = await (await client.get(f"/status/requests/{second}")).json()
    assert (record["status"], record["progress"]["current_step"]) == ("cancelled", "Cancelled")
    assert (await (await client.get("/status")).json())["queue"]["requests"] == []
    assert (await client.post(f"/audio/speech/long/{second}/retry")).status == 200
    engine.release(20)
    assert (await finished(client, first))["status"] == "completed"
    assert (await finished(client, second))["status"] == "completed"


async def test_a_pending_job_that_never_started_can_be_paused_and_resumed(make_long):
    """Paused while it waits behind the concurrency limit, a job is paused (not cancelled) in
    its view and in the status API; resumed, it runs once the slot is free."""
    engine, client, first, second = await one_running_one_pending(make_long)
    resp = await client.put(f"/audio/speech/long/{second}/pause")
    assert resp.status == 200, await resp.text()
    view = await status_of(client, second)
    assert view["status"] == "paused" and view["can_resume"]
    record = await (await client.get(f"/status/requests/{second}")).json()
    assert (record["status"], record["progress"]["current_step"]) == ("paused", "Paused")
    assert (await client.put(f"/audio/speech/long/{second}/resume")).status == 200
    engine.release(20)
    assert (await finished(client, first))["status"] == "completed"
    assert (await finished(client, second))["status"] == "completed"
    assert spoken(engine) == [*SENTENCES, "Second job speaks this. And this too."]


async def test_deleting_a_finished_job_leaves_its_record_in_the_status_api_as_it_ended(make_long):
    """Deleting a completed job (its files) does not rewrite how it ended: no event says it was
    cancelled, the status API still shows it completed, and the statistics count no cancellation."""
    client = await make_long(ScriptedEngine())
    job_id = (await submit(client))["job_id"]
    assert (await finished(client, job_id))["status"] == "completed"
    after: list[dict] = []
    core_of(client).bus.add_listener(lambda e: after.append(e.data) if e.data.get("request_id") == job_id else None)
    assert (await client.delete(f"/audio/speech/long/{job_id}?action=delete")).status == 200
    assert after == []
    record = await (await client.get(f"/status/requests/{job_id}")).json()
    assert record["status"] == "completed"
    stats = await (await client.get("/status/statistics")).json()
    assert (stats["completed_requests"], stats["cancelled_requests"]) == (1, 0)


# --- limits, retention, durability ---------------------------------------------------


async def test_disk_quota_stops_a_job_and_refuses_new_ones_with_507(make_long):
    # Text that speaks far slower than prose (numbers do): its estimate (about 1.1 MB)
    # fits a 1.5 MB quota, its audio (about 0.9 MB of float32 a chunk) does not.
    engine = ScriptedEngine()
    engine.seconds_per_char = 0.3
    client = await make_long(engine, max_disk_mb=1.5)
    job_id = (await submit(client))["job_id"]
    view = await finished(client, job_id)
    assert view["status"] == "failed"
    assert "LONG_TEXT_MAX_DISK_MB" in view["progress"]["error"]
    assert view["progress"]["completed_chunks"] == 2
    used = await in_thread(files.disk_usage, manager_of(client).root)
    resp = await client.post("/audio/speech/long", json={"input": TEXT})
    assert resp.status == 507
    error = error_of(await resp.json())
    assert error["code"] == "disk_quota_exceeded"
    assert error["message"] == (
        f"Long-text storage is full: {used / MB:.1f} MB used, LONG_TEXT_MAX_DISK_MB is 1.5; delete finished jobs to make room"
    )
    assert (await (await client.get("/audio/speech/long")).json())["total_jobs"] == 1
    # Deleting the job frees the space.
    assert (await client.delete(f"/audio/speech/long/{job_id}?action=delete")).status == 200
    job_id = (await submit(client, text="Short."))["job_id"]
    assert (await finished(client, job_id))["status"] == "completed"


async def test_retention_removes_old_finished_jobs_and_their_files(make_long, caplog):
    engine = ScriptedEngine()
    client = await make_long(engine, hold=True, retention_days=7)
    manager = manager_of(client)
    done = (await submit(client, text="Finished long ago."))["job_id"]
    engine.release(1)
    await finished(client, done)
    running = (await submit(client))["job_id"]
    await in_thread(engine.wait_started)
    assert await manager.cleanup(now=time.time() + 6 * 86400) == []
    caplog.set_level(logging.INFO, logger="chatterbox_status.longtext.manager")
    removed = await manager.cleanup(now=time.time() + 7 * 86400 + 5)  # 7 days and 5 seconds after it ended
    assert removed == [done]
    assert [r.getMessage() for r in caplog.records if r.name == "chatterbox_status.longtext.manager"] == ["long-text retention: removed 1 jobs"]
    assert not files.job_dir(manager.root, done).exists()
    assert (await client.get(f"/audio/speech/long/{done}")).status == 404
    assert (await status_of(client, running))["status"] == "processing"  # running jobs are kept
    engine.release(10)
    await finished(client, running)


async def test_the_periodic_sweep_removes_finished_jobs_past_their_retention(make_long):
    """Retention runs by itself: with a retention of a second (in days) and a sweep every
    50 ms, a finished job's record and files are gone within seconds, with no call to cleanup."""
    client = await make_long(ScriptedEngine(), retention_days=1 / 86400, cleanup_interval=0.05)
    job_id = (await submit(client, text="Gone soon."))["job_id"]
    await asyncio.wait_for(manager_of(client).wait(job_id), 30)
    job_dir = files.job_dir(manager_of(client).root, job_id)
    deadline = time.monotonic() + 20
    # Polled: the sweep says nothing. Its record goes first, then its files.
    while (await client.get(f"/audio/speech/long/{job_id}")).status != 404 or job_dir.exists():
        assert time.monotonic() < deadline, "the sweep never removed the finished job and its files"
        await asyncio.sleep(0.05)


async def test_a_server_that_keeps_jobs_for_ever_shuts_down_cleanly(make_long):
    """LONG_TEXT_JOB_RETENTION_DAYS=0 (no sweep): the app's shutdown ends without an error."""
    client = await make_long(ScriptedEngine(), retention_days=0)
    job_id = (await submit(client, text="Kept for ever."))["job_id"]
    assert (await finished(client, job_id))["status"] == "completed"
    await client.close()


async def completes_after_speaking_again(client, engine: ScriptedEngine, job_id: str, errors: list[str | None]) -> None:
    """The job's details name each bad chunk's fault; released, the job completes with its
    whole audio, the bad chunks (the first ones) spoken again and nothing else."""
    details = await (await client.get(f"/audio/speech/long/{job_id}/details")).json()
    assert [chunk["error"] for chunk in details["chunks"]] == errors
    tracker, ends = core_of(client).tracker, record_events(client, types=("status",))
    pace = tracker.seconds_per_char
    engine.release(10)
    view = await finished(client, job_id)
    assert view["status"] == "completed"
    again = sum(error is not None for error in errors)
    assert spoken(engine) == [*SENTENCES, *SENTENCES[:again]]
    # The pace measured for later estimates counts every character spoken, those spoken again too.
    (end,) = [e.data for e in ends if e.data["request_id"] == job_id and e.data["status"] == "completed"]
    characters = sum(map(len, [*SENTENCES, *SENTENCES[:again]]))
    assert end["generated_characters"] == characters
    assert tracker.seconds_per_char == pytest.approx(pace + THROUGHPUT_ALPHA * (end["generation_seconds"] / characters - pace), rel=1e-9)
    _, pcm = wav_frames(await (await client.get(f"/audio/speech/long/{job_id}/download")).read())
    assert len(pcm) == expected_frames(engine, SENTENCES, 0)


async def test_a_corrupt_chunk_file_is_generated_again_not_served(make_long):
    """Checked after the last chunk: a truncated file, a missing one and a valid file of the
    wrong length are each generated again, and the job's details say why while it happens."""
    engine = ScriptedEngine()
    client = await make_long(engine, hold=True, silence_padding_ms=0)
    job_id = (await submit(client))["job_id"]
    await in_thread(engine.wait_started)
    engine.release(1)
    await in_thread(engine.wait_started)
    engine.release(1)
    await in_thread(engine.wait_started)  # chunk 3 is running, chunks 1 and 2 are on disk
    root = manager_of(client).root
    first_chunk = files.chunk_path(root, job_id, 0)
    first_chunk.write_bytes(first_chunk.read_bytes()[:100])  # truncated
    files.chunk_path(root, job_id, 1).unlink(missing_ok=True)
    engine.release(1)
    assert await in_thread(engine.wait_started) == SENTENCES[3]  # chunk 3 is on disk
    np.save(files.chunk_path(root, job_id, 2), np.zeros(100, dtype=np.float32))  # a valid file, too short
    engine.release(1)
    assert await in_thread(engine.wait_started) == SENTENCES[0]  # generated again, held
    await completes_after_speaking_again(client, engine, job_id, ["audio file is corrupt", "audio file is missing", "audio file is corrupt", None])


class SteppedClock:
    """The pipeline's clock, standing still until the test moves it: the engine's work then
    takes exactly the time the test says, and each estimate can be worked out to the
    millisecond from outside."""

    def __init__(self) -> None:
        self.now = time.time()
        self.counter = 1_000.0

    def time(self) -> float:
        return self.now

    def perf_counter(self) -> float:
        return self.counter

    monotonic = perf_counter

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.counter += seconds


async def test_estimates_follow_the_pace_the_job_shows_also_while_a_lost_chunk_is_spoken_again(make_long, monkeypatch):
    """Each estimate is the share of the job still to do, over its characters, at a pace
    that weighs the job's own pace so far against the engine's measured one (as much as
    PRIOR_WEIGHT_CHARS characters), and it never moves earlier. A chunk whose file was lost is
    spoken again after the last: it no longer counts as done, so the job's own pace stays what
    it was. The engine works 10 ms a character, on a clock that moves only with its work."""
    pace = 0.01
    engine = ScriptedEngine(work_seconds_per_char=0.002)  # its warm-up gives the engine a measured pace
    client = await make_long(engine, hold=True, silence_padding_ms=0)
    engine.work_seconds_per_char = 0.0  # from now on its work takes time on the stepped clock only
    prior = core_of(client).tracker.seconds_per_char_of(None)
    clock = SteppedClock()
    monkeypatch.setattr(pipeline, "time", clock)
    chunks = [*SENTENCES[:3], "Short end."]  # the lost chunk (the first) is longer than the last
    total = sum(map(len, chunks))
    events = record_events(client)
    marks = [(0, clock.now)]  # (events seen when the clock moved, the clock from then on)

    def work(chunk: str) -> None:
        clock.advance(len(chunk) * pace)
        marks.append((len(events), clock.now))
        engine.release(1)

    job_id = (await submit(client, text=" ".join(chunks)))["job_id"]
    for n, chunk in enumerate(chunks):
        assert await in_thread(engine.wait_started) == chunk
        if n == 1:  # the first chunk is on disk: its file is lost
            files.chunk_path(manager_of(client).root, job_id, 0).unlink()
        work(chunk)
    assert await in_thread(engine.wait_started) == chunks[0]  # spoken again
    work(chunks[0])
    assert (await finished(client, job_id))["status"] == "completed"

    def estimate(at: float, percentage: float, done: int, started: float | None) -> float:
        spc = prior if not done or started is None else (prior * PRIOR_WEIGHT_CHARS + (at - started)) / (PRIOR_WEIGHT_CHARS + done)
        return round(at + (1 - percentage / 100) * total * spc, 3)

    mine = [(k, e.data) for k, e in enumerate(events) if e.data["request_id"] == job_id]
    given: list[float] = []
    started = None
    furthest = 0  # the furthest chunk begun: one before it is being spoken again
    checked = 0
    for k, data in mine:
        if data["status"] in ("queued", "completed"):
            continue
        at = max(now for seen, now in marks if seen <= k)
        again = 0 < data["current_chunk"] < furthest
        if data["status"] == "generating_audio":
            started = at if started is None else started
            furthest = max(furthest, data["current_chunk"])
            done = total - len(chunks[0]) if again else sum(map(len, chunks[: data["current_chunk"] - 1]))
        elif started is not None:
            if again and done < total:  # the chunk spoken again ended: its reports moved no percentage, so no event showed them
                given.append(estimate(at, GENERATION_SHARE, done, started))
            done = total
        else:
            done = 0
        given.append(estimate(at, data["progress_percentage"], done, started))
        assert data["estimated_completion"] == pytest.approx(max(given), abs=0.0015), (data["status"], data["current_step"])
        checked += 1
    assert furthest == len(chunks) and checked > 2 * len(chunks)


async def test_a_chunk_file_of_another_sample_type_or_shape_is_generated_again(make_long):
    """A chunk file of the right length that is not the job's float32 mono audio (float64,
    or two channels) is generated again, not joined into the job's audio."""
    engine = ScriptedEngine()
    client = await make_long(engine, silence_padding_ms=0)
    job_id = await third_chunk_running(client, engine)  # chunks 1 and 2 are on disk
    root = manager_of(client).root
    first, second = files.chunk_path(root, job_id, 0), files.chunk_path(root, job_id, 1)
    np.save(first, np.load(first).astype(np.float64))
    np.save(second, np.repeat(np.load(second)[:, np.newaxis], 2, axis=1))
    engine.release(2)
    assert await in_thread(engine.wait_started) == SENTENCES[3]
    assert await in_thread(engine.wait_started) == SENTENCES[0]  # generated again, held
    await completes_after_speaking_again(client, engine, job_id, ["audio file is corrupt", "audio file is corrupt", None, None])


async def test_a_chunk_file_gone_once_joining_starts_fails_the_job_naming_the_chunk(make_long):
    """Every chunk was checked, then one's file went away as the job began joining them:
    the job fails, and its error says which chunk of which job could not be read back."""
    engine = ScriptedEngine()
    client = await make_long(engine, silence_padding_ms=0)
    root = manager_of(client).root

    def remove_second_chunk(event):  # a bus listener runs as the event is published
        if event.type == "status" and event.data["status"] == "concatenating":
            files.chunk_path(root, event.data["request_id"], 1).unlink()

    core_of(client).bus.add_listener(remove_second_chunk)
    job_id = (await submit(client))["job_id"]
    view = await finished(client, job_id)
    assert view["status"] == "failed"
    assert f"chunk 1 of job {job_id} could not be read back" in view["progress"]["error"]


async def third_chunk_running(client, engine) -> str:
    """Hold the engine and submit a four-chunk job; once chunks 1 and 2 are done and chunk 3
    runs, its id."""
    engine.hold()
    job_id = (await submit(client))["job_id"]
    await in_thread(engine.wait_started)
    engine.release(2)
    await in_thread(engine.wait_started)
    await in_thread(engine.wait_started)
    return job_id


async def test_a_restarted_app_resumes_at_the_first_unfinished_chunk(aiohttp_client, tmp_path, caplog):
    engine = ScriptedEngine()
    app = build_app(engine, tmp_path / "data", tmp_path / "voices")
    client = await aiohttp_client(app)
    await core_of(client).worker.wait_loaded()
    job_id = await third_chunk_running(client, engine)
    await client.close()

    fresh = ScriptedEngine()
    caplog.set_level(logging.INFO, logger="chatterbox_status.longtext.manager")
    client = await aiohttp_client(build_app(fresh, tmp_path / "data", tmp_path / "voices"))
    await core_of(client).worker.wait_loaded()
    view = await finished(client, job_id)
    assert view["status"] == "completed"
    assert spoken(fresh) == SENTENCES[2:]
    resumed = [r.getMessage() for r in caplog.records if r.name == "chatterbox_status.longtext.manager"]
    assert resumed == [f"long-text job {job_id} resumes at chunk 3 of 4"]
    _, pcm = wav_frames(await (await client.get(f"/audio/speech/long/{job_id}/download")).read())
    assert len(pcm) == expected_frames(fresh, SENTENCES, 200)


async def test_a_chunk_that_ends_while_the_server_shuts_down_is_kept_and_not_spoken_again(aiohttp_client, tmp_path, monkeypatch):
    """The server shuts down while a job's third chunk is spoken by an engine that looks at
    cancellation only between chunks: the shutdown waits for the chunk, which is kept, so the
    next start resumes at the fourth chunk and never speaks the third again."""
    engine = ScriptedEngine(cancel_within_chunk=False)
    client = await aiohttp_client(build_app(engine, tmp_path / "data", tmp_path / "voices"))
    await core_of(client).worker.wait_loaded()
    job_id = await third_chunk_running(client, engine)
    signal = LongTextManager._signal

    def signal_then_let_the_chunk_end(self, run, reason):  # the chunk ends once the shutdown has begun
        signal(self, run, reason)
        if reason == "shutdown":
            engine.release(1)

    monkeypatch.setattr(LongTextManager, "_signal", signal_then_let_the_chunk_end)
    await client.close()
    monkeypatch.undo()
    fresh = ScriptedEngine()
    client = await aiohttp_client(build_app(fresh, tmp_path / "data", tmp_path / "voices"))
    await core_of(client).worker.wait_loaded()
    assert (await finished(client, job_id))["status"] == "completed"
    assert spoken(fresh) == SENTENCES[3:]


async def test_jobs_resumed_once_a_late_database_opens_leave_alone_those_already_running(make_long):
    """A database that opened late (locked at the start) has its runnable jobs resumed by the
    retry; a job created or resumed by a client meanwhile is already running and runs once."""
    engine = ScriptedEngine()
    client = await make_long(engine, hold=True)
    job_id = (await submit(client))["job_id"]
    assert await in_thread(engine.wait_started) == SENTENCES[0]
    await manager_of(client)._resume()  # what the retry does once the database opens
    engine.release(10)
    assert (await finished(client, job_id))["status"] == "completed"
    assert spoken(engine) == SENTENCES


async def test_a_chunk_file_of_the_wrong_length_found_after_a_restart_is_generated_again(aiohttp_client, tmp_path):
    """The store keeps each finished chunk's length: after a restart, a chunk file that is
    valid audio of another length (replaced, or cut by a copy) is generated again, not joined."""
    engine = ScriptedEngine()
    client = await aiohttp_client(build_app(engine, tmp_path / "data", tmp_path / "voices", silence_padding_ms=0))
    await core_of(client).worker.wait_loaded()
    job_id = await third_chunk_running(client, engine)
    root = manager_of(client).root
    await client.close()
    np.save(files.chunk_path(root, job_id, 0), np.zeros(100, dtype=np.float32))

    fresh = ScriptedEngine()
    client = await aiohttp_client(build_app(fresh, tmp_path / "data", tmp_path / "voices", silence_padding_ms=0))
    await core_of(client).worker.wait_loaded()
    assert (await finished(client, job_id))["status"] == "completed"
    assert spoken(fresh) == [*SENTENCES[2:], SENTENCES[0]]
    _, pcm = wav_frames(await (await client.get(f"/audio/speech/long/{job_id}/download")).read())
    assert len(pcm) == expected_frames(fresh, SENTENCES, 0)


@pytest.mark.parametrize("verb", ["cancel", "pause"])
async def test_a_stop_the_full_store_cannot_record_still_stops_the_job_and_says_so(aiohttp_client, tmp_path, monkeypatch, caplog, verb):
    """The store refuses the stop (a full disk): the job stops all the same and the status
    API says so, the client gets a 507 that says the stop was not stored, the operator's log
    says which stop of which job with the storage error, and asking again once there is room
    stores it (before, the job showed as generating for ever and came back at the next start)."""
    engine = ScriptedEngine()
    client = await aiohttp_client(build_app(engine, tmp_path / "data", tmp_path / "voices"))
    await core_of(client).worker.wait_loaded()
    job_id = await third_chunk_running(client, engine)
    disk = {"full": True}
    update = JobStore.update

    def full_update(self, job_id, **fields):  # as SQLite: an update that changes no row needs no room
        if disk["full"] and fields.get("status") in (CANCELLED, PAUSED) and self.get(job_id) is not None:
            raise disk_full()
        return update(self, job_id, **fields)

    monkeypatch.setattr(JobStore, "update", full_update)
    ask = (lambda: client.delete(f"/audio/speech/long/{job_id}")) if verb == "cancel" else (
        lambda: client.put(f"/audio/speech/long/{job_id}/pause"))
    resp = await ask()
    assert resp.status == 507, await resp.text()
    assert f"stopped, but its new state ({'cancelled' if verb == 'cancel' else 'paused'}) could not be stored" in (
        await resp.json())["error"]["message"]
    record = await (await client.get(f"/status/requests/{job_id}")).json()
    assert record["status"] == ("cancelled" if verb == "cancel" else "paused")
    statistics = await (await client.get("/status/statistics")).json()
    assert statistics["is_processing"] is False
    assert statistics["cancelled_requests"] == (1 if verb == "cancel" else 0)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and r.name == "chatterbox_status.pipeline"]
    assert [r.getMessage() for r in errors] == [f"request {job_id}: its {verb} could not be stored"]
    assert "out of space" in str(errors[0].exc_info[1])
    disk["full"] = False
    resp = await ask()
    assert resp.status == 200, await resp.text()
    assert (await status_of(client, job_id))["status"] == ("cancelled" if verb == "cancel" else "paused")
    assert (await (await client.get("/status/statistics")).json())["cancelled_requests"] == (1 if verb == "cancel" else 0)


async def test_a_completed_job_whose_audio_file_is_gone_says_so_on_download(make_long):
    client = await make_long(ScriptedEngine())
    job_id = (await submit(client))["job_id"]
    assert (await finished(client, job_id))["status"] == "completed"
    (files.job_dir(manager_of(client).root, job_id) / "output.wav").unlink()
    resp = await client.get(f"/audio/speech/long/{job_id}/download")
    assert resp.status == 500
    assert error_of(await resp.json())["code"] == "output_missing"


def test_long_text_settings_come_from_the_environment_like_every_setting():
    settings = Settings.from_sources(
        {},
        {
            "DATA_DIR": "/srv/data",
            "LONG_TEXT_MAX_LENGTH": "500",
            "LONG_TEXT_MAX_CONCURRENT_JOBS": "2",
            "LONG_TEXT_MAX_DISK_MB": "10",
            "LONG_TEXT_JOB_RETENTION_DAYS": "1.5",
            "LONG_TEXT_SILENCE_PADDING_MS": "0",
            "MAX_QUEUE_SIZE": "7",
            "REDIS_URL": "redis://cache.internal:6379/2",
        },
    )
    config = LongTextConfig.from_settings(settings)
    assert (config.data_dir, config.max_length, config.max_concurrent_jobs) == ("/srv/data", 500, 2)
    assert (config.max_disk_mb, config.retention_days, config.silence_padding_ms) == (10.0, 1.5, 0)
    # Jobs waiting are bounded by MAX_QUEUE_SIZE, as requests are; REDIS_URL makes them the cluster's.
    assert (config.max_pending_jobs, config.redis_url) == (7, "redis://cache.internal:6379/2")
    with pytest.raises(SettingsError, match="LONG_TEXT_MAX_CONCURRENT_JOBS"):
        Settings.from_sources({}, {"LONG_TEXT_MAX_CONCURRENT_JOBS": "0"})
    with pytest.raises(SettingsError, match="LONG_TEXT_MAX_DISK_MB"):
        Settings.from_sources({}, {"LONG_TEXT_MAX_DISK_MB": "lots"})


async def test_a_paused_job_that_is_deleted_ends_cancelled_in_the_status_api(make_long):
    """A job paused in its second chunk, then deleted: the status API ends it cancelled, with
    the chunk and percentage it was paused at."""
    engine = ScriptedEngine()
    client = await make_long(engine, hold=True)
    job_id = (await submit(client))["job_id"]
    await in_thread(engine.wait_started)
    engine.release(1)
    assert await in_thread(engine.wait_started) == SENTENCES[1]
    assert (await client.put(f"/audio/speech/long/{job_id}/pause")).status == 200
    paused = (await (await client.get(f"/status/requests/{job_id}")).json())["progress"]
    assert (paused["current_chunk"], paused["total_chunks"]) == (2, 4) and paused["progress_percentage"] > 0, paused
    resp = await client.delete(f"/audio/speech/long/{job_id}", params={"action": "delete"})
    assert resp.status == 200, await resp.text()
    record = await (await client.get(f"/status/requests/{job_id}")).json()
    assert (record["status"], record["progress"]["current_step"]) == ("cancelled", "Cancelled")
    figures = ("current_chunk", "total_chunks", "progress_percentage")
    assert {k: record["progress"][k] for k in figures} == {k: paused[k] for k in figures}
    statistics = await (await client.get("/status/statistics")).json()
    assert (statistics["cancelled_requests"], statistics["is_processing"]) == (1, False)


async def test_a_paused_job_can_be_cancelled_then_retried(make_long):
    engine = ScriptedEngine()
    client = await make_long(engine, hold=True)
    job_id = (await submit(client))["job_id"]
    await in_thread(engine.wait_started)
    assert (await client.put(f"/audio/speech/long/{job_id}/pause")).status == 200
    resp = await client.get(f"/audio/speech/long/{job_id}/sse")  # not running: its state at once
    body = (await asyncio.wait_for(resp.read(), 10)).decode()
    assert "event: paused" in body
    assert (await client.put(f"/audio/speech/long/{job_id}/pause")).status == 409
    resp = await client.delete(f"/v1/audio/speech/long/{job_id}")
    assert resp.status == 200 and (await resp.json())["status"] == "cancelled"
    assert (await client.put(f"/audio/speech/long/{job_id}/resume")).status == 409
    assert (await client.post(f"/audio/speech/long/{job_id}/retry")).status == 200
    engine.release(10)
    assert (await finished(client, job_id))["status"] == "completed"


async def test_pausing_and_resuming_a_job_counts_it_once_in_the_statistics(make_long):
    engine = ScriptedEngine()
    client = await make_long(engine)
    engine.hold()
    created = await (await client.post("/audio/speech/long", json={"input": " ".join(SENTENCES[:3])})).json()
    job_id = created["job_id"]
    await asyncio.to_thread(engine.wait_started)
    assert (await client.put(f"/audio/speech/long/{job_id}/pause")).status == 200
    record = await (await client.get(f"/status/requests/{job_id}")).json()
    assert record["status"] == "paused"
    stats = await (await client.get("/status/statistics")).json()
    assert (stats["total_requests"], stats["cancelled_requests"], stats["is_processing"]) == (1, 0, False)
    engine.release(10)
    assert (await client.put(f"/audio/speech/long/{job_id}/resume")).status == 200
    await asyncio.wait_for(manager_of(client).wait(job_id), 30)
    assert (await (await client.get(f"/audio/speech/long/{job_id}")).json())["status"] == "completed"
    stats = await (await client.get("/status/statistics")).json()
    assert (stats["total_requests"], stats["completed_requests"], stats["cancelled_requests"]) == (1, 1, 0)


async def test_pending_jobs_are_bounded_by_max_queue_size(make_long):
    """Jobs accepted and not finished count against MAX_QUEUE_SIZE: one more is a 429
    with Retry-After, and room comes back when one of them ends."""
    engine = ScriptedEngine()
    client = await make_long(engine, hold=True, max_pending_jobs=2)
    first = (await submit(client))["job_id"]
    await submit(client)
    resp = await client.post("/audio/speech/long", json={"input": TEXT, "chunk_size": CHUNK})
    assert resp.status == 429
    assert int(resp.headers["Retry-After"]) >= 1
    assert error_of(await resp.json())["type"] == "queue_full"
    assert (await client.get("/audio/speech/long")).status == 200  # still serving
    resp = await client.delete(f"/audio/speech/long/{first}")
    assert resp.status == 200
    await submit(client)  # the cancelled job made room


async def test_a_job_of_mostly_silence_is_refused_before_it_is_accepted(make_long, tmp_path):
    """'Hi. ' x 300 in 20-character chunks with 10 s between them asked for 830 s of audio,
    nearly all silence: a clear 400 naming silence_padding_ms, and nothing stored."""
    client = await make_long(ScriptedEngine())
    body = {"input": "Hi. " * 300, "chunk_size": 20, "silence_padding_ms": 10_000, "response_format": "wav"}
    resp = await client.post("/audio/speech/long", json=body)
    assert resp.status == 400
    error = error_of(await resp.json())
    assert (error["param"], error["code"]) == ("silence_padding_ms", "output_too_long")
    listing = await (await client.get("/audio/speech/long")).json()
    assert listing["total_jobs"] == 0
    body["silence_padding_ms"] = 200  # the same text with ordinary pauses is fine
    assert (await client.post("/audio/speech/long", json=body)).status == 200


@pytest.mark.parametrize(("response_format", "output_bytes_per_second"), [("mp3", 128_000 / 8), ("flac", 2 * ScriptedEngine.sample_rate)])
async def test_a_job_that_would_not_fit_the_disk_quota_is_refused_with_507(make_long, response_format, output_bytes_per_second):
    """The 507 says what the job would need (its chunk files, float32, and its output file in
    its format: mp3 at 128 kbit/s, flac at most as large as 16-bit PCM, for the speech its text
    makes) and what is left of the quota."""
    client = await make_long(ScriptedEngine(), max_disk_mb=1)
    await finished(client, (await submit(client, text=SENTENCES[0]))["job_id"])  # takes some of the quota
    used = await in_thread(files.disk_usage, manager_of(client).root)
    text = " ".join([TEXT] * 20)
    resp = await client.post("/audio/speech/long", json={"input": text, "response_format": response_format, "silence_padding_ms": 0})
    assert resp.status == 507
    message = error_of(await resp.json())["message"]
    match = re.fullmatch(
        r"This job would need about (\d+\.\d) MB and (\d+\.\d) MB is left of LONG_TEXT_MAX_DISK_MB \(1\); "
        r"delete finished jobs or send less text",
        message,
    )
    assert match, message
    rate, seconds = ScriptedEngine.sample_rate, len(text) * SPEECH_SECONDS_PER_CHAR
    expected = (seconds * rate * 4 + seconds * output_bytes_per_second) / MB
    assert float(match[1]) == pytest.approx(expected, abs=0.051)  # as the message rounds it, to 0.1 MB
    assert match[2] == f"{(MB - used) / MB:.1f}" != f"{(MB + used) / MB:.1f}"
    assert (await client.post("/audio/speech/long", json={"input": SENTENCES[1], "response_format": "wav"})).status == 200


async def test_archiving_a_job_is_kept_and_listed(make_long):
    client = await make_long(ScriptedEngine())
    job_id = (await submit(client))["job_id"]
    await finished(client, job_id)
    resp = await client.patch(f"/audio/speech/long/{job_id}", json={"is_archived": True})
    assert resp.status == 200, await resp.text()
    items = (await (await client.get("/audio/speech/long-history")).json())["jobs"]
    assert [(i["job_id"], i["is_archived"]) for i in items] == [(job_id, True)]
    assert (await client.patch(f"/audio/speech/long/{job_id}", json={"is_archived": False})).status == 200
    items = (await (await client.get("/audio/speech/long")).json())["jobs"]
    assert items[0]["is_archived"] is False


def test_a_database_from_before_archiving_opens_with_every_job(tmp_path):
    import sqlite3

    from chatterbox_status.longtext.store import _SCHEMA, JobStore

    path = tmp_path / "jobs.sqlite3"
    old = sqlite3.connect(path)
    old.executescript(_SCHEMA.replace(",\n    is_archived INTEGER NOT NULL DEFAULT 0", ""))
    old.execute(
        "INSERT INTO jobs (job_id, status, created_at, updated_at, text, text_length, voice, parameters, synthesis, "
        "output_format, silence_padding_ms, total_chunks) VALUES ('old', 'completed', 1, 1, 'x', 1, 'alloy', '{}', '{}', 'mp3', 0, 1)"
    )
    old.commit()
    old.close()
    store = JobStore(path)
    job = store.get("old")
    assert job is not None and job.is_archived is False
    store.close()


async def test_one_subscriber_limit_covers_job_streams_too(make_long):
    """MAX_SSE_SUBSCRIBERS=2: with two /status/stream open, a job's /sse is a 429 as a
    third /status/stream is, with its own error type; closing one makes room."""
    client = await make_long(ScriptedEngine(), hold=True, settings={"max_sse_subscribers": 2})
    job_id = (await submit(client))["job_id"]
    first = await client.get("/status/stream")
    second = await client.get("/status/stream")
    assert (first.status, second.status) == (200, 200)
    for path in ("/status/stream", f"/audio/speech/long/{job_id}/sse"):
        resp = await client.get(path)
        assert resp.status == 429, path
        assert resp.headers["Retry-After"]
        error = error_of(await resp.json())
        assert (error["type"], error["code"]) == ("too_many_streams", "too_many_streams")
    first.close()
    deadline = time.monotonic() + 10
    while core_of(client).bus.subscriber_count > 1:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    job_stream = await client.get(f"/audio/speech/long/{job_id}/sse")
    assert job_stream.status == 200
    job_stream.close()
    second.close()


# --- what a job keeps, and what a refusal says ------------------------------------------


def when(iso: str | None) -> float | None:
    return None if iso is None else datetime.fromisoformat(iso).timestamp()


async def test_a_job_keeps_its_session_and_says_when_it_was_last_read(make_long):
    """The session_id it was created with is its user_session_id; reading its details or
    downloading its audio sets last_accessed to that moment (polling its status does not)."""
    client = await make_long(ScriptedEngine())
    job_id = (await submit(client, session_id="session-7"))["job_id"]
    view = await finished(client, job_id)
    assert view["metadata"]["user_session_id"] == "session-7"
    assert view["metadata"]["last_accessed"] is None

    before = time.time()
    assert (await client.get(f"/audio/speech/long/{job_id}/details")).status == 200
    read = when((await status_of(client, job_id))["metadata"]["last_accessed"])
    assert read is not None and before - 0.001 <= read <= time.time() + 0.001

    before = time.time()
    assert (await client.get(f"/audio/speech/long/{job_id}/download")).status == 200
    downloaded = when((await status_of(client, job_id))["metadata"]["last_accessed"])
    assert downloaded is not None and max(read, before - 0.001) <= downloaded <= time.time() + 0.001
    listed = (await (await client.get("/audio/speech/long")).json())["jobs"]
    assert when(listed[0]["last_accessed"]) == downloaded


async def test_a_full_long_text_queue_says_how_full_and_to_come_back_when_the_running_job_is_due(make_long):
    """MAX_QUEUE_SIZE=1 with a job running past its estimate (the scripted engine's pace is
    far faster than the held chunk): the 429 names the count and says to come back in a second."""
    engine = ScriptedEngine()
    client = await make_long(engine, hold=True, max_pending_jobs=1)
    try:
        job_id = (await submit(client))["job_id"]
        await in_thread(engine.wait_started)
        record = await (await client.get(f"/status/requests/{job_id}")).json()
        assert record["progress"]["estimated_completion"] is not None
        resp = await client.post("/audio/speech/long", json={"input": TEXT, "chunk_size": CHUNK})
        assert resp.status == 429
        assert resp.headers["Retry-After"] == "1"
        assert error_of(await resp.json())["message"] == "1 long-text jobs are waiting or running (MAX_QUEUE_SIZE); try again later"
    finally:
        engine.release(10)
    await finished(client, job_id)


async def test_a_full_long_text_queue_says_to_come_back_when_the_running_job_should_end(make_long):
    """An engine with a realistic pace (its warm-up measures it): the 429's Retry-After is
    the time left to the running job's estimated completion, seconds away, not a fixed 1."""
    engine = ScriptedEngine(work_seconds_per_char=0.02)
    client = await make_long(engine, hold=True, max_pending_jobs=1)
    try:
        job_id = (await submit(client))["job_id"]
        await in_thread(engine.wait_started)
        record = await (await client.get(f"/status/requests/{job_id}")).json()
        resp = await client.post("/audio/speech/long", json={"input": TEXT, "chunk_size": CHUNK})
        left = record["progress"]["estimated_completion"] - time.time()
        assert resp.status == 429
        assert left > 2
        assert left - 1 <= int(resp.headers["Retry-After"]) <= left + 2
        assert (await client.delete(f"/audio/speech/long/{job_id}")).status == 200
    finally:
        engine.release(10)


async def test_a_job_sent_while_the_model_loads_waits_queued_and_a_full_queue_says_come_back_in_a_second(aiohttp_client, tmp_path):
    """Background work waits for a loading model as queued (interactive requests wait as
    initializing). No job has an estimate before the model's warm-up measured its pace:
    a full queue's 429 still answers, with Retry-After 1."""
    engine = ScriptedEngine()
    engine.load_gate.clear()
    client = await aiohttp_client(build_app(engine, tmp_path / "data", tmp_path / "voices", max_pending_jobs=1))
    try:
        job_id = (await submit(client))["job_id"]
        record = await (await client.get(f"/status/requests/{job_id}")).json()
        assert (record["status"], record["progress"]["current_step"]) == ("queued", "Waiting for a long-text slot")
        assert record["progress"]["estimated_completion"] is None
        resp = await client.post("/audio/speech/long", json={"input": TEXT, "chunk_size": CHUNK})
        assert resp.status == 429
        assert resp.headers["Retry-After"] == "1"
    finally:
        engine.load_gate.set()
    assert (await finished(client, job_id))["status"] == "completed"
    assert spoken(engine) == SENTENCES


async def test_a_job_sent_while_the_model_loads_fails_with_the_load_error(aiohttp_client, tmp_path):
    engine = ScriptedEngine(load_error="the model file is missing")
    engine.load_gate.clear()
    client = await aiohttp_client(build_app(engine, tmp_path / "data", tmp_path / "voices"))
    try:
        job_id = (await submit(client))["job_id"]
    finally:
        engine.load_gate.set()
    view = await finished(client, job_id)
    assert view["status"] == "failed"
    assert "the model file is missing" in view["progress"]["error"]
    record = await (await client.get(f"/status/requests/{job_id}")).json()
    assert record["status"] == "error" and "the model file is missing" in record["error_message"]


# --- jobs on another engine, and jobs whose engine or voice is gone --------------------


async def upload_narrator(client) -> None:
    upload = aiohttp.FormData()
    upload.add_field("voice_name", "Narrator")
    upload.add_field("voice_file", wav_tone(), filename="narrator.wav", content_type="audio/wav")
    assert (await client.post("/v1/voices", data=upload)).status == 201


async def test_a_job_for_another_engine_is_spoken_there_in_its_library_voice(make_long):
    """The default engine cannot clone, "other" can: a job for "other" in a library voice is
    spoken by "other", in that voice (not by the default engine, nor refused as if it were)."""
    default, other = ScriptedEngine(), ScriptedEngine(cloning=True)
    other.name = "other"
    client = await make_long([default, other])
    await upload_narrator(client)
    job_id = (await submit(client, model="other", voice="narrator"))["job_id"]
    view = await finished(client, job_id)
    assert view["status"] == "completed", view["progress"]["error"]
    assert spoken(default) == [] and spoken(other) == SENTENCES
    assert [(source, existed) for source, _, existed in other.voices[-4:]] == [("library:Narrator", True)] * 4


async def test_a_job_for_an_engine_that_failed_to_load_is_refused_like_a_request(make_long):
    """The "other" engine failed to load (a request for it found out): a long-text job for it
    is a 503 with the load error, as a request is, and nothing is stored."""
    default, other = ScriptedEngine(), ScriptedEngine(load_error="the other model is missing")
    other.name = "other"
    client = await make_long([default, other])
    speech = await client.post("/v1/audio/speech", json={"input": "Hello there.", "model": "other"})
    assert speech.status == 503, await speech.text()
    resp = await client.post("/audio/speech/long", json={"input": TEXT, "chunk_size": CHUNK, "model": "other"})
    assert resp.status == 503
    assert "the other model is missing" in error_of(await resp.json())["message"]
    assert (await (await client.get("/audio/speech/long")).json())["total_jobs"] == 0


async def test_a_stored_job_whose_engine_or_voice_is_gone_after_a_restart_fails_saying_which(aiohttp_client, tmp_path):
    """Restarted without the "other" engine (ENGINES changed) and with an empty voice library:
    the job for "other" and the job in the library voice each fail at once, saying what is
    gone, in the job's view and in the status API; nothing is spoken."""
    default, other = ScriptedEngine(cloning=True), ScriptedEngine()
    other.name = "other"
    client = await aiohttp_client(build_app([default, other], tmp_path / "data", tmp_path / "voices", max_concurrent_jobs=1))
    await core_of(client).worker.wait_loaded()
    await upload_narrator(client)
    default.hold()
    in_narrator = (await submit(client, voice="narrator"))["job_id"]
    await in_thread(default.wait_started)
    on_other = (await submit(client, model="other"))["job_id"]  # pending behind the first
    await client.close()
    default.release(10)

    fresh = ScriptedEngine(cloning=True)
    client = await aiohttp_client(build_app(fresh, tmp_path / "data", tmp_path / "voices-now"))
    await core_of(client).worker.wait_loaded()
    for job_id, message in [
        (on_other, "Generation failed: engine 'other' is not configured any more (see ENGINES)"),
        (in_narrator, "Generation failed: voice 'narrator' is not available any more"),
    ]:
        view = await finished(client, job_id)
        assert (view["status"], view["progress"]["error"]) == ("failed", message)
        record = await (await client.get(f"/status/requests/{job_id}")).json()
        assert (record["status"], record["progress"]["current_step"], record["error_message"]) == ("error", "Failed", message)
    assert spoken(fresh) == []
