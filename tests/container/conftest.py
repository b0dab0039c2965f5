"""The container image: the repository's Dockerfile built with podman, run with buildah.

These tests belong to the tox env `container`, which installs podman, buildah and
debootstrap when missing, makes a local Debian base image (ensure_podman.sh) and names it
in CHATTERBOX_STATUS_BASE_IMAGE; any other run (the `tests` env, a plain `pytest`) does
not collect this folder. No registry is reachable and `podman run` cannot set rlimits
here, so the image is built FROM that base and run with `buildah run --isolation=chroot`,
which shares the host's network. So that a test server is never reachable from outside
this machine, it runs the image's own command with HOST=127.0.0.1 and a free PORT; the
image's 0.0.0.0 default is checked in its config instead.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import free_port, wait_healthy

from .podman import image_id, run, run_in

ROOT = Path(__file__).resolve().parents[2]
BASE_IMAGE = os.environ.get("CHATTERBOX_STATUS_BASE_IMAGE", "")
IMAGE = "localhost/chatterbox-status:test"
# pip inside the build must trust this machine's CA bundle: a fact of this environment,
# so it is mounted here rather than written into the Dockerfile.
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
BUILD_WITHIN_S = 900
HEALTHY_WITHIN_S = 120

BUILD_SECONDS = pytest.StashKey[float]()

if not BASE_IMAGE:  # not the `container` env
    collect_ignore_glob = ["test_*.py"]


def pytest_terminal_summary(terminalreporter, config) -> None:
    if BUILD_SECONDS in config.stash:
        terminalreporter.write_line(f"container: podman build took {config.stash[BUILD_SECONDS]:.0f}s")


@pytest.fixture(scope="session")
def image(request) -> dict:
    """The image built from the repository's Dockerfile; its `podman image inspect` entry."""
    args = ["podman", "build", "--isolation=chroot", "--network=host", "--format=docker"]
    args += ["--build-arg", f"BASE_IMAGE={BASE_IMAGE}", "--tag", IMAGE]
    if Path(CA_BUNDLE).is_file():
        args += ["--volume", f"{CA_BUNDLE}:{CA_BUNDLE}:ro"]
    previous = image_id(IMAGE)
    started = time.monotonic()
    run([*args, str(ROOT)], timeout=BUILD_WITHIN_S)
    request.config.stash[BUILD_SECONDS] = time.monotonic() - started
    built = json.loads(run(["podman", "image", "inspect", IMAGE]))[0]
    if previous and previous != built["Id"]:
        # The image this tag named before: removed so that reruns do not pile up images;
        # if a container still uses it, it stays, and that is not this test's business.
        subprocess.run(["podman", "image", "rm", previous], capture_output=True, timeout=120)
    return built


@pytest.fixture(scope="session")
def container(image, tmp_path_factory) -> Iterator[str]:
    """A working container of the image; removed (by its id) at the end."""
    cidfile = tmp_path_factory.mktemp("container") / "cid"
    run(["buildah", "from", "--pull=never", f"--cidfile={cidfile}", image["Id"]])
    container_id = cidfile.read_text().strip()
    try:
        yield container_id
    finally:
        run(["buildah", "rm", container_id])


@pytest.fixture(scope="session")
def server(image, container, tmp_path_factory) -> Iterator[tuple[str, int]]:
    """The image's own command (ENTRYPOINT + CMD) serving; (base URL on 127.0.0.1, port)."""
    port = free_port()
    command = image["Config"]["Entrypoint"] + image["Config"]["Cmd"]
    log_path = tmp_path_factory.mktemp("container") / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            run_in(container, command, {"HOST": "127.0.0.1", "PORT": str(port)}),
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, process, log_path, HEALTHY_WITHIN_S)
        yield base, port
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # the group this fixture started: buildah and the server
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
