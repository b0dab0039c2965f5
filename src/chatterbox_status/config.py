"""Settings: one frozen dataclass, filled from CLI flags over environment variables.

Each field carries its environment name (chatterbox-tts-api's name where it has one),
its CLI help and its check, so the CLI, the environment and the validation cannot drift
apart. Invalid values fail at start with a message that names the setting.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENGINE_CHOICES = ("auto", "hibari", "chatterbox", "chatterbox-multilingual", "chatterbox-turbo")
DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
LOG_LEVELS = ("debug", "info", "warning", "error")


class SettingsError(ValueError):
    """A setting has a value the server cannot run with."""


def _setting(default: Any, env: str, help: str, check: Callable[[Any], str | None] | None = None) -> Any:
    return field(default=default, metadata={"env": env, "help": help, "check": check})


def _between(low: float, high: float) -> Callable[[float], str | None]:
    def check(value: float) -> str | None:
        return None if low <= value <= high else f"must be between {low} and {high}"

    return check


def _one_of(choices: Sequence[str], ignore_case: bool = False) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        candidate = value.lower() if ignore_case else value
        return None if candidate in choices else f"must be one of {', '.join(choices)}"

    return check


def _device(value: str) -> str | None:
    base, _, index = value.partition(":")
    if base in DEVICE_CHOICES and (not index or (base == "cuda" and index.isdigit())):
        return None
    return "must be auto, cpu, cuda, cuda:N or mps"


def _audio_format(value: str) -> str | None:
    from .audio import FORMATS

    return None if value in FORMATS else f"must be one of {', '.join(FORMATS)}"


def parse_duration(value: str | float) -> float:
    """Seconds from ``300``, ``"300"``, ``"90s"``, ``"5m"`` or ``"1h"``; any negative value
    means for ever (``-1``), as ollama's keep_alive does."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        text = str(value).strip().lower()
        unit = {"s": 1.0, "m": 60.0, "h": 3600.0}.get(text[-1:], None)
        try:
            seconds = float(text[:-1] if unit else text) * (unit or 1.0)
        except ValueError:
            raise ValueError(f"{value!r} is not a duration (seconds, or a number with s, m or h)") from None
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        raise ValueError(f"{value!r} is not a duration")
    return -1.0 if seconds < 0 else seconds


def _duration(value: str) -> str | None:
    try:
        parse_duration(value)
    except ValueError as exc:
        return str(exc)
    return None


def _engine_list(value: str) -> str | None:
    unknown = [name for name in names(value) if name not in ENGINE_CHOICES[1:]]
    return f"names unknown engines {', '.join(unknown)}; known: {', '.join(ENGINE_CHOICES[1:])}" if unknown else None


def _aliases(value: str) -> str | None:
    for pair in names(value):
        alias, sep, target = pair.partition("=")
        if not sep or not alias.strip() or target.strip() not in ENGINE_CHOICES[1:]:
            return f"must be NAME=ENGINE pairs with ENGINE one of {', '.join(ENGINE_CHOICES[1:])}"
    return None


def _redis_url(value: str) -> str | None:
    if not value or value.split("://", 1)[0] in ("redis", "rediss", "unix"):
        return None
    return "must be a redis://, rediss:// or unix:// URL"


def _workers(value: str) -> str | None:
    if value.strip().lower() == "none":
        return None
    wrong = [device for device in names(value) if _device(device) is not None]
    return f"names devices that are not auto, cpu, cuda, cuda:N or mps: {', '.join(wrong)}" if wrong else None


def names(value: str) -> list[str]:
    """The items of a comma-separated setting, stripped, empty ones left out."""
    return [item.strip() for item in value.split(",") if item.strip()]


def _existing_dir(value: str | None) -> str | None:
    if value is None or Path(value).is_dir():
        return None
    return f"folder {value!r} does not exist"


def _existing_file(value: str | None) -> str | None:
    if value is None or Path(value).is_file():
        return None
    return f"file {value!r} does not exist"


@dataclass(frozen=True)
class Settings:
    """Everything the server can be told at start."""

    host: str = _setting("127.0.0.1", "HOST", "address to bind; keep 127.0.0.1 unless a proxy guards it")
    port: int = _setting(4123, "PORT", "TCP port", _between(1, 65535))
    wyoming_port: int = _setting(
        0, "WYOMING_PORT", "TCP port for Home Assistant's Wyoming protocol, on HOST (10200 is its convention; 0: off)", _between(0, 65535)
    )
    engine: str = _setting("auto", "ENGINE", "TTS engine; auto prefers chatterbox when installed", _one_of(ENGINE_CHOICES))
    engines: str = _setting(
        "",
        "ENGINES",
        "comma-separated engines a request may choose with its model field, besides ENGINE (the default); "
        "each loads on first use",
        _engine_list,
    )
    model_aliases: str = _setting(
        "",
        "MODEL_ALIASES",
        "comma-separated NAME=ENGINE pairs: model names that choose an engine (OpenAI's tts-1, tts-1-hd and "
        "gpt-4o-mini-tts choose the default engine unless listed here)",
        _aliases,
    )
    model_keep_alive: str = _setting(
        "5m",
        "MODEL_KEEP_ALIVE",
        "how long an engine stays loaded after its last request: seconds or 30s, 5m, 1h; 0 unloads after each "
        "request, -1 keeps it for ever",
        _duration,
    )
    max_loaded_models: int = _setting(
        2, "MAX_LOADED_MODELS", "engines loaded at once; the least recently used idle one is unloaded first", _between(1, 64)
    )
    device: str = _setting("auto", "DEVICE", "torch device for chatterbox engines: auto, cpu, cuda, cuda:N, mps", _device)
    exaggeration: float = _setting(0.5, "EXAGGERATION", "default emotion exaggeration", _between(0.25, 2.0))
    cfg_weight: float = _setting(0.5, "CFG_WEIGHT", "default classifier-free guidance weight", _between(0.0, 1.0))
    temperature: float = _setting(0.8, "TEMPERATURE", "default sampling temperature", _between(0.05, 5.0))
    max_chunk_length: int = _setting(280, "MAX_CHUNK_LENGTH", "longest text chunk generated at once", _between(20, 1000))
    default_response_format: str = _setting(
        "wav", "DEFAULT_RESPONSE_FORMAT", "response_format when a request names none", _audio_format
    )
    max_total_length: int = _setting(4096, "MAX_TOTAL_LENGTH", "longest input accepted", _between(1, 1_000_000))
    voice_sample_path: str | None = _setting(None, "VOICE_SAMPLE_PATH", "default reference voice for cloning engines", _existing_file)
    voice_library_dir: str = _setting("./voices", "VOICE_LIBRARY_DIR", "where uploaded voices and their index are kept")
    model_cache_dir: str = _setting("./models", "MODEL_CACHE_DIR", "where weights downloaded from the hub are kept")
    model_dir: str | None = _setting(None, "MODEL_DIR", "a local Chatterbox checkpoint folder to load instead of the hub", _existing_dir)
    memory_cleanup_interval: int = _setting(
        5, "MEMORY_CLEANUP_INTERVAL", "collect garbage and empty the CUDA cache after every N requests (0: never)", _between(0, 1_000_000)
    )
    enable_memory_monitoring: bool = _setting(True, "ENABLE_MEMORY_MONITORING", "report memory in the status API")
    cors_origins: str = _setting(
        "",
        "CORS_ORIGINS",
        "comma-separated origins allowed to call the API from a browser, '*' for any; "
        "empty allows http://localhost and http://127.0.0.1 on any port",
    )
    allowed_hosts: str = _setting(
        "",
        "ALLOWED_HOSTS",
        "comma-separated host names the server answers to besides localhost, IP addresses and HOST "
        "(a guard against DNS rebinding), '*' for any",
    )
    history_size: int = _setting(50, "HISTORY_SIZE", "finished requests kept in the history ring", _between(1, 100_000))
    max_queue_size: int = _setting(64, "MAX_QUEUE_SIZE", "requests that may wait for the engine before 429", _between(1, 100_000))
    max_body_size: int = _setting(1 << 20, "MAX_BODY_SIZE", "largest request body in bytes before 413", _between(1024, 1 << 30))
    data_dir: str = _setting("./data", "DATA_DIR", "where long-text jobs (database and audio) are kept")
    long_text_max_length: int = _setting(
        100_000, "LONG_TEXT_MAX_LENGTH", "longest input POST /audio/speech/long accepts", _between(1, 10_000_000)
    )
    long_text_max_concurrent_jobs: int = _setting(
        1, "LONG_TEXT_MAX_CONCURRENT_JOBS", "long-text jobs generating at once; more wait as pending", _between(1, 64)
    )
    long_text_max_disk_mb: float = _setting(
        2048.0, "LONG_TEXT_MAX_DISK_MB", "disk long-text audio may use before new jobs get 507 (0: no limit)", _between(0, 10_000_000)
    )
    long_text_job_retention_days: float = _setting(
        7.0, "LONG_TEXT_JOB_RETENTION_DAYS", "finished long-text jobs and their files are removed after this many days (0: kept)", _between(0, 36_500)
    )
    long_text_silence_padding_ms: int = _setting(
        200, "LONG_TEXT_SILENCE_PADDING_MS", "silence between the chunks of a long-text job's audio", _between(0, 10_000)
    )
    api_key: str = _setting("", "API_KEY", "when set, clients must send it (Authorization: Bearer KEY) on every endpoint but /health and /ping")
    max_sse_subscribers: int = _setting(2048, "MAX_SSE_SUBSCRIBERS", "open event streams allowed before 429", _between(1, 1_000_000))
    sse_ping_interval: float = _setting(15.0, "SSE_PING_INTERVAL", "seconds between keep-alive comments on event streams", _between(0.1, 3600))
    sse_queue_size: int = _setting(
        256, "SSE_QUEUE_SIZE", "events a stream subscriber may fall behind before it is dropped; one request publishes a burst of 5",
        _between(16, 100_000),
    )
    event_replay_size: int = _setting(1024, "EVENT_REPLAY_SIZE", "events kept for Last-Event-ID replay", _between(1, 1_000_000))
    body_read_timeout: float = _setting(
        60.0, "BODY_READ_TIMEOUT", "seconds a request body may send nothing before its connection is closed", _between(0.01, 86400)
    )
    send_timeout: float = _setting(
        60.0, "SEND_TIMEOUT", "seconds a client may take nothing of a response before its connection is closed", _between(0.01, 86400)
    )
    engine_threads: int = _setting(
        max(1, (os.cpu_count() or 2) - 1),
        "ENGINE_THREADS",
        "CPU threads the engine process may use (torch, onnxruntime); the default leaves one core to the server",
        _between(1, 1024),
    )
    engine_nice: int = _setting(
        10,
        "ENGINE_NICE",
        "how far below the server's the engine process's CPU priority is (a nice increment): on busy cores "
        "the status path goes first (0: the same priority)",
        _between(0, 19),
    )
    max_batch_size: int = _setting(
        0,
        "MAX_BATCH_SIZE",
        "requests whose chunks chatterbox and chatterbox-turbo step together through the model; "
        "0 chooses by device (8 on CUDA, 4 on a CPU, 1 on mps)",
        _between(0, 256),
    )
    redis_url: str = _setting(
        "",
        "REDIS_URL",
        "redis://HOST:PORT/DB of a Redis that several server processes share: one event log, one status view and "
        "exact statistics over all of them (empty: everything stays in this process)",
        _redis_url,
    )
    workers: str = _setting(
        "",
        "WORKERS",
        "comma-separated devices (cuda:0,cuda:1; cpu) to start one engine worker each for, beside this server: "
        "chunks then go through REDIS_URL's shared queue to the workers of every process; 'none' serves HTTP "
        "only, with the workers others started (empty: engine processes of its own, as without Redis)",
        _workers,
    )
    chunk_timeout: float = _setting(600.0, "CHUNK_TIMEOUT", "seconds one chunk may take before its request fails", _between(0.01, 86400))
    shutdown_timeout: float = _setting(
        30.0, "SHUTDOWN_TIMEOUT", "seconds in-flight requests may finish at shutdown before they are cancelled", _between(0, 3600)
    )
    log_level: str = _setting("info", "LOG_LEVEL", "logging level", _one_of(LOG_LEVELS, ignore_case=True))

    @property
    def worker_devices(self) -> list[str] | None:
        """The devices of the engine workers this process starts (an empty list: none, it
        uses the cluster's), or None when its engines are processes of its own."""
        if not self.workers.strip():
            return None
        return [] if self.workers.strip().lower() == "none" else names(self.workers)

    def environ(self) -> dict[str, str]:
        """These settings as the environment variables that give them back, so a child
        process (an engine worker) runs with exactly these."""
        values = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is not None:
                values[f.metadata["env"]] = str(value).lower() if isinstance(value, bool) else str(value)
        return values

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            check = f.metadata["check"]
            problem = check(getattr(self, f.name)) if check else None
            if problem:
                raise SettingsError(f"{f.metadata['env']} (--{_flag(f.name)}) {problem}, got {getattr(self, f.name)!r}")
        if self.workers.strip() and not self.redis_url:
            raise SettingsError("WORKERS (--workers) needs REDIS_URL: engine workers take their chunks from its shared queue")

    @classmethod
    def load(cls, argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from the environment, overridden by parsed CLI arguments."""
        parser = argparse.ArgumentParser(add_help=False)
        add_arguments(parser)
        args, _ = parser.parse_known_args(argv or [])
        return cls.from_sources(vars(args), os.environ if environ is None else environ)

    @classmethod
    def from_sources(cls, cli: Mapping[str, Any], environ: Mapping[str, str]) -> Settings:
        """Build from CLI values (None when not given) over environment strings."""
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            env_name = f.metadata["env"]
            if cli.get(f.name) is not None:
                values[f.name] = cli[f.name]
            elif environ.get(env_name, "") != "":
                values[f.name] = _parse(f, environ[env_name])
        return cls(**values)


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _parse(f: dataclasses.Field, raw: str) -> Any:
    kind = f.type  # a string: this module uses postponed annotations
    env_name = f.metadata["env"]
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "bool":
            return _parse_bool(raw)
    except ValueError:
        raise SettingsError(f"{env_name} must be {'a number' if kind != 'bool' else 'true or false'}, got {raw!r}") from None
    return raw


def _parse_bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One CLI flag per setting; unset flags fall back to the environment, then the default."""
    for f in dataclasses.fields(Settings):
        kind = f.type
        env_help = f"{f.metadata['help']} (env {f.metadata['env']}, default {f.default!r})"
        flag = f"--{_flag(f.name)}"
        if kind == "bool":
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=env_help)
        else:
            convert = {"int": int, "float": float}.get(str(kind), str)
            parser.add_argument(flag, dest=f.name, type=convert, default=None, help=env_help)
