"""Sending commands to actors: the one way the gateway, tests and tools talk to them."""

from __future__ import annotations

import msgspec

from bus.envelopes import DEFAULT_TIMEOUT, command_envelope
from bus.protocol import Bus
from schemas import Reply

__all__ = ["DEFAULT_TIMEOUT", "ActorClient", "command_envelope"]

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
