"""How an actor kind is declared: pure decide/evolve, its commands, events and reactions."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import msgspec

from schemas import Reply, TimerFired

S = TypeVar("S")

#: Events a decision returns: payload Structs with explicit tags.
Events = Sequence[msgspec.Struct]


class Rejected(Exception):
    """A command the actor refuses: an answer to the caller, never retried, no event.

    ``code`` is a short machine name (``conflict``, ``not_found``, ``bad_request``) that the
    gateway maps to each service's error body.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Context:
    """Everything outside the state a decision may depend on, taken from the message."""

    actor_id: str
    message_id: str
    correlation_id: str
    now: dt.datetime
    project_id: str | None = None
    user_id: str | None = None

    def derive_id(self, n: int = 0) -> str:
        """A new id that is the same every time this message is decided (replay-safe)."""
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{self.message_id}/{n}"))


@dataclass(frozen=True, slots=True)
class Tell:
    """An effect: send ``command`` to actor ``(kind, actor_id)`` with id ``request_id``;
    its Reply comes back to the sending actor (``on_reply``) as a message of its own."""

    kind: str
    actor_id: str
    command: msgspec.Struct
    request_id: str
    timeout: float = 30.0


@dataclass(frozen=True, slots=True)
class TellHost:
    """An effect: send the hostd ``command`` to ``compute.<host>`` with id ``request_id``;
    its Replies (interim and final) come back to the sending actor's ``on_reply``."""

    host: str
    command: msgspec.Struct
    request_id: str
    timeout: float = 60.0


Decide = Callable[[Any, Any, Context], Events]
#: After events were recorded: the effects (Tell, TellHost, or a kind-specific one the
#: runtime was given a handler for) to carry out now. Derived from the new state and the
#: events just recorded only, so a replay of the log never re-sends anything.
Effects = Callable[[Any, Events, Context], Sequence[object]]

Evolve = Callable[[Any, Any], Any]
#: From an event another actor recorded, the id of the actor of this kind that reacts
#: (None: not for us).
FindId = Callable[[Any], str | None]


@dataclass(frozen=True)
class ActorKind(Generic[S]):
    """One kind of actor.

    ``decide(state, command, ctx)`` returns events or raises Rejected; ``evolve(state,
    event)`` folds one event (system timer events included). ``react(state, event, ctx)``
    decides on another actor's event, routed to the id ``reactions[event_tag](event)``
    finds. ``on_timer(state, fired, ctx)`` decides when a timer the actor set goes off.
    ``on_reply(state, reply, ctx)`` decides on the answer to a request the actor made
    through an effect; ``effects(state, events, ctx)`` says what to send once ``events``
    are recorded. ``answer(state, query, ctx)`` answers a read-only ``queries`` message
    with a string result and records nothing. ``result(state, command, ctx)`` is what the
    Reply to a command carries, read from the state once its events are recorded.
    """

    name: str
    state_type: type[S]
    initial: Callable[[str], S]
    decide: Decide
    evolve: Evolve
    commands: Sequence[type[msgspec.Struct]]
    events: Sequence[type[msgspec.Struct]]
    reactions: Mapping[str, FindId] = field(default_factory=dict)
    react: Decide | None = None
    on_timer: Callable[[Any, TimerFired, Context], Events] | None = None
    reaction_events: Sequence[type[msgspec.Struct]] = ()
    on_reply: Callable[[Any, Reply, Context], Events] | None = None
    effects: Effects | None = None
    queries: Sequence[type[msgspec.Struct]] = ()
    answer: Callable[[Any, Any, Context], str] | None = None
    #: what the Reply to a command carries as ``result`` (e.g. the address a pool handed
    #: out), from the state after the command's events; None: no result
    result: Callable[[Any, Any, Context], str | None] | None = None
    snapshot_every: int = 100
    #: commands that only a new actor accepts (its create): an actor not yet activated
    #: decides one on its initial state without reading its stream, which is empty but
    #: for a mistake or a redelivery; the append expects version 0, so a stream that
    #: exists conflicts, and the actor then reads it and decides again
    creates: Sequence[type[msgspec.Struct]] = ()

    def __post_init__(self) -> None:
        if self.reactions and self.react is None:
            raise TypeError(f"kind {self.name}: reactions declared without react()")
        missing = set(self.reactions) - {_tag(t) for t in self.reaction_events}
        if missing:
            raise TypeError(f"kind {self.name}: no Struct given for reactions {sorted(missing)}")
        if self.queries and self.answer is None:
            raise TypeError(f"kind {self.name}: queries declared without answer()")
        if not set(self.creates) <= set(self.commands):
            raise TypeError(f"kind {self.name}: creates names a type that is no command")


def _tag(t: type[msgspec.Struct]) -> str:
    tag = t.__struct_config__.tag
    if not isinstance(tag, str):
        raise TypeError(f"{t.__name__} needs an explicit string tag")
    return tag


def tag_of(t: type[msgspec.Struct]) -> str:
    """The stable tag of a message Struct."""
    return _tag(t)
