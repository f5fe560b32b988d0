"""Per-kind decoders and encoders: one Decoder per union, built once per kind."""

from __future__ import annotations

from functools import reduce
from operator import or_
from typing import Any

import msgspec

from actors.kind import ActorKind, tag_of
from schemas import SYSTEM_EVENTS, NewEvent
from schemas.envelope import ENCODER


def _union(types: list[type[msgspec.Struct]]) -> Any:
    unique = list(dict.fromkeys(types))
    return reduce(or_, unique) if len(unique) > 1 else unique[0]


class CellSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """What the runtime saves as a stream's snapshot: the kind's state and open timers."""

    state: msgspec.Raw
    timers: dict[str, str] = {}


class KindCodec:
    """Decoders for one kind's commands, own events, reaction events and state."""

    def __init__(self, kind: ActorKind[Any]) -> None:
        self.kind = kind
        self.command_tags = {tag_of(t) for t in kind.commands}
        self.create_tags = {tag_of(t) for t in kind.creates}
        self.commands = msgspec.json.Decoder(_union(list(kind.commands)))
        self.events = msgspec.json.Decoder(_union([*kind.events, *SYSTEM_EVENTS]))
        self.reactions = (
            msgspec.json.Decoder(_union(list(kind.reaction_events)))
            if kind.reaction_events
            else None
        )
        self.query_tags = {tag_of(t) for t in kind.queries}
        self.queries = (
            msgspec.json.Decoder(_union(list(kind.queries))) if kind.queries else None
        )
        self.state = msgspec.json.Decoder(kind.state_type)
        self.snapshot = msgspec.json.Decoder(CellSnapshot)

    def event_types(self) -> list[type[msgspec.Struct]]:
        return [*self.kind.events, *SYSTEM_EVENTS]


def to_new_event(
    payload: msgspec.Struct,
    *,
    correlation_id: str | None,
    causation_id: str | None,
    project_id: str | None,
    user_id: str | None,
) -> NewEvent:
    """Wrap a decided payload as an event to append, carrying the message's metadata."""
    return NewEvent(
        type=tag_of(type(payload)),
        data=ENCODER.encode(payload),
        correlation_id=correlation_id,
        causation_id=causation_id,
        project_id=project_id,
        user_id=user_id,
    )
