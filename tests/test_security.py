"""Issue 14's attacks, each reproduced against the server: hostile uploads, pages and clients.

Every test here failed on the code before the fix it names.
"""

from __future__ import annotations

import asyncio
import gc
import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import aiohttp
import psutil
import pytest
from conftest import assert_error_shape
from doubles import ScriptedEngine
from helpers import free_port, wav_tone

from chatterbox_status import auth, voices
from chatterbox_status.pipeline import STREAM_BUFFER_BYTES
from chatterbox_status.text import Chunking, normalize
from chatterbox_status.voices import VoiceLibrary

WEB_DIR = Path(__file__).resolve().parent.parent / "src" / "chatterbox_status" / "web"


async def error_of(response, status: int, code: str | None = None) -> dict:
    text = await response.text()
    assert response.status == status, (response.status, text)
    body = json.loads(text)
    assert_error_shape(body)
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]


def raw_exchange(port: int, request: bytes, timeout: float = 10.0) -> tuple[bytes, float]:
    """Send raw bytes; (everything the server sent until it closed, seconds until it did)."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received, time.monotonic() - started


def status_and_body(raw: bytes) -> tuple[int, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


# -- 1. voice uploads open no sockets, and stay off other requests' threads -----------------


def sdp(port: int) -> bytes:
    """An SDP description: FFmpeg's sdp demuxer binds the RTP port it names and waits."""
    return (
        "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=x\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        f"m=audio {port} RTP/AVP 0\r\n"
    ).encode()


HLS = b"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nhttp://127.0.0.1:9/a.ts\n#EXT-X-ENDLIST\n"
CONCAT = b"ffconcat version 1.0\nfile /etc/hostname\n"


def voice_form(data: bytes, name: str = "hostile") -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("voice_name", name)
    form.add_field("voice_file", data, filename="x.wav", content_type="audio/wav")
    return form


def speech_form(data: bytes) -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("input", "Hello there.")
    form.add_field("voice_file", data, filename="x.wav", content_type="audio/wav")
    return form


def udp_ports() -> set[int]:
    return {c.laddr.port for c in psutil.Process().net_connections(kind="udp")}


@pytest.mark.parametrize("route, make_form", [("/voices", voice_form), ("/v1/audio/speech/upload", speech_form)])
@pytest.mark.parametrize("kind", ["sdp", "hls", "concat"])
async def test_playlists_and_stream_descriptions_are_refused_at_once_without_a_socket(make_client, route, make_form, kind):
    client = await make_client(engine=ScriptedEngine(cloning=True))
    rtp_port = free_port()
    data = {"sdp": sdp(rtp_port), "hls": HLS, "concat": CONCAT}[kind]
    started = time.monotonic()
    upload = asyncio.ensure_future(client.post(route, data=make_form(data)))
    bound = set()
    while not upload.done():  # watch the process's UDP sockets for as long as the upload runs
        bound |= udp_ports() & {rtp_port, rtp_port + 1}
        await asyncio.sleep(0.005)
    response = await upload
    elapsed = time.monotonic() - started
    error = await error_of(response, 400)
    assert error["param"] == "voice_file"
    assert elapsed < 1.0, elapsed
    assert bound == set()


async def test_hostile_uploads_do_not_slow_an_ordinary_request(make_client):
    client = await make_client(engine=ScriptedEngine(cloning=True))
    uploads = [asyncio.ensure_future(client.post("/voices", data=voice_form(sdp(free_port()), f"v{n}"))) for n in range(8)]
    started = time.monotonic()
    speech = await client.post("/v1/audio/speech", json={"input": "Still quick."})
    assert speech.status == 200
    await speech.read()
    elapsed = time.monotonic() - started
    assert [r.status for r in await asyncio.gather(*uploads)] == [400] * 8
    assert elapsed < 1.0, elapsed


async def test_real_audio_still_uploads_and_clones(make_client):
    client = await make_client(engine=ScriptedEngine(cloning=True))
    created = await client.post("/voices", data=voice_form(wav_tone(2.0), "fine"))
    assert created.status == 201, await created.text()
    spoken = await client.post("/v1/audio/speech/upload", data=speech_form(wav_tone(2.0)))
    assert spoken.status == 200, await spoken.text()


async def test_a_decode_past_its_time_budget_is_a_400(make_client, monkeypatch):
    client = await make_client(engine=ScriptedEngine(cloning=True))
    monkeypatch.setattr(voices, "DECODE_BUDGET_S", 0.0)
    response = await client.post("/voices", data=voice_form(wav_tone(2.0), "slow"))
    error = await error_of(response, 400, "decode_timeout")
    assert error["param"] == "voice_file"


# -- 2. DNS rebinding and cross-site writes -------------------------------------------------


@pytest.mark.parametrize("method, path", [("GET", "/status"), ("POST", "/v1/audio/speech"), ("GET", "/health")])
async def test_a_rebound_host_name_is_refused(make_client, scripted, method, path):
    client = await make_client(engine=scripted)
    response = await client.request(method, path, json={"input": "Hi."}, headers={"Host": f"evil.example:{client.port}"})
    error = await error_of(response, 403, "host_not_allowed")
    assert error["type"] == "permission_error" and error["param"] == "Host"
    assert "Hi." not in scripted.calls


@pytest.mark.parametrize(
    "host, settings",
    [
        ("localhost:{port}", {}),
        ("LOCALHOST", {}),
        ("127.0.0.1:{port}", {}),
        ("[::1]:{port}", {}),
        ("192.168.1.20:{port}", {}),  # an address cannot be rebound
        ("tts.lan:{port}", {"allowed_hosts": "tts.lan, other.lan"}),
        ("box.example", {"host": "box.example"}),
        ("anything.example", {"allowed_hosts": "*"}),
    ],
)
async def test_names_of_this_server_are_answered(make_client, scripted, host, settings):
    client = await make_client(engine=scripted, **settings)
    response = await client.get("/status", headers={"Host": host.format(port=client.port)})
    assert response.status == 200, await response.text()


@pytest.mark.parametrize(
    "method, path, kwargs",
    [
        ("POST", "/v1/audio/speech", {"json": {"input": "Written by another site."}}),
        ("POST", "/status/history/clear", {}),
        ("DELETE", "/voices/somebody", {}),
        ("POST", "/voices", {"data": voice_form(b"RIFF")}),
    ],
)
async def test_another_sites_page_cannot_change_anything(make_client, scripted, method, path, kwargs):
    client = await make_client(engine=scripted)
    response = await client.request(method, path, headers={"Origin": "https://evil.example"}, **kwargs)
    error = await error_of(response, 403, "origin_not_allowed")
    assert error["type"] == "permission_error"
    assert "Written by another site." not in scripted.calls
    no_origin = await client.request(method, path, headers={"Sec-Fetch-Site": "cross-site"})
    await error_of(no_origin, 403, "cross_site_request")


async def test_reading_from_another_site_is_left_to_cors(make_client, scripted):
    client = await make_client(engine=scripted)
    response = await client.get("/status/progress", headers={"Origin": "https://evil.example"})
    assert response.status == 200
    assert "Access-Control-Allow-Origin" not in response.headers


@pytest.mark.parametrize(
    "settings, origin, fetch_site",
    [
        ({}, "http://localhost:3000", "same-site"),  # chatterbox-tts-api's frontend on another port
        ({}, "http://localhost:3000", "cross-site"),  # ... calling 127.0.0.1
        ({"cors_origins": "*"}, "https://anything.example", "cross-site"),
        ({"cors_origins": "https://app.example"}, "https://app.example", "cross-site"),
        ({"cors_origins": "https://app.example"}, "http://127.0.0.1:{port}", "same-origin"),  # the dashboard
    ],
)
async def test_allowed_and_same_origin_pages_keep_working(make_client, scripted, settings, origin, fetch_site):
    client = await make_client(engine=scripted, **settings)
    headers = {"Origin": origin.format(port=client.port), "Sec-Fetch-Site": fetch_site}
    response = await client.post("/v1/audio/speech", json={"input": "From a friendly page."}, headers=headers)
    assert response.status == 200, await response.text()


# -- 7. the sentence splitter is linear -------------------------------------------------------

LIMIT = 100_000  # LONG_TEXT_MAX_LENGTH's default
WORST_INPUTS = {
    "dots then words": "." * (LIMIT - 3) + "a b",
    "spaces then a word": " " * (LIMIT - 1) + "a",
    "long dotted words": ("." * 997 + "a. ") * (LIMIT // 1000),
    "initials": ("A." * 4999 + "Ab ") * (LIMIT // 10_001),
    "ellipses": "\u2026" * (LIMIT - 3) + "a b",
    "spaced dashes": ("a" + " " * 995 + "\u2014 b ") * (LIMIT // 1000),
}


@pytest.mark.parametrize("strategy", ["sentence", "paragraph", "word"])
@pytest.mark.parametrize("name", list(WORST_INPUTS))
def test_the_worst_input_at_the_length_limit_splits_in_well_under_a_second(name, strategy):
    text = WORST_INPUTS[name]
    assert len(text) <= LIMIT
    started = time.perf_counter()
    chunks = Chunking(280, strategy, first_length=100).plan(normalize(text))
    elapsed = time.perf_counter() - started
    assert elapsed < 1.0, elapsed
    assert chunks and all(len(chunk) <= 280 for chunk in chunks)


async def test_ping_stays_fast_while_a_worst_case_long_text_is_planned(make_client, scripted):
    client = await make_client(engine=scripted)
    scripted.hold()
    # Earlier tests' garbage collected now: a collection pause mid-measure is not planning on the loop.
    gc.collect()
    job = asyncio.ensure_future(client.post("/audio/speech/long", json={"input": WORST_INPUTS["dots then words"]}))
    pings = []
    while not job.done():
        started = time.monotonic()
        assert (await client.get("/ping")).status == 200
        pings.append(time.monotonic() - started)
    response = await job
    assert response.status == 200, await response.text()
    assert max(pings, default=0) < 0.25, pings
    scripted.release(10_000)


# -- 9. slow clients ----------------------------------------------------------------------------


async def test_a_body_that_stops_arriving_is_a_408_and_the_connection_closes(make_client, scripted):
    client = await make_client(engine=scripted, body_read_timeout=0.3)
    request = (
        f"POST /v1/audio/speech HTTP/1.1\r\nHost: 127.0.0.1:{client.port}\r\n"
        "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{\"input\":"
    ).encode()
    raw, elapsed = await asyncio.to_thread(raw_exchange, client.port, request)
    status, body = status_and_body(raw)
    assert status == 408 and body["error"]["code"] == "body_timeout"
    # 408 is not in errors.HTTP_ERROR_TYPES: its type is the fallback for a client's fault.
    assert body["error"]["type"] == "invalid_request_error", body
    assert elapsed < 2.0, elapsed  # closed, not held for ever
    assert (await client.get("/ping")).status == 200


async def test_a_body_that_keeps_arriving_is_not_cut_off(make_client, scripted):
    client = await make_client(engine=scripted, body_read_timeout=0.3)

    async def trickle():
        body = json.dumps({"input": "Slow but steady."}).encode()
        for n in range(0, len(body), 4):
            yield body[n : n + 4]
            await asyncio.sleep(0.1)  # the trickle itself is what is tested: a slow client

    response = await client.post("/v1/audio/speech", data=trickle(), headers={"Content-Type": "application/json"})
    assert response.status == 200, await response.text()


def stream_without_reading(port: int, text: str) -> socket.socket:
    """A streamed speech request from a client with a tiny receive buffer that reads nothing."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    body = json.dumps({"input": text, "response_format": "pcm"}).encode()
    sock.sendall(
        (
            f"POST /v1/audio/speech/stream HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        + body
    )
    return sock


async def test_a_client_that_stops_reading_a_stream_is_let_go(make_client):
    engine = ScriptedEngine()
    engine.seconds_per_char = 0.5  # 16 KB of audio per character: far more than the socket buffers
    client = await make_client(engine=engine, send_timeout=0.3)
    text = "Words to stream. " * 60
    whole = int(len(text) * engine.seconds_per_char * engine.sample_rate) * 2  # 16-bit PCM
    sock = stream_without_reading(client.port, text)
    server = client.server.runner.server
    deadline = time.monotonic() + 10
    while server.connections == [] and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert server.connections != []
    while server.connections and time.monotonic() < deadline:  # nothing read: the server must give up on it
        await asyncio.sleep(0.05)
    assert server.connections == [], "the server still holds the connection of a client that reads nothing"
    # Letting go of the client ends its request (if it had not ended), so nothing stays queued for it.
    while (await (await client.get("/status/progress")).json())["status"] != "idle":
        assert time.monotonic() < deadline, "the request of a client that was let go is still running"
        await asyncio.sleep(0.05)
    received = 0
    with sock:
        sock.settimeout(10)
        try:
            while chunk := await asyncio.to_thread(sock.recv, 1 << 20):
                received += len(chunk)
        except ConnectionResetError:
            pass
    assert received < whole / 2, (received, whole)


async def test_a_stream_nobody_reads_is_cancelled_before_it_buffers_without_end(make_client):
    """With SEND_TIMEOUT far away, the bytes waiting for the client bound the stream: past
    STREAM_BUFFER_BYTES the request is cancelled and counted so, and the server goes on."""
    engine = ScriptedEngine()
    engine.seconds_per_char = 1.0  # 32 KB of 16-bit audio per character
    client = await make_client(engine=engine, send_timeout=600)
    text = "Words to stream. " * 130  # about 70 MB of audio: twice STREAM_BUFFER_BYTES
    assert len(text) * engine.seconds_per_char * engine.sample_rate * 2 > 2 * STREAM_BUFFER_BYTES
    sock = stream_without_reading(client.port, text)
    deadline = time.monotonic() + 30
    with sock:
        while (stats := await (await client.get("/status/statistics")).json())["cancelled_requests"] != 1:
            assert stats["completed_requests"] == 0, "the whole stream was generated into the server's memory"
            assert time.monotonic() < deadline, stats
            await asyncio.sleep(0.05)
    assert (await client.post("/v1/audio/speech", json={"input": "Next."})).status == 200


async def test_a_stream_read_as_it_comes_may_be_longer_than_the_bound(make_client):
    """STREAM_BUFFER_BYTES bounds the bytes waiting for the client, not the stream: a client
    that reads as the audio comes gets a stream twice as long as the bound, whole."""
    engine = ScriptedEngine()
    engine.seconds_per_char = 1.0  # 32 KB of 16-bit audio per character
    client = await make_client(engine=engine, send_timeout=600)
    text = "Words to stream. " * 130  # about 70 MB of audio: twice STREAM_BUFFER_BYTES
    response = await client.post("/v1/audio/speech/stream", json={"input": text, "response_format": "pcm"})
    assert response.status == 200
    received = 0
    async for piece in response.content.iter_any():
        received += len(piece)
    assert received > 2 * STREAM_BUFFER_BYTES
    stats = await (await client.get("/status/statistics")).json()
    assert (stats["completed_requests"], stats["cancelled_requests"]) == (1, 0)


# -- 10. multipart bodies -----------------------------------------------------------------------


def many_parts(count: int, size: int) -> bytes:
    boundary = "xyzzy"
    part = f"--{boundary}\r\nContent-Disposition: form-data; name=\"junk\"\r\n\r\n".encode() + b"j" * size + b"\r\n"
    return part * count + f"--{boundary}--\r\n".encode()


async def test_a_form_of_thousands_of_parts_is_refused(make_client, scripted):
    client = await make_client(engine=scripted)
    response = await client.post(
        "/voices", data=many_parts(20_000, 1), headers={"Content-Type": "multipart/form-data; boundary=xyzzy"}
    )
    await error_of(response, 400, "too_many_parts")


async def test_skipped_parts_count_against_the_body_limit(make_client, scripted):
    client = await make_client(engine=scripted, max_body_size=64 * 1024)
    # 40 parts of 300 KiB: 12 MiB, more than MAX_BODY_SIZE plus the 10 MiB a voice file may have
    response = await client.post(
        "/voices", data=many_parts(40, 300 * 1024), headers={"Content-Type": "multipart/form-data; boundary=xyzzy"}
    )
    await error_of(response, 413)


async def test_a_voice_file_larger_than_the_body_limit_still_uploads(make_client, scripted):
    client = await make_client(engine=scripted, max_body_size=64 * 1024)
    response = await client.post("/voices", data=voice_form(wav_tone(5.0), "roomy"))  # 240 KB
    assert response.status == 201, await response.text()


# -- 11. undecodable keys and lone surrogates ----------------------------------------------------


@pytest.mark.parametrize("header", [b"X-API-Key: \xff\xfe", b"Authorization: Bearer \xc3\x28key"])
async def test_a_key_that_is_not_utf8_is_a_401(make_client, scripted, header):
    client = await make_client(engine=scripted, api_key="the-right-key-123")
    request = b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n" + header + b"\r\nConnection: close\r\n\r\n"
    raw, _ = await asyncio.to_thread(raw_exchange, client.port, request)
    status, body = status_and_body(raw)
    assert status == 401 and body["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize(
    "path, body",
    [
        ("/v1/audio/speech", '{"input": "Hi \\ud800 there."}'),
        ("/audio/speech/long", '{"input": "Hi \\udfff there."}'),
        ("/audio/speech/long", '{"input": "Fine.", "display_name": "\\ud83d"}'),
    ],
)
async def test_a_lone_surrogate_is_a_400(make_client, scripted, path, body):
    client = await make_client(engine=scripted)
    response = await client.post(path, data=body, headers={"Content-Type": "application/json"})
    await error_of(response, 400)


# -- 13. what the protocol layer says -------------------------------------------------------------


async def test_the_server_header_names_no_versions(make_client, scripted):
    client = await make_client(engine=scripted)
    for response in (await client.get("/ping"), await client.get("/no/such/route")):
        assert response.headers["Server"] == "chatterbox-status"


@pytest.fixture
async def voice_download(make_client, scripted):
    client = await make_client(engine=scripted)
    clip = wav_tone(2.0)
    assert (await client.post("/voices", data=voice_form(clip, "ranged"))).status == 201
    return client, "/voices/ranged/download", clip


async def test_an_empty_suffix_range_is_416(voice_download):
    client, path, clip = voice_download
    response = await client.get(path, headers={"Range": "bytes=-0"})
    assert response.status == 416
    assert response.headers["Content-Range"] == f"bytes */{len(clip)}"


async def test_a_non_matching_if_range_gets_the_whole_file(voice_download):
    client, path, clip = voice_download
    whole = await client.get(path)
    etag, modified = whole.headers["ETag"], whole.headers["Last-Modified"]
    for validator in ('"some-other-tag"', "Mon, 01 Jan 2001 00:00:00 GMT", "Fri, 01 Jan 2100 00:00:00 GMT"):
        response = await client.get(path, headers={"Range": "bytes=0-9", "If-Range": validator})
        assert response.status == 200, validator
        assert await response.read() == clip
    for validator in (etag, modified):  # the file's own validators: the range it asked for
        response = await client.get(path, headers={"Range": "bytes=0-9", "If-Range": validator})
        assert response.status == 206, validator
        assert await response.read() == clip[:10]


# -- 14. orphans, guessed keys, and the dashboard's ?api= -----------------------------------------


async def test_a_clip_left_by_a_crash_is_swept_at_start(tmp_path):
    library = VoiceLibrary(tmp_path)
    kept = await library.add("kept", wav_tone(2.0), "kept.wav")
    orphan = tmp_path / "0123456789abcdef0123456789abcdef.wav"  # written, then the index never was
    orphan.write_bytes(wav_tone(2.0))
    temporary = tmp_path / ".index.json.abc123.tmp"
    temporary.write_bytes(b"{")
    again = VoiceLibrary(tmp_path)
    assert [v.name for v in again.voices()] == ["kept"]
    assert not orphan.exists() and not temporary.exists()
    assert again.path(kept).is_file()


async def test_repeated_wrong_keys_are_slowed_down(make_client, scripted):
    key = "the-right-key-123"
    client = await make_client(engine=scripted, api_key=key)
    statuses = [(await client.get("/status", headers={"X-API-Key": f"guess-{n}"})).status for n in range(10)]
    assert statuses == [401] * 10
    throttled = await client.get("/status", headers={"X-API-Key": key})
    await error_of(throttled, 429, "too_many_failed_keys")
    assert 1 <= int(throttled.headers["Retry-After"]) <= 60
    assert (await client.get("/ping")).status == 200  # the open paths stay open


def test_the_throttle_forgets_old_failures_and_stays_bounded():
    now = [0.0]
    throttle = auth.FailureThrottle(limit=3, window_s=10, max_addresses=100, clock=lambda: now[0])
    for second in range(3):  # three wrong keys, a second apart
        now[0] = float(second)
        throttle.record("1.2.3.4")
    assert throttle.retry_after("1.2.3.4") == pytest.approx(8)  # until the first of them is window_s old
    assert throttle.retry_after("5.6.7.8") is None
    now[0] = 10.0  # the first is window_s old: over, so never a 429 saying "try again in 0 s"
    assert throttle.retry_after("1.2.3.4") is None
    for n in range(1000):
        throttle.record(f"10.0.{n // 256}.{n % 256}")
    assert len(throttle._failures) == 100
    for _ in range(3):  # an address new to the full table is still slowed down: the one idle longest made room
        throttle.record("9.9.9.9")
    assert throttle.retry_after("9.9.9.9") == pytest.approx(10)


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node to run the dashboard's module")
@pytest.mark.parametrize(
    "base, answer, expected",
    [
        (None, False, True),  # the page's own server
        ("http://127.0.0.1:4123/", False, True),  # ?api= naming the page's own origin
        ("https://evil.example/", False, False),
        ("https://evil.example/", True, True),
    ],
)
def test_the_dashboard_asks_before_sending_a_key_elsewhere(base, answer, expected):
    script = (
        f"import {{ keyMayGo }} from {json.dumps((WEB_DIR / 'api.js').as_uri())};\n"
        "const asked = [];\n"
        f"const ok = keyMayGo({json.dumps(base)}, 'http://127.0.0.1:4123', (o) => {{ asked.push(o); return {json.dumps(answer)}; }});\n"
        "console.log(JSON.stringify({ ok, asked }));\n"
    )
    result = subprocess.run(["node", "--input-type=module", "-e", script], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout)
    assert outcome["ok"] is expected
    assert outcome["asked"] == (["https://evil.example"] if base and "evil" in base else [])


# -- chunk files are data, never code --------------------------------------------------------

UNPICKLED: list[str] = []


def _record_unpickling(marker: str) -> str:
    UNPICKLED.append(marker)
    return marker


class _Payload:
    """A pickled object whose loading runs code (here: records that it ran)."""

    def __reduce__(self):
        return _record_unpickling, ("ran",)


def test_a_chunk_file_holding_a_pickle_is_refused_without_running_it(tmp_path):
    import numpy as np

    from chatterbox_status.longtext.files import read_chunk

    path = tmp_path / "chunk_0000.npy"
    np.save(path, np.array([_Payload()], dtype=object), allow_pickle=True)
    assert read_chunk(path, None) is None  # generated again, as a corrupt chunk is
    assert UNPICKLED == []


async def test_the_stream_bound_counts_every_piece_still_unread_and_only_those():
    """The bound's bookkeeping, piece by piece: what the client has read no longer counts,
    and every piece it has not read does, however the reads and the writes interleave."""
    from chatterbox_status.exceptions import Cancelled
    from chatterbox_status.pipeline import AudioStream

    stream = AudioStream(limit=10)
    stream.put(b"a" * 4)
    stream.put(b"b" * 4)
    assert await stream.get() == b"a" * 4  # 4 unread now
    stream.put(b"c" * 6)  # 10 unread: at the bound, not past it
    assert stream.waiting == 10
    with pytest.raises(Cancelled, match="the client left 10 bytes of the stream unread"):
        stream.put(b"d")
    assert await stream.get() == b"b" * 4
    stream.put(b"d" * 4)  # 10 again
    stream.end()
    assert [await stream.get() for _ in range(3)] == [b"c" * 6, b"d" * 4, None]
    assert stream.waiting == 0
