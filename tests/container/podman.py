"""Running podman and buildah from the tests: one command's output, or argv for inside a container."""

from __future__ import annotations

import subprocess

import pytest


def run(args: list[str], timeout: float = 120) -> str:
    """Stdout of a podman/buildah command; its output in the failure when it fails."""
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        pytest.fail(f"{' '.join(args[:3])} ... exited {done.returncode}:\n{(done.stdout + done.stderr)[-6000:]}")
    return done.stdout


def run_in(container: str, command: list[str], env: dict[str, str] | None = None) -> list[str]:
    """The argv that runs COMMAND inside CONTAINER as the image configures it (user, env)."""
    envs = [f"--env={k}={v}" for k, v in (env or {}).items()]
    return ["buildah", "run", "--isolation=chroot", *envs, container, "--", *command]


def image_id(name: str) -> str | None:
    """The id of the image NAME, or None when there is none."""
    found = subprocess.run(["podman", "image", "inspect", "--format", "{{.Id}}", name], capture_output=True, text=True)
    return found.stdout.strip() if found.returncode == 0 else None
