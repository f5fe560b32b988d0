"""The EventStore seam: what every event-log backend offers."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Protocol

import msgspec

from schemas import EventEnvelope, NewEvent, stream_kind
from store.tables import Table

#: one event as whole-log checks read it: (position, stream, version, type, data,
#: occurred_at, causation_id); a backend may hand out its own row objects that index and
#: unpack as this tuple does
LogRow = tuple[int, str, int, str, bytes, dt.datetime, str | None]

#: expected_version for "this stream must not exist yet".
NO_STREAM = 0
#: expected_version for "append whatever the stream's version is" (no concurrency check).
ANY_VERSION = -1


class AppendResult(msgspec.Struct, frozen=True, kw_only=True):
    """Where an append landed: the stream's new version and the last event's position.

    ``duplicate`` is true when the append was a redelivered reaction to a cause already
    recorded on the stream: nothing was written and the first result is returned.
    """

    stream: str
    version: int
    position: int
    duplicate: bool = False


class Snapshot(msgspec.Struct, frozen=True, kw_only=True):
    """A saved fold of a stream up to ``version``; ``data`` is the state's encoding."""

    stream: str
    version: int
    type: str
    data: bytes


class EventQuery(msgspec.Struct, frozen=True, kw_only=True):
    """Which events a filtered read of the log returns: every field given must hold.

    ``kinds`` / ``exclude_kinds`` name actor kinds (the part of the stream before ``:``);
    ``types`` event types, exactly; ``project_id`` keeps only events recorded for that
    project (none without one).
    """

    stream: str | None = None
    kinds: tuple[str, ...] = ()
    exclude_kinds: tuple[str, ...] = ()
    types: tuple[str, ...] = ()
    correlation_id: str | None = None
    project_id: str | None = None

    def matches(self, event: EventEnvelope) -> bool:
        """Whether ``event`` passes (what the SQL of a filtered read does, in Python)."""
        kind = stream_kind(event.stream)
        return ((self.stream is None or event.stream == self.stream)
                and (not self.kinds or kind in self.kinds)
                and kind not in self.exclude_kinds
                and (not self.types or event.type in self.types)
                and (self.correlation_id is None or event.correlation_id == self.correlation_id)
                and (self.project_id is None or event.project_id == self.project_id))


class FilteredPage(msgspec.Struct, frozen=True, kw_only=True):
    """A page of a filtered read: the events, and where the next read resumes (``after``)."""

    events: list[EventEnvelope]
    scanned: int


class EventStore(Protocol):
    """Append-only, per-stream versioned, globally ordered event log.

    Versions of a stream start at 1. Positions are strictly increasing in the order
    ``read_all`` returns events; they need not be dense.
    """

    async def append(
        self,
        stream: str,
        events: Sequence[NewEvent],
        expected_version: int,
        *,
        cause: str | None = None,
        causes: Sequence[tuple[str, int]] = (),
    ) -> AppendResult:
        """Append ``events`` if the stream is at ``expected_version``.

        Raises ConcurrencyError (with the current version) on a stale expectation and
        InvalidEvent, appending nothing, if any event does not decode. With ``cause``, a
        second append for the same cause on the same stream is a no-op returning the
        first append's result.

        ``causes`` (instead of ``cause``) is for several commands' events appended in
        turn: each command's cause with how many of ``events`` are its or earlier ones'
        (increasing, the last ``len(events)``). Each is recorded as ``cause`` is, at the
        version and position of its own last event. If any of them is recorded on the
        stream already, nothing is written and the result is a duplicate at the stream's
        current version (position 0): handle the commands one at a time then.
        """
        ...

    async def read_stream(
        self, stream: str, from_version: int = 1, limit: int | None = None
    ) -> list[EventEnvelope]:
        """Events of one stream with version >= ``from_version``, in version order."""
        ...

    async def load(self, stream: str) -> tuple[Snapshot | None, list[EventEnvelope]]:
        """What activating an actor needs: the stream's latest snapshot (if any) and every
        event after it, in version order, in as few round trips as the backend allows."""
        ...

    async def stream_version(self, stream: str) -> int:
        """The current version of a stream (0 if it has no events)."""
        ...

    async def read_all(self, after: int = 0, limit: int = 1000) -> list[EventEnvelope]:
        """Committed events with position > ``after`` in global order, never skipping one
        that commits later at a lower position."""
        ...

    async def scan_log(self, after: int, until: int, limit: int) -> Sequence[LogRow]:
        """Up to ``limit`` events with ``after`` < position <= ``until`` in position order,
        as bare rows of the columns a whole-log check needs (`LogRow`). ``until`` must be
        at most ``head()`` as read before: below it nothing can still commit, so the scan
        needs none of ``read_all``'s care."""
        ...

    async def read_filtered(self, query: EventQuery, after: int = 0, limit: int = 100,
                            scan: int | None = 10_000) -> FilteredPage:
        """Up to ``limit`` events matching ``query`` with position > ``after``, in global
        order and as gap-free as ``read_all``, looking at no more than the next ``scan``
        events of the log (None: no bound). ``scanned`` is where to resume: the last event
        returned when ``limit`` was reached, else the last position looked at (``after``
        when nothing new is visible)."""
        ...

    def subscribe(self, after: int = 0, batch: int = 1000) -> AsyncIterator[list[EventEnvelope]]:
        """Catch up from ``after`` then follow live; yields non-empty batches in order."""
        ...

    async def head(self) -> int:
        """The position of the last event a reader can currently see (0 if none)."""
        ...

    async def read_correlated(self, correlation_ids: Sequence[str]) -> list[EventEnvelope]:
        """Every committed event whose correlation id is one of ``correlation_ids``, in
        position order (what one request caused, read through an index)."""
        ...

    async def unexplained_causes(self, limit: int = 100) -> list[EventEnvelope]:
        """Up to ``limit`` events, in position order, whose causation id the log does not
        explain. A causation id is explained when it is the id of an event at a lower
        position (a reaction's cause), or when the store recorded it as the ``cause`` of
        the append that wrote the event, at or past the event's version (a command's or
        a timer's id: commands are not in the log, but the append they caused records
        them). Events without a causation id are explained. A whole-log query."""
        ...

    async def save_snapshot(self, snapshot: Snapshot) -> None:
        """Store ``snapshot`` as the stream's latest (an older version never replaces a newer)."""
        ...

    async def load_snapshot(self, stream: str) -> Snapshot | None:
        """The stream's latest snapshot, if any."""
        ...

    async def close(self) -> None:
        ...


class SqlTx(Protocol):
    """One open transaction on the log's database, handed to a projection.

    SQL uses ``$1, $2 …`` placeholders on every backend (SQLite's are rewritten).
    ``since`` is the log position the projection's committed rows stand at (its
    checkpoint: the last event folded into them), when the transaction serves one
    projection; None when that is not known. A projection may carry rows from one batch
    to the next in memory (``store.rowset.Carried``) only while they stand where
    ``since`` says.
    """

    @property
    def since(self) -> int | None:
        ...

    async def execute(self, sql: str, *args: object) -> None:
        ...

    async def fetch(self, sql: str, *args: object) -> list[tuple[object, ...]]:
        ...

    async def put_rows(self, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
        """Insert or replace whole rows of ``table`` (column -> value, every column) by
        key; no two of ``rows`` may share a key. Queued like ``execute``."""
        ...

    async def delete_rows(self, table: Table, keys: Sequence[Mapping[str, Any]]) -> None:
        """Delete the rows of ``table`` with these keys (key column -> value each)."""
        ...

    async def committed_rows(self, table: Table, column: str,
                             values: Sequence[object]) -> list[tuple[object, ...]]:
        """The rows of ``table`` whose ``column`` is one of ``values`` as earlier
        transactions committed them (never what this one has queued), read without
        opening this transaction: how a projection loads the rows a batch will change."""
        ...


class ProjectionStore(Protocol):
    """What a store offers projections: query tables, checkpoint in the same transaction."""

    async def projection_checkpoint(self, name: str) -> int:
        """The position a projection has folded up to (0 if never run)."""
        ...

    def projection_tx(self, name: str, expected: int, new: int) -> ProjectionTxContext:
        """Open a transaction that moves ``name``'s checkpoint from ``expected`` to ``new``
        on commit. Raises ConcurrencyError if the checkpoint is not ``expected`` (another
        runner got there first); nothing is written then."""
        ...

    def projections_tx(self, expected: Mapping[str, int], new: int, *,
                       defer_empty: bool = False, bulk: bool = False) -> ProjectionTxContext:
        """As ``projection_tx`` for several projections at once: one transaction moves every
        checkpoint of ``expected`` (name -> where it must be) to ``new``, or, when any of
        them has moved on, none (ConcurrencyError) and nothing is written.

        With ``defer_empty``, a block that wrote nothing commits nothing either: the
        checkpoints stay where they were and the context's ``deferred`` is true (the
        caller moves them later, with its next write).

        Only projections use it, whose rows are the log's fold and nothing else: so its
        commit may return before it is durable (a crash may lose it, together with the
        checkpoint move, and the projections fold those events again).

        ``bulk`` marks a rebuild's batches: a store that keeps planner statistics of the
        tables written does not count them (the rebuild analyses its tables at the end)."""
        ...

    async def reset_projection(self, name: str, ddl_drop: Sequence[str],
                               ddl: Sequence[str] = ()) -> None:
        """Drop the projection's tables (``ddl_drop``) and its checkpoint and create the
        tables afresh (``ddl``), in one transaction: a process folding the projection
        meanwhile never finds its tables missing (it finds its checkpoint moved back)."""
        ...

    async def run_ddl(self, ddl: Sequence[str]) -> None:
        """Run idempotent DDL (``CREATE TABLE IF NOT EXISTS …``)."""
        ...

    async def wait_for_projection(self, name: str, position: int, timeout: float) -> bool:
        """Read-your-writes from any process: True once projection ``name`` has folded up
        to ``position`` (woken by its commits, no polling), False after ``timeout`` s."""
        ...

    async def query(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        """A read-only query on the projections' tables (``$1`` placeholders): how the
        gateway and services read what projections folded."""
        ...


class ProjectionTxContext(Protocol):
    #: true once the block ended without a write under ``defer_empty`` (nothing committed)
    deferred: bool

    async def __aenter__(self) -> SqlTx:
        ...

    async def __aexit__(self, *exc: object) -> bool | None:
        ...


def check_causes(cause: str | None, causes: Sequence[tuple[str, int]], events: int) -> None:
    """ValueError unless ``causes`` (see ``EventStore.append``) fits ``events`` events."""
    if not causes:
        return
    if cause is not None:
        raise ValueError("an append takes cause or causes, not both")
    ends = [upto for _, upto in causes]
    if ends != sorted(set(ends)) or ends[0] < 1 or ends[-1] != events:
        raise ValueError(f"causes must end at increasing event counts up to {events}: {ends}")
    if len({c for c, _ in causes}) != len(causes):
        raise ValueError("a cause appears twice in one append")
