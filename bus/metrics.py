"""Prometheus metrics of the bus: published, handled by outcome, dead letters, in flight."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

PUBLISHED = Counter(
    "orrery_bus_published_total",
    "Messages published and confirmed by the broker.",
    ["kind"],
)
HANDLED = Counter(
    "orrery_bus_handled_total",
    "Deliveries handled, by queue kind and outcome (ack, retry, dead).",
    ["queue_kind", "outcome"],
)
DEAD_LETTERS = Counter(
    "orrery_dead_letters_total",
    "Messages moved to the dead-letter queue.",
)
INFLIGHT = Gauge(
    "orrery_bus_inflight",
    "Deliveries being handled right now (a proxy for mailbox depth).",
    ["queue_kind"],
)

#: the queue kinds used as label values; never a queue name
EVENT, COMMAND, HOST = "event", "command", "host"

PUBLISHED_EVENT = PUBLISHED.labels(kind="event")
PUBLISHED_COMMAND = PUBLISHED.labels(kind="command")
PUBLISHED_REPLY = PUBLISHED.labels(kind="reply")


class QueueMetrics:
    """The label children of one queue kind, resolved once so the hot path only counts."""

    def __init__(self, queue_kind: str) -> None:
        self.queue_kind = queue_kind
        self.ack = HANDLED.labels(queue_kind=queue_kind, outcome="ack")
        self.retry = HANDLED.labels(queue_kind=queue_kind, outcome="retry")
        self.dead = HANDLED.labels(queue_kind=queue_kind, outcome="dead")
        self.inflight = INFLIGHT.labels(queue_kind=queue_kind)
        self._by_outcome = {"ack": self.ack, "retry": self.retry, "dead": self.dead}

    def count(self, outcome: str) -> None:
        """Count one settled delivery: ``ack``, ``retry`` or ``dead``."""
        self._by_outcome[outcome].inc()

