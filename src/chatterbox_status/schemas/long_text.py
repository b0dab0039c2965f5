"""The long-text jobs' bodies, with chatterbox-tts-api's field names (the request itself is
``speech.LongTextRequest``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeAlias

from pydantic import BaseModel, ConfigDict, Field, RootModel

from ..longtext.store import JOB_STATUSES
from . import Body
from .status import Count, Percentage

# The store's job statuses, as a Literal (a type checker sees str: it is built at run time).
if TYPE_CHECKING:
    JobStatus: TypeAlias = str
else:
    JobStatus = Literal[JOB_STATUSES]
BulkAction = Literal["delete", "retry", "cancel", "pause", "resume"]
IsoTime = Annotated[str, Field(description="ISO 8601, UTC")]


# -- requests -------------------------------------------------------------------------------


class UpdateRequest(BaseModel):
    """Rename or tag a job."""

    model_config = ConfigDict(extra="forbid", strict=True)
    display_name: Annotated[str, Field(max_length=200)] | None = None
    tags: Annotated[list[Annotated[str, Field(max_length=50)]], Field(max_length=20)] | None = None
    is_archived: bool | None = None


class RetryRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    preserve_chunks: bool = Field(True, description="Only true: a retry continues from the last finished chunk")


class BulkRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    job_ids: Annotated[list[str], Field(min_length=1, max_length=100)]
    action: BulkAction
    confirm: bool


# -- responses ------------------------------------------------------------------------------


class JobCreated(Body):
    """The job, accepted: its id, chunk count and estimate."""

    job_id: str
    status: JobStatus
    message: str
    estimated_processing_time_seconds: Count | None
    total_chunks: Annotated[int, Field(ge=1)]
    status_url: str
    sse_url: str


class JobProgress(Body):
    job_id: str
    overall_progress: Percentage
    current_chunk: int | None
    completed_chunks: Count
    total_chunks: Count
    estimated_remaining_seconds: Count | None
    status: JobStatus
    error: str | None


class JobMetadata(Body):
    job_id: str
    created_at: IsoTime | None
    updated_at: IsoTime | None
    status: JobStatus
    text_length: Count
    total_chunks: Count
    completed_chunks: Count
    current_chunk: int | None
    voice: str
    parameters: dict[str, Any]
    processing_started_at: IsoTime | None
    processing_paused_at: IsoTime | None
    processing_completed_at: IsoTime | None
    total_processing_time_ms: Count
    output_format: str
    output_path: str | None
    output_size_bytes: Count | None
    output_duration_seconds: float | None
    error: str | None
    user_session_id: str | None
    completion_timestamp: IsoTime | None
    audio_file_size: Count | None
    total_duration_seconds: float | None
    retry_count: Count
    silence_padding_ms: Count
    display_name: str | None
    tags: list[str]
    last_accessed: IsoTime | None


class JobView(Body):
    """A job's status and progress, and what can be done with it now."""

    job_id: str
    status: JobStatus
    progress: JobProgress
    metadata: JobMetadata
    created_at: IsoTime | None
    updated_at: IsoTime | None
    download_url: str | None
    can_pause: bool
    can_resume: bool
    can_cancel: bool


class JobListItem(Body):
    job_id: str
    status: JobStatus
    text_preview: str
    text_length: Count
    progress_percentage: Percentage
    created_at: IsoTime | None
    completed_at: IsoTime | None
    download_url: str | None
    can_resume: bool
    voice: str
    estimated_remaining_seconds: Count | None
    total_duration_seconds: float | None
    audio_file_size: Count | None
    retry_count: Count
    is_archived: bool
    display_name: str | None
    tags: list[str]
    last_accessed: IsoTime | None
    parameters: dict[str, Any]
    total_chunks: Count
    completed_chunks: Count


class JobList(Body):
    """A page of jobs, newest first, with the counts over all jobs."""

    jobs: list[JobListItem]
    total_jobs: Count
    matching_jobs: Count
    active_jobs: Count
    completed_jobs: Count
    limit: Annotated[int, Field(ge=1, le=100)]
    offset: Count


class HistoryStats(Body):
    """Statistics over all long-text jobs."""

    total_jobs: Count
    completed_jobs: Count
    failed_jobs: Count
    total_audio_duration_seconds: Annotated[float, Field(ge=0)]
    total_storage_bytes: Count
    average_processing_time_seconds: Annotated[float, Field(ge=0)]
    success_rate_percentage: Percentage
    most_used_voice: str | None
    jobs_by_month: dict[str, int] = Field(description="Jobs created per month (YYYY-MM)")


class JobHistoryCleared(Body):
    """How many finished jobs were removed, with their audio."""

    message: str
    cleared_count: Count
    failed_count: Count


class BulkResult(Body):
    """What succeeded and what failed."""

    success_count: Count
    failed_count: Count
    total_count: Count
    failed_jobs: list[str]
    message: str


class JobAction(Body):
    """The job after the action."""

    success: Literal[True]
    message: str
    status: JobStatus
    job_id: str


class JobDeleted(Body):
    success: Literal[True]
    message: str
    job_id: str


class ChunkView(Body):
    index: Count
    text: str
    text_preview: str
    character_count: Count
    status: Literal["pending", "processing", "completed"]
    audio_file: str | None
    duration_ms: Count | None
    processing_started_at: IsoTime | None
    processing_completed_at: IsoTime | None
    error: str | None


class PerformanceMetrics(Body):
    total_processing_time_ms: Count
    avg_chunk_time_ms: Annotated[float, Field(ge=0)]
    success_rate: Annotated[float, Field(ge=0, le=1)]


class JobDetails(Body):
    """The job with every chunk's state."""

    metadata: JobMetadata
    chunks: list[ChunkView]
    input_text: str
    error_log: list[str]
    performance_metrics: PerformanceMetrics


# -- the job's event stream -----------------------------------------------------------------


class JobSnapshotEvent(Body):
    """The first ``progress`` event: the stored state."""

    job_id: str
    status: JobStatus
    progress: Percentage
    current_chunk: int | None
    total_chunks: Count


class JobProgressEvent(Body):
    """A live ``progress`` event while the job runs."""

    job_id: str
    status: Literal["pending", "processing"]
    stage: str | None
    current_step: str | None
    progress: Percentage | None
    current_chunk: int | None
    total_chunks: int | None
    estimated_completion: float | None


class JobEnded(Body):
    """The last event: ``completed``, ``error``, ``cancelled``, ``paused`` (or ``status``)."""

    job_id: str
    status: JobStatus
    message: str
    download_url: str | None


class JobCancelledOrDeleted(RootModel[JobAction | JobDeleted]):
    """What was done: the job cancelled (and kept), or deleted with its files."""
