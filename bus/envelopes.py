"""Building a command envelope: the one place a command gets its id, correlation id and
deadline, whoever sends it (the gateway's client, an actor's effect, hostd)."""

from __future__ import annotations

import datetime as dt

import msgspec

from schemas import CommandEnvelope
from schemas.envelope import ENCODER, new_uuid

DEFAULT_TIMEOUT = 30.0


def command_envelope(
    kind: str,
    actor_id: str,
    command: msgspec.Struct,
    *,
    correlation_id: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    command_id: str | None = None,
    causation_id: str | None = None,
    reply_to: str | None = None,
    project_id: str | None = None,
    user_id: str | None = None,
) -> CommandEnvelope:
    """Wrap ``command`` (a tagged Struct) for ``(kind, actor_id)``: a new id unless given,
    a new ``req-`` correlation id unless given, due ``timeout`` seconds from now."""
    tag = type(command).__struct_config__.tag
    if not isinstance(tag, str):
        raise TypeError(f"{type(command).__name__} needs an explicit string tag")
    return CommandEnvelope(
        command_id=command_id or str(new_uuid()),
        kind=kind,
        actor_id=actor_id,
        type=tag,
        body=msgspec.Raw(ENCODER.encode(command)),
        correlation_id=correlation_id or f"req-{new_uuid()}",
        deadline=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=timeout),
        reply_to=reply_to,
        causation_id=causation_id,
        project_id=project_id,
        user_id=user_id,
    )
