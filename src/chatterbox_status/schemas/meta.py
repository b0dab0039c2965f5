"""The service's bodies: health, liveness, models, settings, memory, routes and languages."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from . import Body
from .status import Count, EngineResidency, EngineView, MemoryInfo, MemorySnapshot, Timestamp


class HealthConfig(Body):
    max_chunk_length: int
    max_total_length: int
    voice_sample_path: str | None
    default_exaggeration: float
    default_cfg_weight: float
    default_temperature: float


class EventLog(Body):
    """Where this server's events go: in process, or the Redis that several nodes share."""

    backend: Literal["memory", "redis"]
    node: str | None = Field(description="This server process among those sharing the Redis event log")
    url: str | None = Field(description="The Redis URL, without its password")
    connected: bool
    error: str | None = Field(description="Why events cannot be published now (speech requests get 503 until Redis is back)")


class EngineWorker(Body):
    """One engine worker of the cluster, as its last heartbeat told."""

    name: str
    device: str
    engines: list[str] = Field(description="The engines it offers (each loads on its first chunk there)")
    loaded: list[str] = Field(description="The engines it holds loaded")
    capacity: Annotated[int, Field(ge=1)] = Field(description="Chunks it takes at once")
    running: Count


class ChunkQueue(Body):
    """Where this server's chunks go when its engines are the cluster's workers (WORKERS)."""

    url: str = Field(description="The Redis URL, without its password")
    connected: bool
    error: str | None = Field(description="Why chunks cannot be handed out now (speech requests get 503 until Redis is back)")
    workers: list[EngineWorker] = Field(description="The live engine workers; a request waits (initializing) while none offers its engine")


class Health(Body):
    """Healthy, still initializing, or failed (the engine failed to load, or the shared event
    log or chunk queue is unreachable: status error); always a 200."""

    status: Literal["healthy", "initializing", "error"]
    model_loaded: bool
    device: str
    initialization_state: Literal["ready", "initializing", "error"]
    initialization_progress: Annotated[str, Field(pattern="^[0-9]+%$")]
    initialization_error: str | None
    engine: EngineView
    engines: list[EngineResidency] = Field(description="Every engine a request may choose: loaded, loading, idle since, unloaded")
    queue_length: Count
    version: str
    config: HealthConfig
    memory_info: MemoryInfo
    event_log: EventLog
    chunk_queue: ChunkQueue | None = Field(description="Only where the engines are the cluster's workers (WORKERS)")


class Ping(Body):
    status: Literal["ok"]
    message: Literal["pong"]
    timestamp: Timestamp


class Model(Body):
    """OpenAI's model object, with the engine the name chooses and that engine's state."""

    id: str
    object: Literal["model"]
    created: Count
    owned_by: str
    engine: str = Field(description="The engine a request naming this model gets")
    default: bool = Field(description="Whether it is the engine a request naming no model gets")
    engine_state: EngineResidency


class ModelList(Body):
    """OpenAI's model list: every engine this server offers, then the names that choose one
    (OpenAI's and MODEL_ALIASES)."""

    object: Literal["list"]
    data: list[Model]


class ServerConfig(Body):
    host: str
    port: int
    version: str


class ModelConfig(Body):
    engine: str
    requested_engine: str
    device: str
    voice_sample_path: str | None
    model_cache_dir: str
    engines: list[str] = Field(description="Every engine a request may choose, the default first")
    model_aliases: dict[str, str] = Field(description="Model names that choose an engine, besides the engines' own")
    keep_alive_seconds: float = Field(description="MODEL_KEEP_ALIVE in seconds; -1: for ever")
    max_loaded_models: int


class DefaultsConfig(Body):
    exaggeration: float
    cfg_weight: float
    temperature: float
    max_chunk_length: int
    max_total_length: int


class MemoryManagementConfig(Body):
    enable_memory_monitoring: bool


class LimitsConfig(Body):
    max_queue_size: int
    history_size: int
    max_body_size: int


class Config(Body):
    """The settings in force."""

    server: ServerConfig
    model: ModelConfig
    defaults: DefaultsConfig
    memory_management: MemoryManagementConfig
    limits: LimitsConfig
    cors_origins: str


class MemoryStatus(Body):
    """The figures now, whatever ENABLE_MEMORY_MONITORING says."""

    memory_info: MemorySnapshot
    engine: str


class MemoryReset(Body):
    success: Literal[True]
    memory_before: MemorySnapshot
    memory_after: MemorySnapshot


class Endpoint(Body):
    path: str
    methods: list[str]


class Endpoints(Body):
    """Every path the server answers, aliases as paths of their own."""

    endpoints: list[Endpoint]
    count: Count


class Language(Body):
    code: str
    name: str


class Languages(Body):
    """Language codes and names (the speech request's language field)."""

    engine: str
    multilingual: bool
    languages: list[Language]
    count: Annotated[int, Field(ge=1)]


class OpenApiDocument(BaseModel):
    """This document, OpenAPI 3.1."""

    model_config = ConfigDict(extra="allow")
    openapi: str
    info: dict[str, Any]
    paths: dict[str, Any]
