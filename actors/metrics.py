"""Prometheus metrics of the actor runtime."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

HANDLED = Counter(
    "orrery_actor_messages_total", "Messages handled by actors", ["kind", "outcome"]
)
MAILBOX = Gauge("orrery_actor_mailbox_depth", "Messages waiting for a busy actor", ["kind"])
ACTIVE = Gauge("orrery_actor_active", "Actors activated in this process", ["kind"])
ACTIVATIONS = Counter("orrery_actor_activations_total", "Actor activations", ["kind"])
PASSIVATIONS = Counter("orrery_actor_passivations_total", "Idle actors passivated", ["kind"])
CONFLICTS = Counter(
    "orrery_actor_conflicts_total", "Appends retried after a version conflict", ["kind"]
)
HANDLE_SECONDS = Histogram(
    "orrery_actor_handle_seconds", "Time to handle one message, lock wait excluded", ["kind"]
)
TIMERS_FIRED = Counter("orrery_timers_sent_total", "Due timers sent to their actors")


class KindMetrics:
    """The label children of one actor kind, resolved once so the hot path only counts."""

    def __init__(self, kind: str) -> None:
        self.ok = HANDLED.labels(kind, "ok")
        self.rejected = HANDLED.labels(kind, "rejected")
        self.failed = HANDLED.labels(kind, "failed")
        self.expired = HANDLED.labels(kind, "expired")
        self.mailbox = MAILBOX.labels(kind)
        self.active = ACTIVE.labels(kind)
        self.handle_seconds = HANDLE_SECONDS.labels(kind)
