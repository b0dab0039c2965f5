"""The real chatterbox-tts library behind the server, on tiny random-weight checkpoints.

Run with ``tox -e chatterbox``, which installs chatterbox-tts with
tests/chatterbox_support/install.sh and sets CHATTERBOX_STATUS_REQUIRE_CHATTERBOX=1.

* Without chatterbox-tts (the default ``tests`` env, a plain ``pytest``) every test here
  is skipped, unless CHATTERBOX_STATUS_REQUIRE_CHATTERBOX=1: then this conftest fails the
  run at once, so a broken install can never pass as "all skipped".
* Each checkpoint kind is built once per session into a temporary folder (~0.6 GB each,
  4-24 s) and deleted at the end; the summary line says how much disk they took.
* Each test module runs one server (``english``, ``multilingual``, ``turbo``): the
  model loads and warms up once per module. Those tests share one event loop per module,
  hence ``pytestmark = pytest.mark.asyncio(loop_scope="module")`` in each of them.
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

import pytest
import pytest_asyncio

# Before torch, transformers or tqdm are imported: no progress bars, never the network.
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

HERE = Path(__file__).resolve().parent
REQUIRED = os.environ.get("CHATTERBOX_STATUS_REQUIRE_CHATTERBOX") == "1"
ROOT_CONFTEST = (HERE.parent / "conftest.py").resolve()


def _import_chatterbox() -> str | None:
    """None when the library and everything the tiny checkpoints need import; else why not."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "pkg_resources is deprecated", UserWarning)  # perth, at import
            for module in ("torch", "chatterbox.tts", "chatterbox.mtl_tts", "chatterbox.tts_turbo", "chatterbox_support.tiny_model"):
                importlib.import_module(module)
    except Exception as exc:  # ImportError, or a broken native library (OSError)
        # A failed "import chatterbox.tts" can leave this very folder in sys.modules as a
        # namespace package called chatterbox; do not let it pass for the library.
        found = sys.modules.get("chatterbox")
        if found is not None and getattr(found, "__file__", None) is None:
            del sys.modules["chatterbox"]
        return f"{type(exc).__name__}: {exc}"
    return None


MISSING = _import_chatterbox()
if MISSING is not None and REQUIRED:
    raise RuntimeError(
        "CHATTERBOX_STATUS_REQUIRE_CHATTERBOX=1 but chatterbox-tts cannot be imported "
        f"({MISSING}); install it with: bash tests/chatterbox_support/install.sh VENV/bin/pip"
    )


# What chatterbox-tts 0.1.7 and its dependencies say on every load, none of it ours.
LIBRARY_WARNINGS = (
    "ignore::FutureWarning:diffusers.*",
    "ignore::DeprecationWarning:audioread.*",
    r"ignore:`torch.backends.cuda.sdp_kernel\(\)` is deprecated:FutureWarning",
)


def pytest_configure(config):
    for line in LIBRARY_WARNINGS:
        config.addinivalue_line("filterwarnings", line)


def pytest_collection_modifyitems(config, items):
    if MISSING is None:
        return
    skip = pytest.mark.skip(reason=f"chatterbox-tts is not installed ({MISSING}); run tox -e chatterbox")
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(skip)


def pytest_plugin_registered(plugin, manager):
    """Give the module name ``conftest`` back to tests/conftest.py once this file is loaded.

    pytest imports a conftest.py that is not inside a package under the module name
    ``conftest``, replacing tests/conftest.py there, and the modules in tests/ import
    their helpers with ``from conftest import ...``: a plain ``pytest`` collects them
    after this folder. (This folder cannot be a package: it would shadow chatterbox-tts.)
    """
    if getattr(plugin, "__file__", None) != __file__:
        return
    for other in manager.get_plugins():
        path = getattr(other, "__file__", None)
        if path and Path(path).resolve() == ROOT_CONFTEST:
            sys.modules["conftest"] = other
            return


# -- checkpoints -------------------------------------------------------------------------

BUILT: dict[str, tuple[int, float]] = {}  # kind -> (bytes on disk, seconds to build)


def _disk_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """``checkpoint(kind)``: the folder of a tiny checkpoint of that kind, built on first use."""
    from chatterbox_support import tiny_model

    root = tmp_path_factory.mktemp("chatterbox-checkpoints")
    folders: dict[str, Path] = {}

    def build(kind: str) -> Path:
        if kind not in folders:
            started = time.perf_counter()
            folders[kind] = tiny_model.build_checkpoint(kind, root / kind)
            BUILT[kind] = (_disk_bytes(folders[kind]), time.perf_counter() - started)
        return folders[kind]

    yield build
    shutil.rmtree(root, ignore_errors=True)


def pytest_terminal_summary(terminalreporter):
    if BUILT:
        parts = ", ".join(f"{kind} {size / 1e6:.0f} MB in {seconds:.1f} s" for kind, (size, seconds) in BUILT.items())
        total = sum(size for size, _ in BUILT.values())
        terminalreporter.write_line(f"chatterbox checkpoints (deleted): {parts}; {total / 1e6:.0f} MB in all")


@pytest.fixture(scope="session")
def reference_wav(tmp_path_factory) -> bytes:
    """A 6 s synthetic voice clip (WAV bytes) to clone."""
    from chatterbox_support import tiny_model

    path = tiny_model.write_reference_wav(tmp_path_factory.mktemp("voice") / "reference.wav", 6.0, seed=1)
    return path.read_bytes()


@pytest.fixture
def every_progress_event(monkeypatch):
    """Every in-chunk progress report becomes a bus event.

    The pipeline thins them to one per PROGRESS_EVENT_INTERVAL (50 ms), and a tiny T3
    makes 20 tokens in well under a second, so how many come through would depend on the
    CPU. The thinning is the default suite's business; here every token must show.
    """
    from chatterbox_status import pipeline

    monkeypatch.setattr(pipeline, "PROGRESS_EVENT_INTERVAL", 0.0)


# -- one server per test module ------------------------------------------------------------


async def _server(kind: str, checkpoint, tmp_path_factory):
    from chatterbox_support.harness import TinyChatterboxEngine, serve

    engine = TinyChatterboxEngine(kind, checkpoint(kind))
    async with serve(engine, tmp_path_factory.mktemp(kind)) as client:
        yield client


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def english(checkpoint, tmp_path_factory):
    async for client in _server("chatterbox", checkpoint, tmp_path_factory):
        yield client


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def multilingual(checkpoint, tmp_path_factory):
    async for client in _server("chatterbox-multilingual", checkpoint, tmp_path_factory):
        yield client


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def turbo(checkpoint, tmp_path_factory):
    async for client in _server("chatterbox-turbo", checkpoint, tmp_path_factory):
        yield client
