"""Wire and storage shapes of Orrery: msgspec Structs only, no logic."""

from schemas.envelope import (
    COMMAND_DECODER,
    ENCODER,
    EVENT_DECODER,
    CommandEnvelope,
    EventEnvelope,
    NewEvent,
    Reply,
    stream_kind,
    stream_name,
)
from schemas.system import SYSTEM_EVENTS, TimerCancelled, TimerFired, TimerSet

__all__ = [
    "COMMAND_DECODER",
    "ENCODER",
    "EVENT_DECODER",
    "SYSTEM_EVENTS",
    "CommandEnvelope",
    "EventEnvelope",
    "NewEvent",
    "Reply",
    "TimerCancelled",
    "TimerFired",
    "TimerSet",
    "stream_kind",
    "stream_name",
]
