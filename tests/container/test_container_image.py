"""The image a Docker user runs: non-root, configured by its environment, serving speech.

The fixtures (conftest.py) build the repository's Dockerfile and start the image's own
command; these tests look at the image as `docker run` would see it and talk to the
server inside it over HTTP.
"""

from __future__ import annotations

import io
import json
import subprocess
import time
import wave
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import http

from .podman import run, run_in

ROOT = Path(__file__).resolve().parents[2]
STATE_SETTINGS = ("VOICE_LIBRARY_DIR", "DATA_DIR", "MODEL_CACHE_DIR")


def env_of(image: dict) -> dict[str, str]:
    return dict(item.split("=", 1) for item in image["Config"]["Env"])


def decoded(audio: bytes) -> tuple[float, float]:
    """(seconds, RMS level) of 24 kHz mono 16-bit WAV bytes."""
    with wave.open(io.BytesIO(audio)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (24_000, 1, 2)
        samples = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)
    return len(samples) / 24_000, float(np.sqrt(np.mean(samples**2)))


def test_the_image_runs_as_a_user_that_is_not_root(image, container):
    user = image["Config"]["User"]
    assert user and user.split(":")[0] not in ("0", "root"), f"image user is {user!r}"
    assert run(run_in(container, ["id", "-u"])).strip() != "0"


def test_the_image_serves_on_all_interfaces_and_keeps_its_state_on_volumes(image):
    env = env_of(image)
    assert (env["HOST"], env["PORT"]) == ("0.0.0.0", "4123")
    assert "4123/tcp" in image["Config"]["ExposedPorts"]
    assert set(image["Config"]["Volumes"]) == {env[name] for name in STATE_SETTINGS}


def test_compose_keeps_every_volume_of_the_image_and_publishes_on_the_host_loopback_only(image):
    services = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    assert set(services) == {"cpu", "gpu"}
    for name, service in services.items():
        mounted = {volume.split(":")[1] for volume in service["volumes"]}
        assert mounted == set(image["Config"]["Volumes"]), name
        assert all(port.startswith("127.0.0.1:") for port in service["ports"]), name


def test_the_image_user_can_write_every_volume(image, container):
    env = env_of(image)
    for name in STATE_SETTINGS:
        check = run_in(container, ["test", "-w", env[name]])
        assert subprocess.run(check, capture_output=True, timeout=60).returncode == 0, f"{name}={env[name]} is read-only"


def test_the_server_from_the_image_speaks_and_the_status_api_counts_it(server):
    base, port = server
    status, _, raw = http("GET", f"{base}/health")
    health = json.loads(raw)
    assert (status, health["status"], health["engine"]["name"]) == (200, "healthy", "hibari"), health
    _, _, raw = http("GET", f"{base}/config")
    assert json.loads(raw)["server"] == {"host": "127.0.0.1", "port": port, "version": health["version"]}

    _, _, raw = http("GET", f"{base}/status/statistics")
    before = json.loads(raw)
    status, headers, audio = http("POST", f"{base}/v1/audio/speech", {"input": "Hello from inside a container."}, timeout=120)
    assert status == 200, audio[:500]
    assert headers["Content-Type"].split(";")[0] == "audio/wav"
    seconds, level = decoded(audio)
    assert seconds > 1.0
    assert level > 300, "the speech is silent"

    _, _, raw = http("GET", f"{base}/status/statistics")
    after = json.loads(raw)
    assert after["total_requests"] == before["total_requests"] + 1
    assert after["completed_requests"] == before["completed_requests"] + 1


def test_the_image_healthcheck_passes_on_the_running_server_and_fails_without_one(image, container, server):
    kind, script = image["Healthcheck"]["Test"]
    assert kind == "CMD-SHELL"
    _, port = server
    check = run_in(container, ["sh", "-c", script], {"PORT": str(port)})
    assert subprocess.run(check, capture_output=True, timeout=60).returncode == 0
    closed = run_in(container, ["sh", "-c", script], {"PORT": "1"})
    assert subprocess.run(closed, capture_output=True, timeout=60).returncode != 0


def test_a_long_text_job_from_the_image_keeps_its_audio_on_the_data_volume(image, container, server):
    base, _ = server
    text = "The first sentence of a long text. And here is the second one, spoken in its own chunk."
    status, _, raw = http("POST", f"{base}/v1/audio/speech/long", {"input": text, "response_format": "wav", "chunk_size": 50})
    assert status == 200, raw[:500]
    job_id = json.loads(raw)["job_id"]
    deadline = time.monotonic() + 120
    while (view := json.loads(http("GET", f"{base}/v1/audio/speech/long/{job_id}")[2]))["status"] not in ("completed", "failed"):
        if time.monotonic() > deadline:
            pytest.fail(f"job not finished in 120s: {view}")
        time.sleep(0.05)  # poll interval, not synchronisation: the deadline loop decides
    assert view["status"] == "completed", view
    status, _, audio = http("GET", f"{base}/v1/audio/speech/long/{job_id}/download")
    assert status == 200, audio[:500]
    seconds, level = decoded(audio)
    assert seconds > 2.0 and level > 300

    files = run(run_in(container, ["find", env_of(image)["DATA_DIR"], "-type", "f"])).split()
    assert any(job_id in path for path in files), files
