"""The test-only ``counter`` actor kind: enough to exercise the runtime end to end.

Commands: Increment (optionally forwarded to another counter through a reaction),
StartTimer, CancelTimer, Explode (a handler bug), Refuse (a rejection).
"""

from __future__ import annotations

import datetime as dt

import msgspec

from actors.kind import ActorKind, Context, Events, Rejected
from schemas import TimerCancelled, TimerFired, TimerSet
from tests.support.events import COUNTER_EVENTS, Incremented, Noted


class Increment(msgspec.Struct, frozen=True, kw_only=True, tag="counter.increment"):
    amount: int = 1
    forward_to: str | None = None


class StartTimer(msgspec.Struct, frozen=True, kw_only=True, tag="counter.start_timer"):
    name: str
    delay: float


class CancelTimer(msgspec.Struct, frozen=True, kw_only=True, tag="counter.cancel_timer"):
    name: str


class Explode(msgspec.Struct, frozen=True, kw_only=True, tag="counter.explode"):
    pass


class Refuse(msgspec.Struct, frozen=True, kw_only=True, tag="counter.refuse"):
    pass


class Open(msgspec.Struct, frozen=True, kw_only=True, tag="counter.open"):
    """A new counter's create (ActorKind.creates): refused once the counter has counted."""

    start: int


class CounterState(msgspec.Struct, kw_only=True):
    total: int = 0
    applied: list[str] = []
    timers: dict[str, str] = {}
    fired: list[str] = []


def initial(_actor_id: str) -> CounterState:
    return CounterState()


def decide(state: CounterState, command: msgspec.Struct, ctx: Context) -> Events:
    match command:
        case Increment(amount=amount, forward_to=forward_to):
            if amount == 0:
                raise Rejected("bad_request", "amount must not be zero")
            return [Incremented(amount=amount, command_id=ctx.message_id, forward_to=forward_to)]
        case StartTimer(name=name, delay=delay):
            fire_at = ctx.now + dt.timedelta(seconds=delay)
            return [TimerSet(timer_id=ctx.derive_id(), name=name, fire_at=fire_at)]
        case CancelTimer(name=name):
            return [TimerCancelled(timer_id=t) for t, n in state.timers.items() if n == name]
        case Explode():
            raise RuntimeError("counter exploded, as asked")
        case Refuse():
            raise Rejected("conflict", "counter refuses, as asked")
        case Open(start=start):
            if state.applied:
                raise Rejected("conflict", "counter already open")
            if start <= 0:
                raise Rejected("bad_request", "start must be positive")
            return [Incremented(amount=start, command_id=ctx.message_id)]
    raise Rejected("bad_request", f"unknown command {type(command).__name__}")


def evolve(state: CounterState, event: msgspec.Struct) -> CounterState:
    match event:
        case Incremented(amount=amount, command_id=command_id):
            state.total += amount
            state.applied.append(command_id)
        case TimerSet(timer_id=timer_id, name=name):
            state.timers[timer_id] = name
        case TimerFired(timer_id=timer_id, name=name):
            state.timers.pop(timer_id, None)
            state.fired.append(name)
        case TimerCancelled(timer_id=timer_id):
            state.timers.pop(timer_id, None)
    return state


def react(state: CounterState, event: msgspec.Struct, ctx: Context) -> Events:
    """Another counter forwarded an increment to this one."""
    match event:
        case Incremented(amount=amount):
            return [Incremented(amount=amount, command_id=ctx.message_id)]
    return []


def on_timer(state: CounterState, fired: TimerFired, ctx: Context) -> Events:
    return [Noted(text=f"timer {fired.name} went off")]


def forward_target(event: Incremented) -> str | None:
    return event.forward_to


COUNTER = ActorKind(
    name="counter",
    state_type=CounterState,
    initial=initial,
    decide=decide,
    evolve=evolve,
    commands=(Increment, StartTimer, CancelTimer, Explode, Refuse, Open),
    creates=(Open,),
    events=COUNTER_EVENTS,
    reactions={"counter.incremented": forward_target},
    react=react,
    reaction_events=(Incremented,),
    on_timer=on_timer,
    snapshot_every=50,
)
