"""Prometheus metrics of the event log: append latency, group-commit batch sizes, events."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

APPEND_SECONDS = Histogram(
    "orrery_store_append_seconds",
    "Append latency as the caller sees it (queueing + group commit), in seconds.",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
BATCH_EVENTS = Histogram(
    "orrery_store_batch_events",
    "Events written per group-commit transaction.",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000),
)
APPENDED_EVENTS = Counter(
    "orrery_store_appended_events_total",
    "Events committed to the log.",
)
