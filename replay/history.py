"""One resource's past: its events as a table, its state at a version or a time, and what
changed between two versions, field by field. States are folded with ``actors.fold`` from
the first event, exactly as an actor without a snapshot loads."""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec

from actors.event_feed import REDACTED, SECRET_FIELDS, redacted
from replay.catalog import Catalog
from replay.changes import ABSENT, Change, changes
from replay.errors import BadArgument, NotFound
from schemas import EventEnvelope, stream_name
from store.protocol import EventStore


class HistoryRow(msgspec.Struct, frozen=True, kw_only=True):
    """One event of a stream, as the history table shows it."""

    version: int
    position: int
    occurred_at: dt.datetime
    type: str
    correlation_id: str | None
    causation_id: str | None
    event_id: str
    data: Any


class StateAt(msgspec.Struct, frozen=True, kw_only=True):
    """A resource's folded state after ``version`` (of ``latest``), and its open timers."""

    stream: str
    version: int
    latest: int
    occurred_at: dt.datetime | None
    state: Any
    timers: dict[str, str]


class Diff(msgspec.Struct, frozen=True, kw_only=True):
    """What changed from ``from_version`` to ``to_version``, and the events in between."""

    stream: str
    from_version: int
    to_version: int
    changes: list[Change]
    events: list[HistoryRow]


async def read_history(store: EventStore, catalog: Catalog, kind: str,
                       actor_id: str) -> list[EventEnvelope]:
    """Every event of ``kind:actor_id`` (NotFound when it has none)."""
    catalog.codec(kind)  # an unknown kind is an error, not an empty history
    events = await store.read_stream(stream_name(kind, actor_id))
    if not events:
        raise NotFound(f"no events for {stream_name(kind, actor_id)}")
    return events


def history_rows(events: list[EventEnvelope], *, reveal: bool = False) -> list[HistoryRow]:
    return [row(e, reveal=reveal) for e in events]


def row(e: EventEnvelope, *, reveal: bool = False) -> HistoryRow:
    """One event as the tool shows it; its secrets redacted unless ``reveal``."""
    data = msgspec.json.decode(e.data)
    return HistoryRow(version=e.version, position=e.position, occurred_at=e.occurred_at,
                      type=e.type, correlation_id=e.correlation_id,
                      causation_id=e.causation_id, event_id=str(e.event_id),
                      data=data if reveal else redacted(data))


def version_at(events: list[EventEnvelope], at: dt.datetime) -> int:
    """The last version recorded at or before ``at`` (0: none yet)."""
    if at.tzinfo is None:
        at = at.replace(tzinfo=dt.UTC)
    return max((e.version for e in events if e.occurred_at <= at), default=0)


def state_at(catalog: Catalog, kind: str, actor_id: str, events: list[EventEnvelope],
             version: int | None = None, *, reveal: bool = False) -> StateAt:
    """The fold of ``events`` up to ``version`` (default: all of them); its secrets
    redacted unless ``reveal``."""
    latest = events[-1].version if events else 0
    upto = latest if version is None else version
    if not 0 <= upto <= latest:
        raise BadArgument(f"version {upto} is not between 0 and {latest}")
    fold = catalog.folded(kind, actor_id)
    last: EventEnvelope | None = None
    for e in events:
        if e.version > upto:
            break
        fold.apply(e)
        last = e
    state = msgspec.to_builtins(fold.state)
    return StateAt(stream=stream_name(kind, actor_id), version=upto, latest=latest,
                   occurred_at=last.occurred_at if last else None,
                   state=state if reveal else redacted(state), timers=dict(fold.timers))


def diff(catalog: Catalog, kind: str, actor_id: str, events: list[EventEnvelope],
         v1: int, v2: int, *, reveal: bool = False) -> Diff:
    """Field-by-field changes of the state from version ``v1`` to ``v2``. Unless
    ``reveal``, a secret that changed shows as changed, its values redacted."""
    before = state_at(catalog, kind, actor_id, events, v1, reveal=True)
    after = state_at(catalog, kind, actor_id, events, v2, reveal=True)
    low, high = sorted((v1, v2))
    between = [row(e, reveal=reveal) for e in events if low < e.version <= high]
    found = changes(before.state, after.state)
    if not reveal:
        found = [_hidden(c) for c in found]
    return Diff(stream=before.stream, from_version=v1, to_version=v2, changes=found,
                events=between)


def _hidden(change: Change) -> Change:
    """``change`` with its secrets redacted (a secret leaf's values wholly)."""
    leaf = change.path.rsplit(".", 1)[-1].split("[", 1)[0]

    def hide(value: Any) -> Any:
        if leaf in SECRET_FIELDS and value not in (ABSENT, None):
            return REDACTED
        return redacted(value)

    return Change(path=change.path, before=hide(change.before), after=hide(change.after))


def parse_time(text: str) -> dt.datetime:
    """An ISO 8601 time (``Z`` allowed; UTC when no zone is given)."""
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise BadArgument(f"not an ISO 8601 time: {text!r}") from exc
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)
