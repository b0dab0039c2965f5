"""Prometheus metrics, folded from bus events like the tracker, in the app's own registry."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .events import Event, EventBus
from .tracker import TERMINAL_STATUSES
from .worker import Worker

CONTENT_TYPE = CONTENT_TYPE_LATEST
GENERATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
RTF_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10)


class Metrics:
    """Requests by terminal status, queue depth, generation time, real-time factor, SSE subscribers."""

    def __init__(self, bus: EventBus, worker: Worker, engine_name: str) -> None:
        self.registry = CollectorRegistry()
        labels = {"engine": engine_name}
        self.requests = Counter(
            "chatterbox_requests", "Speech requests that ended, by terminal status", ["engine", "status"],
            registry=self.registry,
        )
        self.active = Gauge(
            "chatterbox_requests_active", "Speech requests queued or running", ["engine"], registry=self.registry
        )
        self.generation = Histogram(
            "chatterbox_generation_seconds", "Seconds from the start of processing to the finished audio",
            ["engine"], buckets=GENERATION_BUCKETS, registry=self.registry,
        )
        self.rtf = Histogram(
            "chatterbox_real_time_factor", "Generation seconds per second of audio (below 1 is faster than real time)",
            ["engine"], buckets=RTF_BUCKETS, registry=self.registry,
        )
        queue = Gauge("chatterbox_queue_depth", "Requests waiting for the engine", registry=self.registry)
        queue.set_function(lambda: len(worker.queue))
        streams = Gauge("chatterbox_sse_subscribers", "Open event-stream subscriptions", registry=self.registry)
        streams.set_function(lambda: bus.subscriber_count)
        self._labels = labels
        bus.add_listener(self.apply)

    def apply(self, event: Event) -> None:
        if event.type != "status":
            return
        status = event.data["status"]
        if status == "queued":
            self.active.labels(**self._labels).inc()
        elif status in TERMINAL_STATUSES:
            self.active.labels(**self._labels).dec()
            self.requests.labels(status=status, **self._labels).inc()
            seconds, audio = event.data.get("generation_seconds"), event.data.get("audio_duration_seconds")
            if status == "completed" and seconds is not None:
                self.generation.labels(**self._labels).observe(seconds)
                if audio:
                    self.rtf.labels(**self._labels).observe(seconds / audio)

    def render(self) -> bytes:
        return generate_latest(self.registry)
