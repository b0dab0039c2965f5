"""The status tracker: a fold over bus events into request records, queue and statistics.

It is a bus listener and nothing else writes to it, so its state changes only on the
event-loop thread and needs no lock. Given the same event log, any process rebuilds the
same state. Statistics are lifetime counters kept as events arrive; the history ring is
bounded and clearing it leaves the counters alone.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

from .events import Event

QUEUED = "queued"
# A long-text job that was paused: not running, not finished, counted once it ends.
PAUSED = "paused"
TERMINAL_STATUSES = frozenset({"completed", "error", "cancelled"})
STATUS_VALUES = (
    "idle",
    QUEUED,
    "initializing",
    "processing_text",
    "chunking",
    "generating_audio",
    "concatenating",
    "finalizing",
    "completed",
    "error",
    "cancelled",
    PAUSED,
)
PROGRESS_FIELDS = ("current_chunk", "total_chunks", "current_step", "progress_percentage", "estimated_completion")
# Fields a request's events may set on its record, besides status and progress.
RECORD_FIELDS = (
    "text_length",
    "text_preview",
    "voice_source",
    "parameters",
    "engine",
    "error_message",
    "audio_duration_seconds",
    "batched_with",
    "worker",  # the engine worker that took its latest chunk (WORKERS)
    "durable",  # a long-text job: its node resumes it after a restart
)
# What is known of an engine before its events say more.
ENGINE_DEFAULTS: dict[str, Any] = {
    "state": "not_started",
    "load_progress": 0.0,
    "error": None,
    "in_use": 0,
    "idle_since": None,
    "unloads_at": None,
    "keep_alive_seconds": -1.0,
}
# Weight of the newest measurement in the seconds-per-character moving average.
THROUGHPUT_ALPHA = 0.3


@dataclass
class RequestRecord:
    """Everything known about one request; views render subsets of it."""

    request_id: str
    start_time: float
    status: str = QUEUED
    end_time: float | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    progress: dict[str, Any] = field(
        default_factory=lambda: {
            "current_chunk": 0,
            "total_chunks": 0,
            "current_step": "Waiting in queue",
            "progress_percentage": 0.0,
            "estimated_completion": None,
        }
    )

    def duration(self, now: float) -> float:
        return round((self.end_time or now) - self.start_time, 3)

    def progress_view(self, now: float) -> dict[str, Any]:
        """Progress fields; a running request past its estimate is expected no earlier than now."""
        progress = dict(self.progress)
        eta = progress["estimated_completion"]
        if eta is not None and self.status != QUEUED and self.status not in TERMINAL_STATUSES:
            progress["estimated_completion"] = round(max(eta, now), 3)
        return progress

    def view(self, now: float) -> dict[str, Any]:
        body: dict[str, Any] = {
            "request_id": self.request_id,
            "status": self.status,
            "start_time": self.start_time,
            "end_time": self.end_time,
            "duration_seconds": self.duration(now),
            "text_length": self.fields.get("text_length", 0),
            "text_preview": self.fields.get("text_preview", ""),
            "voice_source": self.fields.get("voice_source", "default"),
            "parameters": self.fields.get("parameters", {}),
            "progress": self.progress_view(now),
        }
        for name in ("engine", "error_message", "audio_duration_seconds", "node", "worker"):
            if name in self.fields:
                body[name] = self.fields[name]
        if self.fields.get("batched_with"):
            body["batched_with"] = self.fields["batched_with"]
        return body


@dataclass
class Statistics:
    total_requests: int = 0
    completed_requests: int = 0
    error_requests: int = 0
    cancelled_requests: int = 0
    completed_duration_sum: float = 0.0
    completed_text_length_sum: int = 0

    def view(self) -> dict[str, Any]:
        finished = self.completed_requests + self.error_requests
        done = self.completed_requests
        return {
            "total_requests": self.total_requests,
            "completed_requests": done,
            "error_requests": self.error_requests,
            "cancelled_requests": self.cancelled_requests,
            "success_rate": round(100.0 * done / finished, 1) if finished else 0.0,
            "average_duration_seconds": round(self.completed_duration_sum / done, 3) if done else 0.0,
            "average_text_length": round(self.completed_text_length_sum / done, 1) if done else 0.0,
        }


class StatusTracker:
    """Folds events into current state; every public method is a read-only view.

    Engines are known by name (``default_engine`` is the one a request gets when its model
    names none); each has its state, its measured throughput and its own statistics. On a
    shared event log (Redis) every server process, its ``node``, has engines of its own: the
    engine events of other nodes are not folded into this one's engine states.
    """

    def __init__(self, history_size: int, default_engine: str = "", node: str | None = None) -> None:
        self.node = node
        # With engine workers (WORKERS): how many requests they run at once for every node
        # together (the queue's estimates follow); None: each node runs its own, one by one.
        self.lanes: int | None = None
        self._active: dict[str, RequestRecord] = {}
        self._paused: dict[str, RequestRecord] = {}
        self._history: collections.deque[RequestRecord] = collections.deque(maxlen=history_size)
        self._finished: dict[str, RequestRecord] = {}
        self.stats = Statistics()
        self.default_engine = default_engine
        self.engines: dict[str, dict[str, Any]] = {}
        self.engine_stats: dict[str, Statistics] = {}
        self.throughput: dict[str, float] = {}  # seconds per character, by engine

    @property
    def engine(self) -> dict[str, Any]:
        """The default engine's state."""
        return self.engine_state(self.default_engine)

    def engine_state(self, name: str) -> dict[str, Any]:
        """Engine ``name`` as its events left it: the residency fields always, and what
        else they said (load_seconds, seconds_per_char, why it was unloaded)."""
        return {"name": name, **ENGINE_DEFAULTS, **self.engines.get(name, {})}

    def engine_states(self) -> list[dict[str, Any]]:
        """Every engine the events named, in the order they first did (the default first)."""
        return [self.engine_state(name) for name in self.engines]

    @property
    def seconds_per_char(self) -> float | None:
        """The default engine's measured throughput."""
        return self.seconds_per_char_of(self.default_engine)

    def seconds_per_char_of(self, engine: str | None) -> float | None:
        """An engine's measured throughput; the default engine's until it has its own."""
        return self.throughput.get(engine or self.default_engine, self.throughput.get(self.default_engine))

    # -- the fold ---------------------------------------------------------------

    def apply(self, event: Event) -> None:
        if event.type == "engine" and event.data.get("node") == self.node:
            name = event.data.get("name", self.default_engine)
            state = self.engines.setdefault(name, {})
            self._engine_stats(name)
            state.update({k: v for k, v in event.data.items() if k not in ("timestamp", "node")})
            if "seconds_per_char" in event.data:
                self.throughput[name] = event.data["seconds_per_char"]
        elif event.type in ("status", "progress"):
            self._apply_request(event.data)
        elif event.type == "history_cleared":
            self._history.clear()
            self._finished.clear()

    def _apply_request(self, data: dict[str, Any]) -> None:
        request_id = data["request_id"]
        record = self._active.get(request_id)
        if record is None and request_id in self._paused:  # resumed, or ended while paused
            record = self._active[request_id] = self._paused.pop(request_id)
        if record is None:
            if data["status"] != QUEUED:
                return
            record = self._active[request_id] = RequestRecord(request_id, data["timestamp"])
            self.stats.total_requests += 1
            self._engine_stats(data.get("engine")).total_requests += 1
        if "node" in data and data["status"] == QUEUED:
            # On a shared event log: the node that queued it runs it (a long-text job taken
            # over from a node that stopped is queued again by the node that took it).
            record.fields["node"] = data["node"]
        record.status = data["status"]
        record.fields.update((k, data[k]) for k in RECORD_FIELDS if k in data)
        record.progress.update((k, data[k]) for k in PROGRESS_FIELDS if k in data)
        if record.status == PAUSED:
            self._paused[request_id] = self._active.pop(request_id)
        elif record.status in TERMINAL_STATUSES:
            self._finish(record, data)

    def checkpoint(self) -> dict[str, Any]:
        """What the fold holds (JSON-ready), but for engine states, which are each node's
        own: with ``restore`` on another process, the same state without the events."""
        return {
            "active": [dataclasses.asdict(r) for r in self._active.values()],
            "paused": [dataclasses.asdict(r) for r in self._paused.values()],
            "history": [dataclasses.asdict(r) for r in self._history],
            "stats": dataclasses.asdict(self.stats),
            "engine_stats": {name: dataclasses.asdict(stats) for name, stats in self.engine_stats.items()},
            "throughput": dict(self.throughput),
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Replace the fold by a ``checkpoint`` (this node's engine states stay)."""
        self._active = {r["request_id"]: RequestRecord(**r) for r in state["active"]}
        self._paused = {r["request_id"]: RequestRecord(**r) for r in state["paused"]}
        self._history.clear()
        self._history.extend(RequestRecord(**r) for r in state["history"])
        self._finished = {r.request_id: r for r in self._history}
        self.stats = Statistics(**state["stats"])
        self.engine_stats = {name: Statistics(**stats) for name, stats in state["engine_stats"].items()}
        self.throughput = dict(state["throughput"])

    def _engine_stats(self, engine: str | None) -> Statistics:
        return self.engine_stats.setdefault(engine or self.default_engine, Statistics())

    def _finish(self, record: RequestRecord, data: dict[str, Any]) -> None:
        record.end_time = data["timestamp"]
        del self._active[record.request_id]
        if len(self._history) == self._history.maxlen:
            self._finished.pop(self._history[0].request_id, None)
        self._history.append(record)
        self._finished[record.request_id] = record
        engine = record.fields.get("engine")
        for stats in (self.stats, self._engine_stats(engine)):
            if record.status == "completed":
                stats.completed_requests += 1
                stats.completed_duration_sum += record.duration(record.end_time)
                stats.completed_text_length_sum += record.fields.get("text_length", 0)
            elif record.status == "error":
                stats.error_requests += 1
            else:
                stats.cancelled_requests += 1
        if record.status == "completed":
            self._measure_throughput(engine or self.default_engine, data)

    def _measure_throughput(self, engine: str, data: dict[str, Any]) -> None:
        seconds, chars = data.get("generation_seconds"), data.get("generated_characters")
        if not seconds or not chars:
            return
        sample = seconds / chars
        previous = self.throughput.get(engine)
        self.throughput[engine] = sample if previous is None else previous + THROUGHPUT_ALPHA * (sample - previous)

    # -- views --------------------------------------------------------------------

    @property
    def is_processing(self) -> bool:
        return bool(self._active)

    @property
    def active_count(self) -> int:
        """Requests queued or running (a paused job is neither)."""
        return len(self._active)

    def active_by_engine(self) -> dict[str, int]:
        """Requests queued or running, by engine (every engine known, with 0)."""
        counts = dict.fromkeys(self.engines, 0)
        for record in self._active.values():
            engine = record.fields.get("engine") or self.default_engine
            counts[engine] = counts.get(engine, 0) + 1
        return counts

    def current(self) -> RequestRecord | None:
        """The request the engine is on: the oldest one past the queue, else the head of the queue."""
        running = next((r for r in self._active.values() if r.status != QUEUED), None)
        return running or next(iter(self._active.values()), None)

    def running_on(self) -> dict[str, list[str]]:
        """Requests queued or running that end with the node running them, by node: not the
        long-text jobs, which that node resumes when it starts again."""
        nodes: dict[str, list[str]] = {}
        for record in self._active.values():
            node = record.fields.get("node")
            if node is not None and not record.fields.get("durable"):
                nodes.setdefault(node, []).append(record.request_id)
        return nodes

    def find(self, request_id: str) -> RequestRecord | None:
        return self._active.get(request_id) or self._paused.get(request_id) or self._finished.get(request_id)

    def queued(self) -> list[RequestRecord]:
        return [r for r in self._active.values() if r.status == QUEUED]

    def queue_view(self, now: float | None = None) -> dict[str, Any]:
        """Queue positions with start and completion estimates from measured throughput.

        Positions are in the order requests were queued; each estimate follows the requests
        ahead of it in its own node's queue (on a shared event log every node has its own),
        or with ``lanes`` set in the one pool of engine workers every node shares, where a
        request starts as soon as the first of the ``lanes`` is free."""
        now = time.time() if now is None else now
        pools: dict[str | None, list[float | None]] = {}

        def lanes_of(record: RequestRecord) -> list[float | None]:
            node = record.fields.get("node") if self.lanes is None else None
            return pools.setdefault(node, [now] * (self.lanes or 1))

        for record in self._active.values():
            if record.status != QUEUED:
                lanes = lanes_of(record)
                lane = _first_free(lanes)
                clock, eta = lanes[lane], record.progress_view(now)["estimated_completion"]
                lanes[lane] = max(clock, eta) if (clock is not None and eta is not None) else None
        entries = []
        for position, record in enumerate(self.queued(), start=1):
            lanes = lanes_of(record)
            lane = _first_free(lanes)
            start = lanes[lane]
            spc = self.seconds_per_char_of(record.fields.get("engine"))
            done = None if (start is None or spc is None) else round(start + record.fields.get("text_length", 0) * spc, 3)
            entries.append(
                {
                    "request_id": record.request_id,
                    "position": position,
                    "text_length": record.fields.get("text_length", 0),
                    "queued_at": record.start_time,
                    "estimated_start": None if start is None else round(start, 3),
                    "estimated_completion": done,
                }
            )
            lanes[lane] = done
        return {"length": len(entries), "requests": entries}

    def history(self, limit: int) -> list[dict[str, Any]]:
        """Finished requests, newest first."""
        now = time.time()
        newest_first = reversed(self._history)
        return [record.view(now) for _, record in zip(range(limit), newest_first)]

    def statistics(self) -> dict[str, Any]:
        by_engine = {name: stats.view() for name, stats in sorted(self.engine_stats.items())}
        return {**self.stats.view(), "is_processing": self.is_processing, "engines": by_engine}

    def status(self) -> dict[str, Any]:
        """The /status body: the current request in the documented shape, or idle."""
        now = time.time()
        record = self.current()
        if record is None:
            return {
                "status": "idle",
                "is_processing": False,
                "message": "No active TTS requests",
                "total_requests": self.stats.total_requests,
                "queue": self.queue_view(now),
                "engines": self.engine_states(),
            }
        return {
            **record.view(now),
            "is_processing": True,
            "total_requests": self.stats.total_requests,
            "queue": self.queue_view(now),
            "engines": self.engine_states(),
        }

    def progress(self) -> dict[str, Any]:
        """The light /status/progress body."""
        record = self.current()
        if record is None:
            return {"is_processing": False, "status": "idle", "message": "No active TTS requests"}
        now = time.time()
        return {
            "is_processing": True,
            "status": record.status,
            "request_id": record.request_id,
            **record.progress_view(now),
            "duration_seconds": record.duration(now),
            "text_preview": record.fields.get("text_preview", ""),
            "queue_length": len(self.queued()),
        }


def _first_free(lanes: list[float | None]) -> int:
    """The lane that frees first (one whose end is unknown only when every one's is)."""
    known = [(clock, lane) for lane, clock in enumerate(lanes) if clock is not None]
    return min(known)[1] if known else 0
