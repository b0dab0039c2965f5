"""`chatterbox-status say` and `serve` as a user runs them, in a separate process."""

from __future__ import annotations

import concurrent.futures
import json
import re
import signal
import socket
import subprocess
import sys
import time
import wave
from pathlib import Path

import pytest
from helpers import (
    clean_environ,
    free_port,
    http,
    start_serve,
    stop,
    wait_healthy,
)


def run_cli(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "chatterbox_status", *args],
        cwd=cwd,
        env=clean_environ(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# --- say -----------------------------------------------------------------------------


def test_say_writes_a_wav_and_draws_a_progress_bar_to_100(tmp_path):
    out = tmp_path / "OUT.wav"
    result = run_cli("say", "Hello from the command line.", "-o", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr

    with wave.open(str(out)) as w:
        rate, channels, frames = w.getframerate(), w.getnchannels(), w.getnframes()
        assert w.getsampwidth() == 2
    assert (rate, channels) == (24_000, 1)
    assert frames / rate > 1.0  # a sentence of speech, not a click

    stderr = result.stderr
    assert "100.0%" in stderr
    percentages = [float(p) for p in re.findall(r"(\d+\.\d)%", stderr)]
    assert any(0.0 < p < 100.0 for p in percentages), stderr  # the bar moved through the middle
    assert percentages == sorted(percentages), percentages  # and never went backwards
    assert re.search(r"Generating audio for chunk 1/\d+", stderr), stderr
    assert "Completed" in stderr
    assert f"wrote {out}" in stderr


def test_say_reads_text_from_standard_input(tmp_path):
    out = tmp_path / "stdin.wav"
    result = subprocess.run(
        [sys.executable, "-m", "chatterbox_status", "say", "-", "-o", str(out)],
        cwd=tmp_path,
        env=clean_environ(),
        input="This sentence arrives on standard input.",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    with wave.open(str(out)) as w:
        assert w.getnframes() / w.getframerate() > 1.0


def test_say_with_an_unknown_voice_fails_naming_the_voice(tmp_path):
    out = tmp_path / "voice.wav"
    result = run_cli("say", "Hello.", "--voice", "no-such-voice-xyz", "-o", str(out), cwd=tmp_path)
    assert result.returncode != 0
    assert "no-such-voice-xyz" in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()


def test_say_to_an_unsupported_format_fails_clearly(tmp_path):
    out = tmp_path / "out.xyz"
    result = run_cli("say", "Hello.", "-o", str(out), cwd=tmp_path)
    assert result.returncode != 0
    assert "xyz" in result.stderr
    assert "not supported" in result.stderr
    assert "wav" in result.stderr  # says what would work
    assert "Traceback" not in result.stderr
    assert not out.exists()


# --- serve ---------------------------------------------------------------------------


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_serve_answers_speech_and_stops_on_signal(tmp_path, stop_signal):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    process, log_path = start_serve(tmp_path, port)
    try:
        health = wait_healthy(base, process, log_path, deadline_s=60)
        assert health["model_loaded"] is True

        status, headers, audio = http("POST", f"{base}/v1/audio/speech", {"input": "Hello."}, timeout=60)
        assert status == 200, audio[:500]
        assert headers["Content-Type"].split(";")[0] == "audio/wav"
        assert headers.get("X-Request-ID")
        wav_path = tmp_path / "hello.wav"
        wav_path.write_bytes(audio)
        with wave.open(str(wav_path)) as w:
            assert (w.getframerate(), w.getnchannels()) == (24_000, 1)
            assert w.getnframes() > 0

        process.send_signal(stop_signal)
        try:
            returncode = process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pytest.fail(f"server still running 10 s after {stop_signal.name}")
        output = log_path.read_text(errors="replace")
        assert returncode == 0, output
        assert "Traceback" not in output, output
    finally:
        stop(process)


def test_serve_help_lists_the_main_flags(tmp_path):
    result = run_cli("serve", "--help", cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    for flag in ("--host", "--port", "--engine", "--device"):
        assert re.search(rf"(?<![\w-]){flag}(?![\w-])", result.stdout), (flag, result.stdout)
    # The help names the environment variable behind each flag.
    for env_name in ("HOST", "PORT", "ENGINE", "DEVICE"):
        assert re.search(rf"env\s+{env_name}\b", result.stdout), (env_name, result.stdout)


def test_serve_on_a_port_in_use_fails_with_a_clear_message(tmp_path):
    """A busy port is an everyday mistake: one line naming the port, no traceback, no false claim."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("serve", "--host", "127.0.0.1", "--port", str(port), cwd=tmp_path, timeout=60)
    assert result.returncode != 0
    assert str(port) in result.stderr, result.stderr
    assert "in use" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert "listening on" not in result.stderr, result.stderr  # it never listened


LONG_TEXT = " ".join(
    f"Paragraph {n} describes a quiet harbour town where the boats come home at dusk." for n in range(1, 45)
)


@pytest.mark.parametrize("shutdown_timeout", ["30", "0"])
def test_sigterm_mid_request_finishes_or_cancels_it_then_exits_cleanly(tmp_path, shutdown_timeout):
    """Within SHUTDOWN_TIMEOUT the request finishes; past it, it ends as cancelled."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "chatterbox_status", "serve", "--port", str(port), "--max-chunk-length", "100"],
            cwd=tmp_path,
            env={**clean_environ(), "SHUTDOWN_TIMEOUT": shutdown_timeout},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_healthy(base, process, log_path, deadline_s=60)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(http, "POST", f"{base}/v1/audio/speech", {"input": LONG_TEXT}, 120)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                _, _, raw = http("GET", f"{base}/status/progress")
                progress = json.loads(raw)
                if progress["status"] == "generating_audio" and progress["current_chunk"] < progress["total_chunks"]:
                    break
            else:
                pytest.fail("the request never showed up as generating")
            process.send_signal(signal.SIGTERM)
            status, _, audio = pending.result(timeout=120)
        assert process.wait(timeout=30) == 0
        assert "Traceback" not in log_path.read_text(errors="replace")
        if shutdown_timeout == "0":
            assert status == 409
            assert json.loads(audio)["error"]["code"] == "cancelled"
            return
        assert status == 200  # the in-flight request was allowed to finish
        wav_path = tmp_path / "long.wav"
        wav_path.write_bytes(audio)
        with wave.open(str(wav_path)) as w:
            assert w.getnframes() / w.getframerate() > 60  # the whole text, not a truncated part
    finally:
        stop(process)
