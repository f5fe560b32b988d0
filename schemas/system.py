"""System events every actor kind may record: durable timers."""

from __future__ import annotations

import datetime as dt

import msgspec


class TimerSet(msgspec.Struct, frozen=True, kw_only=True, tag="timer.set"):
    """The actor asks to be woken at ``fire_at`` with ``name``; ``timer_id`` is unique."""

    timer_id: str
    name: str
    fire_at: dt.datetime


class TimerFired(msgspec.Struct, frozen=True, kw_only=True, tag="timer.fired"):
    """The timer went off and the actor handled it (recorded by the runtime)."""

    timer_id: str
    name: str


class TimerCancelled(msgspec.Struct, frozen=True, kw_only=True, tag="timer.cancelled"):
    """The actor no longer wants the timer."""

    timer_id: str


SystemEvent = TimerSet | TimerFired | TimerCancelled
SYSTEM_EVENTS: tuple[type[msgspec.Struct], ...] = (TimerSet, TimerFired, TimerCancelled)
