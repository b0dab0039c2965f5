"""The README's first two commands work on a fresh clone of the committed tree.

A clone of HEAD (not the working tree) proves that the committed files suffice:
`scripts/serve` bootstraps its own .venv and serves speech, and `scripts/test` runs the
suite through tox. The inner test run gets CHATTERBOX_STATUS_FRESH_CLONE=1, which makes
this module skip itself there, so it can never recurse into another clone.
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
import wave
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import free_port, http, tail, wait_healthy

from chatterbox_status.config import Settings

GUARD = "CHATTERBOX_STATUS_FRESH_CLONE"

pytestmark = pytest.mark.skipif(
    bool(os.environ.get(GUARD)), reason=f"{GUARD} is set: already inside a fresh-clone run"
)

ROOT = Path(__file__).resolve().parents[1]
SETTING_ENV_NAMES = {f.metadata["env"] for f in dataclasses.fields(Settings)}
HEALTHY_WITHIN_S = 600  # includes creating .venv and pip-installing the package
SUITE_WITHIN_S = 900


# --- README --------------------------------------------------------------------------

CODE_DIRECTIVE = re.compile(r"^\.\.\s+(code-block|code|sourcecode)::")


def first_literal_block(text: str) -> tuple[int, list[str]] | None:
    """(line number, lines) of the first `::` literal block or code directive in RST text."""
    lines = text.splitlines()
    for number, line in enumerate(lines):
        stripped = line.strip()
        directive = bool(CODE_DIRECTIVE.match(stripped))
        literal = stripped.endswith("::") and not stripped.startswith("..")
        if not (directive or literal):
            continue
        block: list[str] = []
        indent = None
        for following in lines[number + 1 :]:
            if not following.strip():
                continue
            depth = len(following) - len(following.lstrip())
            if indent is None:
                if depth == 0:
                    break
                if directive and following.strip().startswith(":"):
                    continue  # a directive option such as :caption:
                indent = depth
            elif depth < indent:
                break
            block.append(following.strip())
        if block:
            return number + 1, block
    return None


def commands_in(block: list[str]) -> list[str]:
    """The command name on each line of a shell block: prompts and comments dropped."""
    names = []
    for line in block:
        line = re.sub(r"^\$\s*", "", line).split("#", 1)[0].strip()
        if line:
            names.append(re.sub(r"^\./", "", line.split()[0]))
    return names


def test_readme_starts_with_scripts_serve_and_scripts_test():
    readme = (ROOT / "README.rst").read_text(encoding="utf-8")
    found = first_literal_block(readme)
    assert found is not None, "README.rst has no literal (::) or code block"
    line, block = found
    commands = commands_in(block)
    assert commands[:2] == ["scripts/serve", "scripts/test"], (
        f"first code block of README.rst (line {line}) should start with scripts/serve then "
        f"scripts/test; it has {commands}"
    )


# --- fresh clone ---------------------------------------------------------------------


def clone_environ(**extra: str) -> dict[str, str]:
    """The outer environment without this checkout's venv, its tox run (TOX_WORK_DIR would
    make the clone's tox install into this checkout's envs) and server settings."""
    own_venv_bin = str(Path(sys.executable).parent)
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in SETTING_ENV_NAMES
        and k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PYTHONSAFEPATH")
        and not k.startswith("TOX_")
    }
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != own_venv_bin)
    env.update(extra)
    return env


def start(args: list[str], cwd: Path, env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """Start ARGS in its own process group, output to LOG_PATH, so teardown can kill it all."""
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            args, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )


def kill_group(process: subprocess.Popen) -> None:
    """Kill the process group this test started (bootstrap pip, tox, pytest, server)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass


@pytest.fixture(scope="module")
def fresh_clone(tmp_path_factory) -> Iterator[Path]:
    """A `git clone` of this repository's committed HEAD, shared by the tests below."""
    clone = tmp_path_factory.mktemp("fresh") / "chatterbox-status"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True, timeout=120)
    yield clone


def test_scripts_serve_in_a_fresh_clone_serves_speech(fresh_clone, tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "serve.log"
    process = start(["scripts/serve", "--port", str(port)], fresh_clone, clone_environ(), log_path)
    try:
        wait_healthy(base, process, log_path, HEALTHY_WITHIN_S)

        status, headers, audio = http("POST", f"{base}/v1/audio/speech", {"input": "Hello from a fresh clone."}, timeout=120)
        assert status == 200, audio[:500]
        assert headers["Content-Type"].split(";")[0] == "audio/wav"
        wav_path = tmp_path / "speech.wav"
        wav_path.write_bytes(audio)
        with wave.open(str(wav_path)) as w:
            assert (w.getframerate(), w.getnchannels()) == (24_000, 1)
            assert w.getnframes() / w.getframerate() > 0.5
        assert (fresh_clone / ".venv" / "bin" / "chatterbox-status").exists()  # bootstrapped its own venv
    finally:
        kill_group(process)


def test_scripts_test_in_a_fresh_clone_runs_pytest(fresh_clone, tmp_path):
    log_path = tmp_path / "test.log"
    env = clone_environ(
        **{
            GUARD: "1",
            # tox.ini passes only CI through; let the guard reach the inner pytest too.
            "TOX_OVERRIDE": f"testenv:tests.pass_env+={GUARD}",
        }
    )
    process = start(["scripts/test", "-e", "tests", "--", "tests/test_text.py"], fresh_clone, env, log_path)
    try:
        try:
            returncode = process.wait(timeout=SUITE_WITHIN_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"scripts/test did not finish within {SUITE_WITHIN_S}s:\n{tail(log_path)}")
        output = log_path.read_text(errors="replace")
        assert returncode == 0, tail(log_path)
        assert re.search(r"^=*\s*\d+ passed\b", output, re.MULTILINE), tail(log_path)
        assert not re.search(r"\b\d+ (failed|error)", output), tail(log_path)
    finally:
        kill_group(process)
