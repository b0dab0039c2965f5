"""The status API's bodies: requests, their progress, the queue, statistics and memory."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeAlias

from pydantic import ConfigDict, Field, RootModel

from ..tracker import STATUS_VALUES, TERMINAL_STATUSES
from . import Body, sometimes

# The tracker's status values, as Literals (a type checker sees str: they are built at run time).
if TYPE_CHECKING:
    RecordStatus: TypeAlias = str
    ActiveStatus: TypeAlias = str
else:
    RecordStatus = Literal[tuple(s for s in STATUS_VALUES if s != "idle")]
    ActiveStatus = Literal[tuple(s for s in STATUS_VALUES if s != "idle" and s not in TERMINAL_STATUSES)]
EngineState = Literal["not_started", "loading", "ready", "restarting", "error", "unloading", "unloaded"]

Count = Annotated[int, Field(ge=0)]
Percentage = Annotated[float, Field(ge=0, le=100)]
Seconds = Annotated[float, Field(ge=0)]
Timestamp = Annotated[float, Field(description="Epoch seconds")]


class ProgressFields(Body):
    current_chunk: Count
    total_chunks: Count
    current_step: str
    progress_percentage: Percentage
    estimated_completion: Timestamp | None


class RequestRecord(Body):
    """One request as the tracker knows it."""

    request_id: str
    status: RecordStatus
    start_time: Timestamp
    end_time: Timestamp | None
    duration_seconds: Seconds
    text_length: Count
    text_preview: str
    voice_source: str
    parameters: dict[str, Any] = Field(description="The generation parameters in force")
    progress: ProgressFields
    engine: str = sometimes()
    error_message: str = sometimes()
    audio_duration_seconds: float = sometimes()
    batched_with: list[str] = sometimes(
        description="The other requests whose chunks the engine steps together with this request's current chunk "
        "(an engine that batches, MAX_BATCH_SIZE); absent while it runs alone"
    )
    node: str = sometimes(description="On a shared event log (REDIS_URL): the server process that runs the request")
    worker: str = sometimes(description="With engine workers (WORKERS): the worker that took the request's latest chunk")


class RequestDetail(RequestRecord):
    """One request, with its place in the queue while it waits."""

    queue_position: Annotated[int, Field(ge=1)] | None
    estimated_start: Timestamp | None = sometimes()


class QueueEntry(Body):
    request_id: str
    position: Annotated[int, Field(ge=1)]
    text_length: Count
    queued_at: Timestamp
    estimated_start: Timestamp | None
    estimated_completion: Timestamp | None


class Queue(Body):
    length: Count
    requests: list[QueueEntry]


class EngineStatistics(Body):
    """Lifetime request counters of one engine."""

    total_requests: Count
    completed_requests: Count
    error_requests: Count
    cancelled_requests: Count
    success_rate: Percentage
    average_duration_seconds: Seconds
    average_text_length: Annotated[float, Field(ge=0)]


class Statistics(EngineStatistics):
    """Lifetime request counters, of the server and of each engine that ran requests."""

    is_processing: bool
    engines: dict[str, EngineStatistics] = Field(description="The same counters for each engine, by name")


class MemorySnapshot(Body):
    """Memory in MB: the CPU figures add the server and its engine process; the GPU
    figures are the engine process's, 0 without CUDA."""

    cpu_memory_mb: float  # the server and its engine process together
    cpu_memory_percent: float
    server_memory_mb: float
    engine_memory_mb: float
    system_memory_total_mb: float
    system_memory_available_mb: float
    gpu_available: bool
    gpu_memory_allocated_mb: float
    gpu_memory_reserved_mb: float
    gpu_memory_max_allocated_mb: float


class MemoryDisabled(Body):
    enabled: Literal[False]
    note: str


class MemoryInfo(RootModel[MemorySnapshot | MemoryDisabled]):
    """A snapshot, or a note when ENABLE_MEMORY_MONITORING is off."""


class StatisticsResponse(Statistics):
    current_memory: MemoryInfo = sometimes()


class _Sections(Body):
    """What /status adds on request."""

    memory_info: MemoryInfo = sometimes()
    request_history: Annotated[list[RequestRecord], Field(max_length=20)] = sometimes()
    statistics: Statistics = sometimes()


class EngineResidency(Body):
    """Whether an engine is loaded, how far its loading is, who uses it and when its
    keep-alive unloads it."""

    name: str
    state: EngineState
    load_progress: Percentage
    error: str | None
    in_use: Count = Field(description="Requests using it now")
    idle_since: Timestamp | None = Field(description="Since when no request uses it (null while in use or not loaded)")
    unloads_at: Timestamp | None = Field(
        description="When its keep-alive ends and it is unloaded, unless a request comes (null: in use, kept for ever or not loaded)"
    )
    keep_alive_seconds: float = Field(description="How long it stays loaded after its last request; -1: for ever")
    load_seconds: Seconds = sometimes(description="How long its last load took")
    seconds_per_char: Annotated[float, Field(ge=0)] = sometimes(description="Its throughput measured when it first loaded")
    unload_reason: str = sometimes(description="Why it was last unloaded")


class IdleStatus(_Sections):
    status: Literal["idle"]
    is_processing: Literal[False]
    message: str
    total_requests: Count
    queue: Queue
    engines: list[EngineResidency] = Field(description="Every engine: loaded, loading, idle since, unloaded")


class BusyStatus(RequestRecord, _Sections):
    status: ActiveStatus
    is_processing: Literal[True]
    total_requests: Count
    queue: Queue
    engines: list[EngineResidency] = Field(description="Every engine: loaded, loading, idle since, unloaded")


class Status(RootModel[Annotated[IdleStatus | BusyStatus, Field(discriminator="status")]]):
    """The current request (or idle) and the queue."""


class IdleProgress(Body):
    is_processing: Literal[False]
    status: Literal["idle"]
    message: str


class BusyProgress(ProgressFields):
    is_processing: Literal[True]
    status: ActiveStatus
    request_id: str
    duration_seconds: Seconds
    text_preview: str
    queue_length: Count


class Progress(RootModel[Annotated[IdleProgress | BusyProgress, Field(discriminator="status")]]):
    """Exactly {is_processing, status, message} when idle."""


class History(Body):
    request_history: list[RequestRecord]
    total_records: Count
    limit: Annotated[int, Field(ge=1, le=50)]


class HistoryCleared(Body):
    success: Literal[True]
    message: str
    cleared_records: Count


class EngineView(EngineResidency):
    """The default engine: which it is, why it was chosen, and how far its model has loaded."""

    requested: str
    reason: str
    device: str
    sample_rate: Annotated[int, Field(ge=1)]
    max_batch_size: Annotated[int, Field(ge=1)] = Field(
        description="How many requests' chunks it steps together (MAX_BATCH_SIZE, known once loaded); 1: one at a time"
    )


class UptimeInfo(Body):
    uptime_seconds: Seconds
    total_requests: Count
    success_rate: Percentage
    is_processing: bool


class Info(Body):
    """Status, statistics, memory, the last 3 requests and uptime."""

    api_name: str
    server: Literal["chatterbox-status"]
    version: str
    api_version: str
    status: Literal["operational", "initializing", "error"]
    engine: EngineView
    tts_status: Status
    statistics: Statistics
    memory_info: MemoryInfo
    recent_requests: Annotated[list[RequestRecord], Field(max_length=3)]
    uptime_info: UptimeInfo


class StatusEventData(Body):
    """An event's data: a request's status or progress, the engine's state, or a snapshot."""

    model_config = ConfigDict(extra="allow")

    timestamp: Timestamp
    request_id: str | None = sometimes()
    status: str = sometimes(description="A status value, or 'unknown' in a snapshot of a request not seen yet")
    is_processing: bool = sometimes()
    current_chunk: Count = sometimes()
    total_chunks: Count = sometimes()
    current_step: str = sometimes()
    progress_percentage: Percentage = sometimes()
    estimated_completion: Timestamp | None = sometimes()
    duration_seconds: Seconds = sometimes()
    text_preview: str = sometimes()
    message: str = sometimes()
    queue_length: Count = sometimes()
    name: str = sometimes(description="An engine event's engine")
    state: str = sometimes()
    load_progress: Percentage = sometimes()
    error: str | None = sometimes()
    in_use: Count = sometimes(description="Requests using the engine now")
    idle_since: Timestamp | None = sometimes()
    unloads_at: Timestamp | None = sometimes()
    keep_alive_seconds: float = sometimes()
    unload_reason: str = sometimes()
    batched_with: list[str] = sometimes(description="The other requests whose chunks are stepped together with this one's")
    node: str = sometimes(description="On a shared event log (REDIS_URL): the server process that published the event")
    worker: str = sometimes(description="In a progress event: the engine worker (WORKERS) that took the request's chunk")
    durable: bool = sometimes(description="In a queued event: a long-text job, which outlives its server process")
