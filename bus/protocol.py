"""The Bus seam: events out to subscribers, commands to actor shards and hosts."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import msgspec

from bus.routing import Names
from schemas import CommandEnvelope, EventEnvelope, Reply


class Delivery(msgspec.Struct, frozen=True, kw_only=True):
    """One message handed to a handler. ``attempt`` counts deliveries of it, from 1."""

    body: bytes
    routing_key: str
    queue: str
    headers: dict[str, str] = {}
    attempt: int = 1


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """A message that was given up on, with why."""

    body: bytes
    routing_key: str
    queue: str
    reason: str
    attempts: int


#: A handler returns normally to ack. Raising BadMessage dead-letters at once; any other
#: exception redelivers the message, until ``max_attempts`` is reached, then dead-letters.
Handler = Callable[[Delivery], Awaitable[None]]
#: A call's responder returns the reply sent back to the caller.
Responder = Callable[[CommandEnvelope], Awaitable[Reply]]


class Subscription(Protocol):
    async def cancel(self) -> None:
        ...


class Bus(Protocol):
    """Topic exchange for events; shard queues per actor kind; host queues; dead letters.

    Commands for actor ``(kind, id)`` go to shard ``shard_of(id, shards)`` of the kind;
    each shard has one active consumer cluster-wide. Commands whose ``kind`` is
    ``compute`` go to the host queue named by ``actor_id``.
    """

    names: Names
    """Every exchange and queue name this bus uses (its prefix and shard count)."""

    async def publish_event(self, event: EventEnvelope) -> None:
        """Publish to the event exchange with key ``<kind>.<type>``; returns once the
        broker has confirmed it (durably)."""
        ...

    async def publish_events(self, events: Sequence[EventEnvelope]) -> None:
        """Publish many, in order; returns once all are confirmed."""
        ...

    async def send(self, command: CommandEnvelope) -> None:
        """Cast: route the command to its shard or host queue, confirmed."""
        ...

    async def call(self, command: CommandEnvelope, timeout: float) -> Reply:
        """Send and await the reply, at most ``timeout`` seconds (CallTimeout)."""
        ...

    async def reply(self, reply_to: str, reply: Reply) -> None:
        """Answer a call."""
        ...

    async def subscribe_events(
        self, queue: str, patterns: Sequence[str], handler: Handler, *, prefetch: int = 100
    ) -> Subscription:
        """Consume events matching any topic pattern from a durable named queue
        (competing consumers share it)."""
        ...

    async def consume_commands(
        self, kind: str, handler: Handler, *, prefetch: int = 100,
        shards: Sequence[int] | None = None,
    ) -> Subscription:
        """Consume the shard queues of ``kind`` (all, or the given shard numbers); each
        shard is active on one consumer cluster-wide."""
        ...

    async def consume_host(
        self, host: str, handler: Handler, *, prefetch: int = 100
    ) -> Subscription:
        """Consume the ``compute.<host>`` queue."""
        ...

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """Read (and remove) up to ``limit`` dead-lettered messages."""
        ...

    async def close(self) -> None:
        ...
