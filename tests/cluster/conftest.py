"""A real redis-server and real server processes sharing it, for the cluster tests.

Each test starts its own redis-server on a free loopback port in its temporary directory
(appendonly, so a restart keeps what was written) and ends it by pid; nodes are
``chatterbox-status serve --redis-url ...`` processes on the embedded voice, each in a
directory of its own, or apps in the test's own process (``start_app``).
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import build_app, core_of
from doubles import ScriptedEngine
from helpers import clean_environ, free_port, http, start_serve, stop, tail, wait_healthy

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
PR_SET_PDEATHSIG = 1
LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


def end_with_the_test() -> None:
    """In the redis-server's child before it runs: the kernel sends it SIGTERM when the test's
    process dies without its teardown (a mutation run's timeout kills it), so no redis-server
    outlives its test."""
    if LIBC is not None:
        LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class RedisServer:
    """One redis-server of a test's own; ``stop`` and ``start`` again keep its data."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
             "--appendonly", "yes", "--save", "", "--daemonize", "no", "--logfile", str(self.directory / "redis.log")],
            preexec_fn=end_with_the_test,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"redis-server exited with {self.process.returncode}:\n{tail(self.directory / 'redis.log')}")
            if self.ping():
                return
            time.sleep(0.05)  # poll interval; the deadline decides
        pytest.fail(f"redis-server did not answer within 20 s:\n{tail(self.directory / 'redis.log')}")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """SIGTERM: redis-server flushes its append-only file and exits."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


class Node:
    """One server process of the cluster: ``chatterbox-status serve`` on the embedded voice."""

    def __init__(self, directory: Path, redis_url: str, *args: str) -> None:
        directory.mkdir()
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.process, self.log_path = start_serve(directory, self.port, "--engine", "hibari", "--redis-url", redis_url, *args)
        self.name = ""

    def wait_healthy(self) -> None:
        self.name = wait_healthy(self.base, self.process, self.log_path, deadline_s=120)["event_log"]["node"]

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
        status, _, raw = http(method, self.base + path, body, timeout=60)
        return status, raw

    def json(self, method: str, path: str, body: dict | None = None) -> dict:
        status, raw = self.call(method, path, body)
        assert status == 200, f"{method} {path}: {status} {raw[:500]!r}\n{tail(self.log_path)}"
        return json.loads(raw)

    def statistics(self) -> dict:
        return self.json("GET", "/status/statistics")

    def stop(self) -> None:
        stop(self.process)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def start_node(tmp_path: Path, redis_server: RedisServer) -> Iterator:
    """Start a node on the test's Redis (``start_node("a", *flags)``); every one is stopped."""
    nodes: list[Node] = []

    def start(name: str, *args: str) -> Node:
        node = Node(tmp_path / name, redis_server.url, *args)
        nodes.append(node)  # stopped at the end even if it never became healthy
        node.wait_healthy()
        return node

    try:
        yield start
    finally:
        for node in nodes:
            node.stop()


class Worker:
    """One engine worker of the cluster: ``tests/cluster/gated_worker.py`` (the product's
    worker on the GatedEngine double, whose HOLD chunks wait for ``gate``)."""

    def __init__(self, directory: Path, redis_url: str, gate: Path, *flags: str) -> None:
        directory.mkdir()
        self.log_path = directory / "worker.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(Path(__file__).with_name("gated_worker.py")), str(gate), *flags, "--redis-url", redis_url],
                cwd=directory, env=clean_environ(), stdout=log, stderr=subprocess.STDOUT,
            )

    def stop(self) -> None:
        stop(self.process)


@pytest.fixture
def start_worker(tmp_path: Path, redis_server: RedisServer) -> Iterator:
    """Start a gated engine worker on the test's Redis (``start_worker("w1", gate, *flags)``);
    every one is stopped."""
    workers: list[Worker] = []

    def start(name: str, gate: Path, *flags: str) -> Worker:
        worker = Worker(tmp_path / name, redis_server.url, gate, *flags)
        workers.append(worker)
        return worker

    try:
        yield start
    finally:
        for worker in workers:
            worker.stop()


@pytest.fixture
def start_app(aiohttp_client, tmp_path: Path, redis_server: RedisServer):
    """A node of the cluster in the test's own process (where mutation testing reaches it), on a
    ScriptedEngine: ``await start_app("a", engine, **config)``; its data lives in ``tmp_path / name``."""
    engines: list[ScriptedEngine] = []

    async def start(name: str, engine: ScriptedEngine, **config):
        engines.append(engine)
        app = build_app(
            engine, tmp_path / name / "data", tmp_path / name / "voices", {"redis_url": redis_server.url},
            redis_url=redis_server.url, silence_padding_ms=0, **config,
        )
        client = await aiohttp_client(app)
        await asyncio.wait_for(core_of(client).worker.wait_loaded(), 30)
        return client

    yield start
    for engine in engines:  # a failed test must not leave an engine thread waiting
        engine.load_gate.set()
        engine.release(10_000)


async def eventually(condition, what: str, deadline_s: float = 20.0):
    """Poll ``condition`` (another node's disk, or a lease that lapses) until it holds."""
    deadline = time.monotonic() + deadline_s
    while not (value := condition()):
        assert time.monotonic() < deadline, f"not within {deadline_s} s: {what}"
        await asyncio.sleep(0.05)  # poll interval; the deadline decides
    return value
