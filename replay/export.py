"""``export`` and ``tail``: the log, or a part of it, as JSON, and the live log.

An exported event has the envelope's fields and its data as recorded (never re-encoded),
the shape the event feed gives, so an export can be read back and compared byte for byte;
but for secrets (a webhook's signing secret, a password hash), which are redacted as the
feed redacts them unless the operator asks for them (``--reveal-secrets``).
Filters: one stream, one request (correlation id), an AMQP-style type pattern on the
routing key ``<kind>.<event_type>`` (``instance.*``, ``#.timer.#``), a position range.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import IO

import msgspec

from actors.event_feed import redact
from bus.routing import topic_matches
from schemas import EventEnvelope
from store.protocol import EventStore


class ExportedEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One event as exported (and as the feed shows it)."""

    event_id: uuid.UUID
    stream: str
    version: int
    position: int
    type: str
    occurred_at: dt.datetime
    correlation_id: str | None
    causation_id: str | None
    project_id: str | None
    user_id: str | None
    data: msgspec.Raw


def exported(e: EventEnvelope, *, reveal: bool = False) -> ExportedEvent:
    """``e`` as exported: its data as recorded, but for its secrets unless ``reveal``."""
    return ExportedEvent(event_id=e.event_id, stream=e.stream, version=e.version,
                         position=e.position, type=e.type, occurred_at=e.occurred_at,
                         correlation_id=e.correlation_id, causation_id=e.causation_id,
                         project_id=e.project_id, user_id=e.user_id,
                         data=e.data if reveal else msgspec.Raw(redact(bytes(e.data))))


@dataclass(frozen=True)
class Selection:
    """Which events: all by default; the filters narrow it down."""

    stream: str | None = None
    correlation_id: str | None = None
    pattern: str | None = None
    after: int = 0
    until: int | None = None

    def keeps(self, e: EventEnvelope) -> bool:
        return (e.position > self.after
                and (self.until is None or e.position <= self.until)
                and (self.stream is None or e.stream == self.stream)
                and (self.correlation_id is None or e.correlation_id == self.correlation_id)
                and (self.pattern is None or topic_matches(self.pattern, e.routing_key)))


async def select(store: EventStore, sel: Selection,
                 batch: int = 5000) -> AsyncIterator[list[EventEnvelope]]:
    """The selected events in position order, a batch at a time, up to today's head (or
    ``until``); a stream or a request is read through its index, not by a scan."""
    if sel.stream is not None:
        found = await store.read_stream(sel.stream)
    elif sel.correlation_id is not None:
        found = await store.read_correlated([sel.correlation_id])
    else:
        async for events in _scan(store, sel, batch):
            yield events
        return
    kept = [e for e in found if sel.keeps(e)]
    if kept:
        yield kept


async def _scan(store: EventStore, sel: Selection,
                batch: int) -> AsyncIterator[list[EventEnvelope]]:
    head = sel.until if sel.until is not None else await store.head()
    after = sel.after
    while after < head:
        events = await store.read_all(after, batch)
        if not events:
            return
        after = events[-1].position
        kept = [e for e in events if sel.keeps(e)]
        if kept:
            yield kept


_ENCODER = msgspec.json.Encoder()


async def export(store: EventStore, sel: Selection, out: IO[bytes], *,
                 lines: bool = False, reveal: bool = False) -> int:
    """Write the selection to ``out`` as one JSON array, or one JSON object a line; the
    number of events written. Secrets are redacted unless ``reveal``."""
    count = 0
    if not lines:
        out.write(b"[")
    async for events in select(store, sel):
        for e in events:
            if not lines and count:
                out.write(b",")
            doc = _ENCODER.encode(exported(e, reveal=reveal))
            out.write(b"\n" + doc if not lines else doc + b"\n")
            count += 1
    if not lines:
        out.write(b"\n]\n" if count else b"]\n")
    return count


async def tail(store: EventStore, sel: Selection, show: Callable[[EventEnvelope], None], *,
               last: int = 20, follow: bool = False) -> None:
    """Show the ``last`` selected events up to the head, then (``follow``) every new one as
    it commits, until cancelled."""
    head = await store.head()
    recent: deque[EventEnvelope] = deque(maxlen=last)
    async for events in select(store, dataclasses.replace(sel, until=head)):
        recent.extend(events)
    for e in recent:
        show(e)
    if not follow:
        return
    async for events in store.subscribe(max(head, sel.after)):
        for e in events:
            if sel.keeps(e):
                show(e)
