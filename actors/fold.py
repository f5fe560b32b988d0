"""The fold of an actor's stream: one place that turns recorded events into state.

The runtime (actors/cell.py) and the replay tool (replay/) both fold through
``fold_event``, so what the tool shows is what an actor would load: the kind's own
``evolve`` plus the runtime's bookkeeping of the durable timers the actor has open.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from actors.codec import KindCodec
from schemas import EventEnvelope, TimerCancelled, TimerFired, TimerSet


def fold_event(codec: KindCodec, state: Any, timers: dict[str, str],
               event: msgspec.Struct) -> Any:
    """``state`` after ``event``; ``timers`` (open timer id -> name) is updated in place."""
    match event:
        case TimerSet(timer_id=tid, name=name):
            timers[tid] = name
        case TimerFired(timer_id=tid) | TimerCancelled(timer_id=tid):
            timers.pop(tid, None)
    return codec.kind.evolve(state, event)


class Folded:
    """One stream folded from its start: the state, its version and the open timers."""

    def __init__(self, codec: KindCodec, actor_id: str) -> None:
        self.codec = codec
        self.state: Any = codec.kind.initial(actor_id)
        self.version = 0
        self.timers: dict[str, str] = {}

    def apply(self, env: EventEnvelope) -> msgspec.Struct:
        """Decode ``env`` with today's code and fold it in; returns the decoded event."""
        event: msgspec.Struct = self.codec.events.decode(env.data)
        self.state = fold_event(self.codec, self.state, self.timers, event)
        self.version = env.version
        return event

    def apply_all(self, envs: Iterable[EventEnvelope]) -> Folded:
        for env in envs:
            self.apply(env)
        return self
