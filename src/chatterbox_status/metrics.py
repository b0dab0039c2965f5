"""Prometheus metrics in the app's own registry.

Counts and gauges are read from the status tracker when scraped, so /metrics and the
status API fold the same events into the same figures and cannot disagree. The two
histograms (generation time, real-time factor) are the only thing metrics keep
themselves: the status API has no such distributions.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from .events import Event, EventBus
from .tracker import StatusTracker

CONTENT_TYPE = CONTENT_TYPE_LATEST
GENERATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
RTF_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10)


class _TrackerFigures(Collector):
    """Requests by terminal status, requests active, queue depth and open event streams."""

    def __init__(self, tracker: StatusTracker, bus: EventBus) -> None:
        self.tracker = tracker
        self.bus = bus

    def collect(self) -> Iterator[Metric]:
        ended = CounterMetricFamily(
            "chatterbox_requests", "Speech requests that ended, by engine and terminal status", labels=["engine", "status"]
        )
        for engine, stats in sorted(self.tracker.engine_stats.items()):
            for status, count in (
                ("completed", stats.completed_requests),
                ("error", stats.error_requests),
                ("cancelled", stats.cancelled_requests),
            ):
                ended.add_metric([engine, status], count)
        yield ended
        active = GaugeMetricFamily("chatterbox_requests_active", "Speech requests queued or running", labels=["engine"])
        for engine, count in sorted(self.tracker.active_by_engine().items()):
            active.add_metric([engine], count)
        yield active
        loaded = GaugeMetricFamily("chatterbox_engine_loaded", "Whether an engine is loaded (1) or not (0)", labels=["engine"])
        for state in self.tracker.engine_states():
            loaded.add_metric([state["name"]], 1.0 if state["state"] == "ready" else 0.0)
        yield loaded
        yield GaugeMetricFamily("chatterbox_queue_depth", "Requests waiting for the engine", value=len(self.tracker.queued()))
        yield GaugeMetricFamily("chatterbox_sse_subscribers", "Open event-stream subscriptions", value=self.bus.subscriber_count)


class Metrics:
    """The registry, and the histograms folded from completion events."""

    def __init__(self, bus: EventBus, tracker: StatusTracker) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_TrackerFigures(tracker, bus))
        self.tracker = tracker
        self.generation = Histogram(
            "chatterbox_generation_seconds", "Seconds from the start of processing to the finished audio",
            ["engine"], buckets=GENERATION_BUCKETS, registry=self.registry,
        )
        self.rtf = Histogram(
            "chatterbox_real_time_factor", "Generation seconds per second of audio (below 1 is faster than real time)",
            ["engine"], buckets=RTF_BUCKETS, registry=self.registry,
        )
        bus.add_listener(self.apply)

    def apply(self, event: Event) -> None:
        if event.type != "status" or event.data["status"] != "completed":
            return
        seconds, audio = event.data.get("generation_seconds"), event.data.get("audio_duration_seconds")
        record = self.tracker.find(event.data["request_id"])  # the tracker folded the event already
        engine = (record.fields.get("engine") if record is not None else None) or self.tracker.default_engine
        if seconds is not None:
            self.generation.labels(engine=engine).observe(seconds)
            if audio:
                self.rtf.labels(engine=engine).observe(seconds / audio)

    def render(self) -> bytes:
        return generate_latest(self.registry)
