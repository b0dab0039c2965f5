"""Settings as a user gives them: defaults, environment variables, CLI flags, and refusals."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys

import pytest

from chatterbox_status import engines
from chatterbox_status.cli import build_parser
from chatterbox_status.config import Settings, SettingsError, parse_duration

# Every environment variable the server reads; a subprocess gets none of them from the
# outer environment unless a test sets it, so a stray HOST or PORT cannot leak in.
SETTING_ENV_NAMES = tuple(f.metadata["env"] for f in dataclasses.fields(Settings))


def clean_environ(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SETTING_ENV_NAMES}
    env.update(extra)
    return env


def settings_from(argv: list[str], environ: dict[str, str]) -> Settings:
    """Settings exactly as `chatterbox-status ARGV` builds them in cli.main."""
    args = build_parser().parse_args(argv)
    return Settings.from_sources(vars(args), environ)


# --- defaults ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: Settings.from_sources({}, {}), id="from_sources"),
        pytest.param(lambda: Settings.load([], {}), id="load"),
        pytest.param(lambda: settings_from(["serve"], {}), id="cli-serve"),
    ],
)
def test_defaults_without_flags_or_environment(make):
    settings = make()
    assert settings.host == "127.0.0.1"
    assert settings.port == 4123
    assert settings.engine == "auto"
    assert settings.max_chunk_length == 280
    assert settings.max_total_length == 4096
    assert settings.history_size == 50
    assert settings.enable_memory_monitoring is True


# --- environment ---------------------------------------------------------------------

VOICE_FILE = object()  # placeholder: replaced by a real file under tmp_path

ENVIRONMENT_CASES = [
    ("HOST", "0.0.0.0", "host", "0.0.0.0"),
    ("PORT", "5055", "port", 5055),
    ("WYOMING_PORT", "10200", "wyoming_port", 10200),
    ("DEVICE", "cpu", "device", "cpu"),
    ("DEVICE", "cuda:1", "device", "cuda:1"),
    ("EXAGGERATION", "0.75", "exaggeration", 0.75),
    ("CFG_WEIGHT", "0.3", "cfg_weight", 0.3),
    ("TEMPERATURE", "1.2", "temperature", 1.2),
    ("MAX_CHUNK_LENGTH", "150", "max_chunk_length", 150),
    ("MAX_TOTAL_LENGTH", "2000", "max_total_length", 2000),
    ("VOICE_SAMPLE_PATH", VOICE_FILE, "voice_sample_path", VOICE_FILE),
    ("MODEL_CACHE_DIR", "/srv/tts-models", "model_cache_dir", "/srv/tts-models"),
    ("ENABLE_MEMORY_MONITORING", "false", "enable_memory_monitoring", False),
    ("ENABLE_MEMORY_MONITORING", "0", "enable_memory_monitoring", False),
    ("ENABLE_MEMORY_MONITORING", "true", "enable_memory_monitoring", True),
    ("ENABLE_MEMORY_MONITORING", "1", "enable_memory_monitoring", True),
    ("CORS_ORIGINS", "https://a.example,https://b.example", "cors_origins", "https://a.example,https://b.example"),
    ("ENGINE", "hibari", "engine", "hibari"),
    ("HISTORY_SIZE", "7", "history_size", 7),
    ("MAX_QUEUE_SIZE", "3", "max_queue_size", 3),
    ("MAX_BODY_SIZE", "4096", "max_body_size", 4096),
    ("LOG_LEVEL", "debug", "log_level", "debug"),
    ("API_KEY", "s3cret-key", "api_key", "s3cret-key"),
    ("VOICE_LIBRARY_DIR", "/srv/voices", "voice_library_dir", "/srv/voices"),
    ("MAX_SSE_SUBSCRIBERS", "12", "max_sse_subscribers", 12),
    ("SSE_PING_INTERVAL", "2.5", "sse_ping_interval", 2.5),
    ("SSE_QUEUE_SIZE", "16", "sse_queue_size", 16),
    ("EVENT_REPLAY_SIZE", "64", "event_replay_size", 64),
    ("SHUTDOWN_TIMEOUT", "0", "shutdown_timeout", 0.0),
    ("CHUNK_TIMEOUT", "12.5", "chunk_timeout", 12.5),
    ("ENGINE_THREADS", "3", "engine_threads", 3),
    ("ENGINE_NICE", "0", "engine_nice", 0),
    ("MAX_BATCH_SIZE", "4", "max_batch_size", 4),
    ("ALLOWED_HOSTS", "tts.lan,box.example", "allowed_hosts", "tts.lan,box.example"),
    ("BODY_READ_TIMEOUT", "5", "body_read_timeout", 5.0),
    ("SEND_TIMEOUT", "7.5", "send_timeout", 7.5),
    ("DEFAULT_RESPONSE_FORMAT", "mp3", "default_response_format", "mp3"),
    ("DATA_DIR", "/srv/data", "data_dir", "/srv/data"),
    ("LONG_TEXT_MAX_LENGTH", "5000", "long_text_max_length", 5000),
    ("LONG_TEXT_MAX_CONCURRENT_JOBS", "2", "long_text_max_concurrent_jobs", 2),
    ("LONG_TEXT_MAX_DISK_MB", "0", "long_text_max_disk_mb", 0.0),
    ("LONG_TEXT_JOB_RETENTION_DAYS", "0.5", "long_text_job_retention_days", 0.5),
    ("LONG_TEXT_SILENCE_PADDING_MS", "350", "long_text_silence_padding_ms", 350),
    ("MODEL_DIR", "/", "model_dir", "/"),
    ("MEMORY_CLEANUP_INTERVAL", "0", "memory_cleanup_interval", 0),
    ("ENGINES", "hibari,chatterbox-turbo", "engines", "hibari,chatterbox-turbo"),
    ("MODEL_ALIASES", "tts-1=hibari,fast=chatterbox-turbo", "model_aliases", "tts-1=hibari,fast=chatterbox-turbo"),
    ("MODEL_KEEP_ALIVE", "90s", "model_keep_alive", "90s"),
    ("MODEL_KEEP_ALIVE", "-1", "model_keep_alive", "-1"),
    ("MAX_LOADED_MODELS", "1", "max_loaded_models", 1),
    ("REDIS_URL", "redis://:secret@10.0.0.5:6380/2", "redis_url", "redis://:secret@10.0.0.5:6380/2"),
    ("WORKERS", "cuda:0,cuda:1", "workers", "cuda:0,cuda:1"),
    ("WORKERS", "none", "workers", "none"),
]


@pytest.mark.parametrize(
    ("env_name", "raw", "field", "expected"),
    ENVIRONMENT_CASES,
    ids=[f"{c[0]}={c[1] if c[1] is not VOICE_FILE else 'file'}" for c in ENVIRONMENT_CASES],
)
def test_each_setting_is_read_from_its_environment_variable(tmp_path, env_name, raw, field, expected):
    if raw is VOICE_FILE:
        sample = tmp_path / "reference.wav"
        sample.write_bytes(b"RIFF")
        raw = expected = str(sample)
    needed = {"REDIS_URL": "redis://10.0.0.5:6379/0"} if env_name == "WORKERS" else {}  # workers take chunks from Redis
    settings = settings_from(["serve"], {**needed, env_name: raw})
    value = getattr(settings, field)
    assert value == expected
    assert type(value) is type(expected)
    # The variable changed only its own setting.
    defaults = Settings()
    for other in dataclasses.fields(Settings):
        if other.name != field and other.metadata["env"] not in needed:
            assert getattr(settings, other.name) == getattr(defaults, other.name), other.name


def test_every_setting_has_an_environment_case():
    """A new setting without an environment test would slip past the table above."""
    covered = {case[0] for case in ENVIRONMENT_CASES}
    assert covered == set(SETTING_ENV_NAMES)


def test_empty_environment_variable_means_the_default():
    settings = Settings.from_sources({}, {"PORT": "", "HOST": "", "ENGINE": ""})
    assert (settings.port, settings.host, settings.engine) == (4123, "127.0.0.1", "auto")


# --- CLI over environment ------------------------------------------------------------


def test_cli_flags_override_the_environment(tmp_path):
    env_voice = tmp_path / "env.wav"
    cli_voice = tmp_path / "cli.wav"
    env_voice.write_bytes(b"RIFF")
    cli_voice.write_bytes(b"RIFF")
    environ = {
        "HOST": "0.0.0.0",
        "PORT": "5000",
        "ENGINE": "auto",
        "DEVICE": "cuda",
        "EXAGGERATION": "1.5",
        "TEMPERATURE": "2.0",
        "MAX_CHUNK_LENGTH": "500",
        "VOICE_SAMPLE_PATH": str(env_voice),
        "ENABLE_MEMORY_MONITORING": "true",
        "LOG_LEVEL": "error",
    }
    settings = settings_from(
        [
            "serve",
            "--host", "127.0.0.1",
            "--port", "6000",
            "--engine", "hibari",
            "--device", "cpu",
            "--exaggeration", "0.3",
            "--temperature", "0.9",
            "--max-chunk-length", "100",
            "--voice-sample-path", str(cli_voice),
            "--no-enable-memory-monitoring",
            "--log-level", "debug",
        ],
        environ,
    )
    assert settings.host == "127.0.0.1"
    assert settings.port == 6000
    assert settings.engine == "hibari"
    assert settings.device == "cpu"
    assert settings.exaggeration == 0.3
    assert settings.temperature == 0.9
    assert settings.max_chunk_length == 100
    assert settings.voice_sample_path == str(cli_voice)
    assert settings.enable_memory_monitoring is False
    assert settings.log_level == "debug"


def test_environment_fills_what_the_cli_leaves_out():
    settings = settings_from(["serve", "--port", "6000"], {"PORT": "5000", "HISTORY_SIZE": "9"})
    assert settings.port == 6000
    assert settings.history_size == 9


def test_cli_can_turn_memory_monitoring_back_on_over_the_environment():
    settings = settings_from(["serve", "--enable-memory-monitoring"], {"ENABLE_MEMORY_MONITORING": "0"})
    assert settings.enable_memory_monitoring is True


def test_say_accepts_the_same_setting_flags():
    settings = settings_from(["say", "hi", "-o", "x.wav", "--max-chunk-length", "60"], {"MAX_CHUNK_LENGTH": "500"})
    assert settings.max_chunk_length == 60


# --- refusals ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env_name", "raw"),
    [
        ("PORT", "abc"),
        ("PORT", "70000"),
        ("WYOMING_PORT", "65536"),
        ("EXAGGERATION", "3"),
        ("CFG_WEIGHT", "-1"),
        ("TEMPERATURE", "0"),
        ("ENABLE_MEMORY_MONITORING", "maybe"),
        ("ENGINE", "nonsense"),
        ("DEVICE", "tpu"),
        ("VOICE_SAMPLE_PATH", "/does/not/exist"),
        ("MAX_CHUNK_LENGTH", "5"),
        ("LOG_LEVEL", "loud"),
        ("DEFAULT_RESPONSE_FORMAT", "avi"),
        ("MODEL_DIR", "/no/such/checkpoint"),
        ("BODY_READ_TIMEOUT", "0"),
        ("SEND_TIMEOUT", "-1"),
        ("ENGINES", "hibari,kokoro"),
        ("MODEL_ALIASES", "tts-1"),
        ("MODEL_ALIASES", "tts-1=kokoro"),
        ("MODEL_KEEP_ALIVE", "soon"),
        ("MODEL_KEEP_ALIVE", "5d"),
        ("MAX_LOADED_MODELS", "0"),
        ("REDIS_URL", "http://10.0.0.5:6379"),
        ("WORKERS", "cuda:0,gpu1"),
        ("ENGINE_NICE", "20"),
    ],
)
def test_invalid_environment_value_is_refused_naming_the_variable(env_name, raw):
    with pytest.raises(SettingsError) as caught:
        settings_from(["serve"], {env_name: raw})
    message = str(caught.value)
    assert re.search(rf"(?<![A-Z_]){env_name}(?![A-Z_])", message), message
    assert raw in message, message  # the user sees what was wrong


def test_invalid_cli_value_is_refused_naming_the_flag():
    with pytest.raises(SettingsError, match="--port"):
        settings_from(["serve", "--port", "0"], {})


def test_serve_with_an_invalid_environment_setting_exits_2_without_starting(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "chatterbox_status", "serve"],
        env=clean_environ(PORT="abc"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert re.search(r"(?<![A-Z_])PORT(?![A-Z_])", result.stderr), result.stderr
    assert "abc" in result.stderr
    assert "Traceback" not in result.stderr
    # Refused before anything started: no listening line, no engine chosen.
    assert "listening" not in result.stderr + result.stdout
    assert "engine:" not in result.stderr


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [("300", 300.0), ("90s", 90.0), ("5m", 300.0), ("1.5h", 5400.0), ("0", 0.0), ("-1", -1.0), ("-5m", -1.0), (30, 30.0)],
)
def test_keep_alive_durations_read_as_ollama_writes_them(raw, seconds):
    assert parse_duration(raw) == seconds


def test_an_alias_to_an_engine_that_is_not_configured_is_refused_at_start():
    with pytest.raises(SettingsError, match="MODEL_ALIASES.*'chatterbox-turbo'.*ENGINES"):
        engines.catalog("hibari", [], "tts-1=chatterbox-turbo")
    offered = engines.catalog("hibari", ["chatterbox-turbo"], "tts-1-hd=chatterbox-turbo")
    assert offered.engines == ("hibari", "chatterbox-turbo")
    assert offered.engine_for(None) == offered.engine_for("tts-1") == "hibari"
    assert offered.engine_for("tts-1-hd") == offered.engine_for("chatterbox-turbo") == "chatterbox-turbo"
    assert offered.engine_for("chatterbox") is None


def test_workers_without_redis_are_refused_saying_what_they_need():
    with pytest.raises(SettingsError, match=r"WORKERS \(--workers\) needs REDIS_URL"):
        settings_from(["serve", "--workers", "cpu"], {})


def test_a_worker_started_by_the_server_gets_exactly_its_settings_back():
    """``environ()`` is what the server hands the workers it starts (WORKERS)."""
    settings = settings_from(["serve", "--redis-url", "redis://10.0.0.5:6379/0", "--workers", "cpu", "--temperature", "0.3"], {})
    again = settings_from(["worker"], settings.environ())
    assert again == settings and again.temperature == 0.3 and again.enable_memory_monitoring is True
