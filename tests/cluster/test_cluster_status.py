"""Several server processes on one Redis (REDIS_URL) show one status view.

Every node here is a real ``chatterbox-status serve`` on the embedded voice, sharing a real
redis-server: a request posted to one node is followed live on another, statistics agree
on every node (one that started later too), a stream resumes on another node, a request is
cancelled through another node, and Redis going away is a clear 503 until it is back.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
from eventsource import EventSource
from helpers import LIFECYCLE, wav_tone

TERMINAL = {"completed", "error", "cancelled"}
TEXT = "The lighthouse keeper wrote the weather in his book every evening."
# Long enough that the embedded voice is still speaking it when the cancel arrives.
LONG = " ".join(f"Sentence {n} of a long reading, spoken slowly and clearly." for n in range(1, 70))


def ends(event) -> bool:
    return event.json().get("status") in TERMINAL


async def speak(session: aiohttp.ClientSession, node, text: str, request_id: str, **fields) -> aiohttp.ClientResponse:
    async with session.post(
        f"{node.base}/v1/audio/speech", json={"input": text, **fields}, headers={"X-Request-ID": request_id}
    ) as response:
        await response.read()
        return response


def wait_for(condition, what: str, deadline_s: float = 20.0):
    """Poll ``condition`` until it returns something true (its value), or fail."""
    deadline = time.monotonic() + deadline_s
    while (value := condition()) is None or value is False:
        assert time.monotonic() < deadline, f"not within {deadline_s} s: {what}"
        time.sleep(0.05)  # poll interval; the deadline decides
    return value


async def test_a_request_posted_to_one_node_is_followed_live_on_another(start_node):
    a, b = start_node("a"), start_node("b")
    assert a.name != b.name
    request_id = "cluster-follow-0001"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        async with session.get(f"{b.base}/status/stream", params={"request_id": request_id}) as stream:
            events = EventSource(stream, timeout=60)
            snapshot = await events.next_event()
            assert snapshot.type == "snapshot" and snapshot.json()["status"] == "unknown"
            response = await speak(session, a, TEXT, request_id)
            assert response.status == 200
            # Answered once its own events came back from Redis: A shows what it answered.
            assert a.json("GET", f"/status/requests/{request_id}")["status"] == "completed"
            seen = await events.until(ends)
    assert [e.json()["status"] for e in seen if e.type == "status"] == LIFECYCLE
    assert {e.json()["node"] for e in seen} == {a.name}  # A ran it; B only relayed its events
    ids = [e.id for e in seen]
    assert ids == sorted(ids) and ids[0] > snapshot.id
    on_a, on_b = a.json("GET", f"/status/requests/{request_id}"), b.json("GET", f"/status/requests/{request_id}")
    assert on_b["status"] == "completed" and on_b["text_length"] == len(TEXT)
    assert on_b == {**on_a, "duration_seconds": on_b["duration_seconds"]}
    assert [r["request_id"] for r in b.json("GET", "/status/history")["request_history"]] == [request_id]


async def test_statistics_agree_on_every_node_after_completed_failed_and_cancelled_requests(start_node):
    a, b = start_node("a"), start_node("b")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=180)) as session:
        for n, node in enumerate((a, a, b)):
            assert (await speak(session, node, TEXT, f"cluster-done-{n:04d}")).status == 200
        # Cancelled through B while A speaks it: the cancel travels through the event log.
        victim = "cluster-cancel-0001"
        async with session.get(f"{b.base}/status/stream", params={"request_id": victim}) as stream:
            events = EventSource(stream, timeout=60)
            await events.next_event()  # the snapshot: subscribed before the post
            posted = asyncio.ensure_future(speak(session, a, LONG, victim))
            await events.until(lambda e: e.json().get("status") == "generating_audio")
            async with session.delete(f"{b.base}/v1/audio/speech/{victim}") as cancel:
                assert cancel.status == 200, await cancel.text()
                assert (await cancel.json())["cancelled"] is True
            final = (await events.until(ends))[-1].json()
        assert final["status"] == "cancelled" and final["node"] == a.name
        assert (await posted).status == 409
        # A node that starts now catches up; its chunks always time out, so its request fails.
        c = start_node("c", "--chunk-timeout", "0.01")
        failed = await speak(session, c, TEXT, "cluster-fail-0001")
        assert failed.status == 500
    expected = {"total_requests": 5, "completed_requests": 3, "error_requests": 1, "cancelled_requests": 1}
    for node in (a, b, c):
        stats = wait_for(
            lambda node=node: (s := node.statistics())["total_requests"] == 5 and not s["is_processing"] and s,
            f"node {node.name} folds all five requests",
        )
        assert {k: stats[k] for k in expected} == expected
    views = [node.statistics() for node in (a, b, c)]
    assert views[0] == views[1] == views[2]
    assert [r["status"] for r in c.json("GET", "/status/history")["request_history"]] == [
        "error", "cancelled", "completed", "completed", "completed"
    ]


async def test_an_event_stream_resumes_on_another_node(start_node):
    a, b = start_node("a"), start_node("b")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        async with session.get(f"{a.base}/status/stream") as stream:
            events = EventSource(stream, timeout=60)
            await events.next_event()
            assert (await speak(session, a, TEXT, "cluster-resume-01")).status == 200
            from_a = await events.until(lambda e: e.type == "status" and ends(e))
        resume_after = from_a[1].id
        async with session.get(f"{b.base}/status/stream", headers={"Last-Event-ID": str(resume_after)}) as stream:
            events = EventSource(stream, timeout=60)
            from_b = await events.events(len(from_a) - 2)
    assert [(e.id, e.type, e.json()) for e in from_b] == [(e.id, e.type, e.json()) for e in from_a[2:]]


async def test_without_redis_speech_is_a_clear_503_and_health_says_why_until_it_is_back(start_node, redis_server):
    a, b = start_node("a"), start_node("b")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        assert (await speak(session, a, TEXT, "cluster-before-01")).status == 200
        redis_server.stop()
        health = wait_for(lambda: (h := a.json("GET", "/health"))["event_log"]["error"] and h, "A notices Redis is gone")
        assert health["status"] == "error" and health["event_log"]["connected"] is False
        assert health["event_log"]["url"].startswith("redis://127.0.0.1:")
        async with session.post(f"{a.base}/v1/audio/speech", json={"input": TEXT}) as refused:
            assert refused.status == 503
            error = (await refused.json())["error"]
        assert error["code"] == "event_log_unavailable" and "Redis" in error["message"]
        form = aiohttp.FormData()
        form.add_field("voice_name", "narrator")
        form.add_field("voice_file", wav_tone(1.0), filename="narrator.wav", content_type="audio/wav")
        async with session.post(f"{a.base}/v1/voices", data=form) as upload:
            assert upload.status == 503
            assert (await upload.json())["error"]["code"] == "redis_unavailable"
        assert a.call("GET", "/ping")[0] == 200  # alive, and the status API still answers
        assert a.statistics()["total_requests"] == 1
        redis_server.start()
        for node in (a, b):
            wait_for(lambda node=node: node.json("GET", "/health")["status"] == "healthy", f"{node.name} reconnects")
        assert (await speak(session, b, TEXT, "cluster-after-01")).status == 200
    for node in (a, b):
        stats = wait_for(lambda node=node: (s := node.statistics())["completed_requests"] == 2 and s, "both requests folded")
        assert stats["total_requests"] == 2 and stats["error_requests"] == 0


async def test_the_requests_of_a_node_that_is_killed_end_in_error_once_on_the_others(start_node):
    a, b = start_node("a"), start_node("b")
    running, waiting = "cluster-killed-0001", "cluster-killed-0002"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        async with session.get(f"{b.base}/status/stream") as stream:
            events = EventSource(stream, timeout=60)
            await events.next_event()
            seen: dict[str, str] = {}

            def note(e) -> dict[str, str]:
                seen.update({e.json().get("request_id"): e.json().get("status")})
                return seen

            # One after the other: sent at once, the second could reach A after the first began.
            posts = [asyncio.ensure_future(speak(session, a, LONG, running))]
            await events.until(lambda e: note(e).get(running) == "generating_audio")
            posts.append(asyncio.ensure_future(speak(session, a, LONG, waiting)))
            await events.until(lambda e: note(e).get(waiting) == "queued")  # behind it on A
            assert seen[running] == "generating_audio"
            a.process.kill()  # SIGKILL: A says nothing more
            ended = {}
            while len(ended) < 2:
                event = await events.next_event()
                assert event is not None
                data = event.json()
                if data.get("status") in TERMINAL:
                    assert data["request_id"] not in ended, "a request ended twice"
                    ended[data["request_id"]] = data
        for post in posts:  # A's clients lost their connection
            assert isinstance((await asyncio.gather(post, return_exceptions=True))[0], aiohttp.ClientError)
    assert {r: d["status"] for r, d in ended.items()} == {running: "error", waiting: "error"}
    assert all(a.name in d["error_message"] and d["node"] == b.name for d in ended.values())
    record = b.json("GET", f"/status/requests/{running}")
    assert (record["status"], record["node"]) == ("error", a.name)
    stats = b.statistics()
    assert (stats["total_requests"], stats["error_requests"], stats["is_processing"]) == (2, 2, False)
    assert b.json("GET", "/status")["status"] == "idle"


def voice_names(node) -> list[str]:
    return [voice["name"] for voice in node.json("GET", "/v1/voices")["voices"]]


def clips_of(node) -> list[str]:
    return [p.name for p in (node.log_path.parent / "voices").glob("*") if not p.name.startswith(".")]


async def test_a_voice_uploaded_to_one_node_is_in_every_nodes_library(start_node):
    a, b = start_node("a"), start_node("b")
    clip = wav_tone(1.5)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:

        async def upload(node, name: str) -> int:
            form = aiohttp.FormData()
            form.add_field("voice_name", name)
            form.add_field("voice_file", clip, filename="narrator.wav", content_type="audio/wav")
            async with session.post(f"{node.base}/v1/voices", data=form) as response:
                return response.status

        # The same name on both nodes at once: the library is one, so one of them wins.
        assert sorted(await asyncio.gather(upload(a, "narrator"), upload(b, "Narrator"))) == [201, 409]
        wait_for(lambda: voice_names(b) == voice_names(a) and len(voice_names(a)) == 1, "one voice on both nodes")
        name = voice_names(a)[0]
        status, downloaded = b.call("GET", f"/v1/voices/{name}/download")
        assert (status, downloaded) == (200, clip)  # B holds the clip its engine would read
        async with session.put(f"{b.base}/v1/voices/{name}", data={"new_name": "storyteller"}) as renamed:
            assert renamed.status == 200
        wait_for(lambda: voice_names(a) == ["storyteller"], "A sees B's rename")
        c = start_node("c")  # a node that starts now has the library before it serves
        assert voice_names(c) == ["storyteller"]
        assert c.call("GET", "/v1/voices/storyteller/download") == (200, clip)
        async with session.delete(f"{a.base}/v1/voices/storyteller") as deleted:
            assert deleted.status == 200
        for node in (b, c):
            # The node forgets the voice, then removes its copy of the clip (a voice it lists
            # is one it can speak, so the file goes after the index).
            wait_for(lambda node=node: voice_names(node) == [] and clips_of(node) == [], f"{node.name} forgets the deleted voice and its clip")
