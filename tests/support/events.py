"""Event and command types of the test-only ``counter`` kind used across the suite."""

from __future__ import annotations

import msgspec

from schemas import NewEvent
from schemas.envelope import ENCODER


class Incremented(msgspec.Struct, frozen=True, kw_only=True, tag="counter.incremented"):
    amount: int
    command_id: str = ""
    forward_to: str | None = None


class Renamed(msgspec.Struct, frozen=True, kw_only=True, tag="counter.renamed"):
    name: str


class Noted(msgspec.Struct, frozen=True, kw_only=True, tag="counter.noted"):
    """A larger payload, roughly the size of a real resource event."""

    text: str
    tags: dict[str, str] = {}


COUNTER_EVENTS: tuple[type[msgspec.Struct], ...] = (Incremented, Renamed, Noted)


def new_event(payload: msgspec.Struct, **meta: object) -> NewEvent:
    """Wrap a payload Struct as a NewEvent (its tag becomes the type)."""
    tag = payload.__struct_config__.tag
    assert isinstance(tag, str)
    return NewEvent(type=tag, data=ENCODER.encode(payload), **meta)  # type: ignore[arg-type]
