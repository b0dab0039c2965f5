"""The service's refusals and failures, below HTTP.

Planning, the pipeline, the voice library and the long-text jobs raise these; they know
nothing of status codes. ``errors.ERROR_TABLE`` maps each class to the status, error type
and code a client sees, and the error middleware reads only that table, so every front
door renders the same failure the same way. Each kind of refusal is its own class.
"""

from __future__ import annotations


class Refusal(Exception):
    """Something the service will not or cannot do for a client.

    ``param`` names the input at fault; ``code`` refines the class's own code;
    ``retry_after`` (seconds) tells the client when trying again may work.
    """

    code: str | None = None

    def __init__(
        self, message: str = "", *, param: str | None = None, code: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.retry_after = retry_after


class InvalidInput(Refusal):
    """The request itself is wrong: a field out of range, text that cannot be spoken."""


class NotFound(Refusal):
    """The request names something that does not exist (a voice, a request, a job)."""

    code = "not_found"


class Conflict(Refusal):
    """The thing exists but its state does not allow the action."""


class ModelBusy(Conflict):
    """The engine cannot be unloaded while requests use it."""

    code = "model_in_use"


class Cancelled(Conflict):
    """The request was cancelled before it finished (raised inside engines, too)."""

    code = "cancelled"


class QueueFull(Refusal):
    """As many jobs wait as the queue may hold."""

    code = "queue_full"


class TooManyStreams(Refusal):
    """As many event streams are open as MAX_SSE_SUBSCRIBERS allows."""

    code = "too_many_streams"


class OutOfSpace(Refusal):
    """The disk, or the quota set for it, is full."""

    code = "insufficient_storage"


class Unavailable(Refusal):
    """The service cannot take the request now (engine not loaded, shutting down)."""


class EngineUnavailable(Unavailable):
    """The engine failed to load, so no job can run."""

    code = "engine_unavailable"


class EventLogUnavailable(Unavailable):
    """The shared event log (Redis) cannot be reached, so a request could not be tracked."""

    code = "event_log_unavailable"


class SharedStateUnavailable(Unavailable):
    """What the cluster shares in Redis (voices, long-text jobs, the chunk queue) cannot be reached or changed now."""

    code = "redis_unavailable"


class StorageUnavailable(Unavailable):
    """The long-text database cannot be used now (another process holds it locked, or holds
    its write lock past SQLite's busy timeout), though nothing says what it holds is bad."""

    code = "storage_unavailable"


class ShuttingDown(Unavailable):
    """The server is shutting down and takes no new jobs."""

    code = "shutting_down"


class EngineError(Refusal):
    """An engine failed in a way the client should hear about."""

    code = "generation_failed"


class EngineOutOfMemory(EngineError):
    """The engine ran out of memory on a chunk (torch's OutOfMemoryError, or MemoryError)."""


class EngineDied(EngineError):
    """The engine process is gone; what it was doing is lost."""
