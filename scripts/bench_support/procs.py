"""Server subprocesses for the benchmark: free ports, start, readiness, stop, logs.

Every server binds 127.0.0.1 only (a redis-server of the benchmark's own too). On Linux each child gets PR_SET_PDEATHSIG, so a
benchmark that dies (or is killed) never leaves a server behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import aiohttp

HOST = "127.0.0.1"
PR_SET_PDEATHSIG = 1
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class ServerProcess:
    """One server subprocess whose output goes to a log file."""

    def __init__(self, name: str, argv: Sequence[str], port: int, log_path: Path, cwd: Path, env: dict[str, str]) -> None:
        self.name = name
        self.argv = list(argv)
        self.port = port
        self.log_path = log_path
        self.cwd = cwd
        self.env = env
        self.proc: subprocess.Popen | None = None
        self._log = None

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> None:
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            self.argv,
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )

    def exited(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    async def wait_ready(self, path: str, is_ready: Callable[[int, bytes], bool], timeout: float) -> float:
        """Poll ``path`` until ``is_ready(status, body)``; returns the seconds it took."""
        started = time.perf_counter()
        deadline = started + timeout
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            for _ in range(int(timeout / 0.1) + 1):
                if self.exited() is not None:
                    raise RuntimeError(f"{self.name} exited with {self.exited()} during start:\n{self.log_tail()}")
                with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError, OSError):
                    async with session.get(self.base_url + path) as resp:
                        if is_ready(resp.status, await resp.read()):
                            return time.perf_counter() - started
                if time.perf_counter() >= deadline:
                    break
                await asyncio.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f}s:\n{self.log_tail()}")

    def stop(self, grace: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.proc.returncode


def redis_server(directory: Path, port: int) -> ServerProcess:
    """A redis-server of the benchmark's own, not started: loopback only, its files in
    ``directory``, appendonly as README.rst runs a cluster's Redis, no RDB snapshots. It is
    a child like the other servers (stopped by its pid, gone with the benchmark), so no
    other Redis on the machine is ever touched."""
    if not Path(REDIS_SERVER).exists():
        raise RuntimeError(f"{REDIS_SERVER} not found: the cluster phase needs redis-server (Debian: apt-get install redis-server)")
    argv = [
        REDIS_SERVER, "--port", str(port), "--bind", HOST, "--dir", str(directory),
        "--appendonly", "yes", "--save", "", "--daemonize", "no",
    ]
    return ServerProcess("redis-server", argv, port, directory / "redis.log", directory, child_env())


def redis_version() -> str | None:
    try:
        return subprocess.run([REDIS_SERVER, "--version"], capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


async def wait_redis(server: ServerProcess, timeout: float) -> float:
    """PING ``server`` until it answers PONG (Redis speaks no HTTP, so not ``wait_ready``);
    returns the seconds it took."""
    started = time.perf_counter()
    deadline = started + timeout
    for _ in range(int(timeout / 0.05) + 1):
        if server.exited() is not None:
            raise RuntimeError(f"{server.name} exited with {server.exited()} during start:\n{server.log_tail()}")
        with contextlib.suppress(OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
            reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, server.port), 1)
            try:
                writer.write(b"PING\r\n")
                if (await asyncio.wait_for(reader.readline(), 1)).startswith(b"+PONG"):
                    return time.perf_counter() - started
            finally:
                writer.close()
        if time.perf_counter() >= deadline:
            break
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{server.name} not answering PING after {timeout:.0f}s:\n{server.log_tail()}")


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(extra or {})
    return env


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int, tid: int | None = None) -> float | None:
    """User plus system CPU seconds of a process, or of one of its threads (Linux /proc)."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # fields[0] is the state (field 3 of stat); utime and stime are fields 14 and 15
    return (int(fields[11]) + int(fields[12])) / _TICK
