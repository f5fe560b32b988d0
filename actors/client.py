"""Sending commands to actors: the one way the gateway, tests and tools talk to them."""

from __future__ import annotations

import datetime as dt
import uuid

import msgspec

from actors.kind import tag_of
from bus.protocol import Bus
from schemas import CommandEnvelope, Reply
from schemas.envelope import ENCODER

DEFAULT_TIMEOUT = 30.0


def command_envelope(
    kind: str,
    actor_id: str,
    command: msgspec.Struct,
    *,
    correlation_id: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    command_id: str | None = None,
    project_id: str | None = None,
    user_id: str | None = None,
) -> CommandEnvelope:
    """Wrap ``command`` for ``(kind, actor_id)`` with an id, a correlation id and a deadline."""
    cid = command_id or str(uuid.uuid4())
    return CommandEnvelope(
        command_id=cid,
        kind=kind,
        actor_id=actor_id,
        type=tag_of(type(command)),
        body=msgspec.Raw(ENCODER.encode(command)),
        correlation_id=correlation_id or f"req-{uuid.uuid4()}",
        deadline=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=timeout),
        project_id=project_id,
        user_id=user_id,
    )


class ActorClient:
    """Casts and calls to actors over a Bus, every message with a deadline."""

    def __init__(self, bus: Bus, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.bus = bus
        self.timeout = timeout

    async def call(
        self, kind: str, actor_id: str, command: msgspec.Struct, *,
        timeout: float | None = None, **meta: str | None,
    ) -> Reply:
        """Send ``command`` and await the actor's reply (CallTimeout past the deadline)."""
        wait = timeout or self.timeout
        env = command_envelope(kind, actor_id, command, timeout=wait, **meta)
        return await self.bus.call(env, timeout=wait)

    async def cast(
        self, kind: str, actor_id: str, command: msgspec.Struct, *,
        timeout: float | None = None, **meta: str | None,
    ) -> str:
        """Send ``command`` without waiting for its effect; returns the command id."""
        env = command_envelope(kind, actor_id, command, timeout=timeout or self.timeout,
                               **meta)
        await self.bus.send(env)
        return env.command_id
