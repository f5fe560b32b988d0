"""What happens to a delivery, shared by every Bus: run the handler, decide ack/retry/dead.

Redelivery is by *republishing* the message to the tail of its own queue with the header
``x-orrery-attempt`` incremented, then acking the original (rather than nack-requeue):
the attempt count then travels with the message, so it survives reconnects, broker
restarts and a change of consumer, and classic queues need no delivery counter. The
price is that a retried message goes behind the ones queued after it, which handlers
tolerate anyway (they are idempotent and order-insensitive across retries).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

import structlog

from bus.errors import BadMessage
from bus.protocol import DeadLetter, Delivery, Handler

log = structlog.get_logger(__name__)

ATTEMPT = "x-orrery-attempt"
REASON = "x-orrery-reason"
QUEUE = "x-orrery-queue"
ROUTING_KEY = "x-orrery-routing-key"
ATTEMPTS = "x-orrery-attempts"

_REASON_LIMIT = 1000
#: how long cancelling a subscription lets in-flight handlers finish before cancelling them
DRAIN_TIMEOUT = 5.0


class Outcome(enum.Enum):
    ACK = "ack"
    RETRY = "retry"
    DEAD = "dead"


def make_delivery(
    body: bytes, routing_key: str, queue: str, headers: Mapping[str, object] | None
) -> Delivery:
    """A Delivery from what the broker handed over; a retried message keeps its first key."""
    if not headers:
        return Delivery(body=body, routing_key=routing_key, queue=queue)
    strs = {k: _text(v) for k, v in headers.items()}
    return Delivery(
        body=body,
        routing_key=strs.get(ROUTING_KEY, routing_key),
        queue=queue,
        headers=strs,
        attempt=_int(strs.get(ATTEMPT), 1),
    )


async def run_handler(
    handler: Handler, delivery: Delivery, max_attempts: int
) -> tuple[Outcome, str]:
    """Run the handler; say what to do with the message and why. Never swallows cancel."""
    try:
        await handler(delivery)
    except BadMessage as exc:
        reason = f"BadMessage: {exc}"
        log.warning("bus_bad_message", queue=delivery.queue, reason=reason[:200])
        return Outcome.DEAD, reason[:_REASON_LIMIT]
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"[:_REASON_LIMIT]
        log.warning(
            "bus_handler_failed", queue=delivery.queue, attempt=delivery.attempt,
            routing_key=delivery.routing_key, error=reason[:200], exc_info=exc,
        )
        if delivery.attempt >= max_attempts:
            return Outcome.DEAD, f"{reason} (gave up after {delivery.attempt} attempts)"
        return Outcome.RETRY, reason
    return Outcome.ACK, ""


def retry_headers(delivery: Delivery) -> dict[str, str]:
    """Headers of the republished copy: one more attempt, the original routing key kept."""
    headers = dict(delivery.headers)
    headers[ATTEMPT] = str(delivery.attempt + 1)
    headers[ROUTING_KEY] = delivery.routing_key
    return headers


def dead_headers(delivery: Delivery, reason: str) -> dict[str, str]:
    """Headers of a dead letter: why, from where, after how many attempts."""
    return {
        REASON: reason,
        QUEUE: delivery.queue,
        ROUTING_KEY: delivery.routing_key,
        ATTEMPTS: str(delivery.attempt),
    }


def make_dead_letter(body: bytes, headers: Mapping[str, object] | None) -> DeadLetter:
    """A DeadLetter read back from the dead-letter queue."""
    strs = {k: _text(v) for k, v in (headers or {}).items()}
    return DeadLetter(
        body=body,
        routing_key=strs.get(ROUTING_KEY, ""),
        queue=strs.get(QUEUE, ""),
        reason=strs.get(REASON, "unknown"),
        attempts=_int(strs.get(ATTEMPTS), 1),
    )


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default
