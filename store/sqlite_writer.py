"""Group commit for the SQLite log: appends queued for the one writer thread, which commits
them a group at a time, back to back, for as long as any are queued.

An append is queued (a thread-safe deque) and a drain job is put on the writer thread
unless one is already there. The drain commits everything queued, in groups of up to
``MAX_GROUP`` appends, without going back to the event loop between two groups; outcomes
go back to the loop once per group. A drain that finds a projection transaction open on
the writer connection leaves the appends queued; the transaction's end drains them.

A group's fast path knows the stream versions this store wrote (it is the file's only
writer) and the last position, checks causes and expected versions in memory, and writes
all the group's events and reactions with one ``executemany`` each. If SQLite refuses the
batch (a duplicate event id), the group is redone one append at a time, each in a
savepoint, so that only the culprit fails.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import msgspec
import structlog

from schemas import EventEnvelope, NewEvent
from store.errors import ConcurrencyError, InvalidEvent, StoreError, StoreUnavailable
from store.metrics import APPENDED_EVENTS, BATCH_EVENTS
from store.protocol import ANY_VERSION, AppendResult

log = structlog.get_logger(__name__)

#: at most this many appends share one transaction
MAX_GROUP = 256
#: stream versions remembered at most (then forgotten, and read again when needed)
VERSIONS_KEPT = 200_000

_INSERT = (
    "INSERT INTO events (event_id, stream, version, type, data, occurred_at,"
    " correlation_id, causation_id, project_id, user_id)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_AT = (
    "INSERT INTO events (position, event_id, stream, version, type, data, occurred_at,"
    " correlation_id, causation_id, project_id, user_id)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_REACTION = "INSERT INTO reactions (stream, cause, version, position) VALUES (?, ?, ?, ?)"
_SEEN = "SELECT version, position FROM reactions WHERE stream = ? AND cause = ?"
_VERSION = "SELECT COALESCE(MAX(version), 0), COALESCE(MAX(position), 0) FROM events" \
    " WHERE stream = ?"

Outcome = AppendResult | StoreError


@dataclass(eq=False)
class Pending:
    """One append waiting for a group commit."""

    stream: str
    events: list[NewEvent]
    expected: int
    cause: str | None
    outcome: asyncio.Future[AppendResult]
    #: set when the caller gave up: a drain that has not taken it yet drops it
    abandoned: bool = field(default=False)
    #: several commands' causes, each with how many of the events are its or earlier ones'
    causes: Sequence[tuple[str, int]] = ()


def utc(when: dt.datetime) -> dt.datetime:
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.astimezone(dt.UTC)


def _row(stream: str, version: int, e: NewEvent) -> tuple[object, ...]:
    return (
        str(e.event_id), stream, version, e.type, bytes(e.data), utc(e.occurred_at).isoformat(),
        e.correlation_id, e.causation_id, e.project_id, e.user_id,
    )


def _envelopes(p: Pending, first_version: int, positions: Sequence[int]) -> list[EventEnvelope]:
    """The envelopes of an append just committed, exactly as a read of the log returns them."""
    return [
        EventEnvelope(
            position=position, event_id=e.event_id, stream=p.stream, version=first_version + i,
            type=e.type, data=msgspec.Raw(bytes(e.data)),
            occurred_at=utc(e.occurred_at), correlation_id=e.correlation_id,
            causation_id=e.causation_id, project_id=e.project_id, user_id=e.user_id,
        )
        for i, (position, e) in enumerate(zip(positions, p.events, strict=True))
    ]


class GroupCommit:
    """The appends queue of one SQLite store and the drain that commits it.

    ``versions`` and ``last_position`` belong to the writer thread: only drains read and
    write them. ``session_open`` is set and cleared by jobs on the writer thread, around a
    projection transaction that spans several jobs.
    """

    def __init__(self, conn: sqlite3.Connection, submit: Callable[[Callable[[], None]], object],
                 loop: asyncio.AbstractEventLoop,
                 on_commit: Callable[[list[EventEnvelope]], None], last_position: int) -> None:
        self._conn = conn
        self._submit = submit
        self._loop = loop
        self._on_commit = on_commit
        self._queue: collections.deque[Pending] = collections.deque()
        self._lock = threading.Lock()
        self._scheduled = False
        self.session_open = False
        self.versions: dict[str, int] = {}
        self.last_position = last_position

    def put(self, pending: Pending) -> None:
        """Queue an append; make sure a drain will take it."""
        with self._lock:
            self._queue.append(pending)
            if self._scheduled:
                return
            self._scheduled = True
        self._submit(self.drain)

    def kick(self) -> None:
        """Drain whatever is queued (after a projection transaction ended)."""
        with self._lock:
            if self._scheduled or not self._queue:
                return
            self._scheduled = True
        self._submit(self.drain)

    def fail_queued(self, error: StoreError) -> None:
        """The store closed: every append still queued fails."""
        with self._lock:
            left, self._queue = list(self._queue), collections.deque()
        self._loop.call_soon_threadsafe(_settle, left, [error] * len(left))

    # -- on the writer thread ---------------------------------------------------------------

    def drain(self) -> None:
        try:
            while True:
                with self._lock:
                    if self.session_open or not self._queue:
                        self._scheduled = False
                        return
                    group: list[Pending] = []
                    while self._queue and len(group) < MAX_GROUP:
                        pending = self._queue.popleft()
                        if not pending.abandoned:
                            group.append(pending)
                if group:
                    self._commit(group)
        except BaseException:
            with self._lock:
                self._scheduled = False
            raise

    def _commit(self, group: list[Pending]) -> None:
        try:
            outcomes, written = self._attempt(group)
        except Exception as exc:  # a bug: fail this group, keep the writer alive
            log.exception("sqlite_append_group_failed", appends=len(group))
            outcomes, written = [StoreUnavailable(f"append failed: {exc!r}")] * len(group), []
        BATCH_EVENTS.observe(len(written))
        APPENDED_EVENTS.inc(len(written))
        if written:
            # before the appenders' outcomes, so a caller that has its result finds its
            # events in the tail
            self._loop.call_soon_threadsafe(self._on_commit, written)
        self._loop.call_soon_threadsafe(_settle, group, outcomes)

    def _attempt(self, group: list[Pending]) -> tuple[list[Outcome], list[EventEnvelope]]:
        try:
            return self._fast(group)
        except sqlite3.IntegrityError:
            self.versions.clear()  # what the failed batch read may be stale: read it again
            try:
                return self._one_by_one(group)
            except sqlite3.Error as exc:
                return [StoreUnavailable(str(exc))] * len(group), []
        except sqlite3.Error as exc:
            self.versions.clear()
            return [StoreUnavailable(str(exc))] * len(group), []

    def _fast(self, group: list[Pending]) -> tuple[list[Outcome], list[EventEnvelope]]:
        """The whole group in one transaction, with one INSERT statement per table."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            current: dict[str, int] = {}
            latest: dict[str, int] = {}  # the last position of streams written here
            seen: dict[tuple[str, str], AppendResult] = {}
            outcomes: list[Outcome] = []
            events: list[tuple[object, ...]] = []
            reactions: list[tuple[object, ...]] = []
            written: list[EventEnvelope] = []
            position = self.last_position
            for p in group:
                version = current.get(p.stream)
                if version is None:
                    version = current[p.stream] = self._version(p.stream)
                duplicate = self._duplicate(p, seen)
                if duplicate is not None:
                    outcomes.append(duplicate)
                    continue
                if p.expected != ANY_VERSION and p.expected != version:
                    outcomes.append(ConcurrencyError(p.stream, p.expected, version))
                    continue
                positions = range(position + 1, position + 1 + len(p.events))
                for offset, (at, event) in enumerate(zip(positions, p.events, strict=True), 1):
                    events.append((at, *_row(p.stream, version + offset, event)))
                written += _envelopes(p, version + 1, positions)
                if p.events:
                    latest[p.stream] = positions[-1]
                last = latest.get(p.stream) or self._last_of(p.stream)
                position += len(p.events)
                current[p.stream] = version + len(p.events)
                result = AppendResult(stream=p.stream, version=current[p.stream], position=last)
                if p.cause is not None:
                    reactions.append((p.stream, p.cause, result.version, last))
                    seen[(p.stream, p.cause)] = result
                for cause, upto in p.causes:
                    each = AppendResult(stream=p.stream, version=version + upto,
                                        position=positions[upto - 1])
                    reactions.append((p.stream, cause, each.version, each.position))
                    seen[(p.stream, cause)] = each
                outcomes.append(result)
            conn.executemany(_INSERT_AT, events)
            conn.executemany(_INSERT_REACTION, reactions)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        if len(self.versions) > VERSIONS_KEPT:
            self.versions.clear()
        self.versions.update(current)
        self.last_position = position
        return outcomes, written

    def _version(self, stream: str) -> int:
        known = self.versions.get(stream)
        if known is not None:
            return known
        return int(self._conn.execute(_VERSION, (stream,)).fetchone()[0])

    def _last_of(self, stream: str) -> int:
        return int(self._conn.execute(_VERSION, (stream,)).fetchone()[1])

    def _duplicate(self, p: Pending, seen: dict[tuple[str, str], AppendResult]
                   ) -> AppendResult | None:
        """The first result of an append for the same cause, if there was one (with
        several causes: a duplicate at the stream's version if any was recorded)."""
        if p.causes:
            if any((p.stream, c) in seen or self._conn.execute(_SEEN, (p.stream, c)).fetchone()
                   for c, _ in p.causes):
                version = self.versions.get(p.stream)
                if version is None:
                    version = self._version(p.stream)
                return AppendResult(stream=p.stream, version=version, position=0,
                                    duplicate=True)
            return None
        if p.cause is None:
            return None
        earlier = seen.get((p.stream, p.cause))
        if earlier is None:
            row = self._conn.execute(_SEEN, (p.stream, p.cause)).fetchone()
            if row is None:
                return None
            earlier = AppendResult(stream=p.stream, version=row[0], position=row[1])
        return msgspec.structs.replace(earlier, duplicate=True)

    def _one_by_one(self, group: list[Pending]) -> tuple[list[Outcome], list[EventEnvelope]]:
        """The group in one transaction, each append in a savepoint of its own, so that a
        refused one is rolled back alone."""
        conn = self._conn
        outcomes: list[Outcome] = []
        written: list[EventEnvelope] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            for p in group:
                conn.execute("SAVEPOINT one_append")
                try:
                    result, positions = _append_one(conn, p)
                    outcomes.append(result)
                    if not result.duplicate:
                        written += _envelopes(p, result.version - len(p.events) + 1, positions)
                except ConcurrencyError as exc:
                    outcomes.append(exc)
                    conn.execute("ROLLBACK TO one_append")
                except sqlite3.IntegrityError as exc:
                    outcomes.append(InvalidEvent(p.events[0].type, f"duplicate event_id: {exc}"))
                    conn.execute("ROLLBACK TO one_append")
                conn.execute("RELEASE one_append")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        row = conn.execute("SELECT COALESCE(MAX(position), 0) FROM events").fetchone()
        self.last_position = max(self.last_position, int(row[0]))
        return outcomes, written


def _append_one(conn: sqlite3.Connection, p: Pending) -> tuple[AppendResult, list[int]]:
    """One append inside a savepoint: its result and its events' positions."""
    if p.cause is not None:
        seen = conn.execute(_SEEN, (p.stream, p.cause)).fetchone()
        if seen is not None:
            return AppendResult(stream=p.stream, version=seen[0], position=seen[1],
                                duplicate=True), []
    current, last = conn.execute(_VERSION, (p.stream,)).fetchone()
    if any(conn.execute(_SEEN, (p.stream, c)).fetchone() for c, _ in p.causes):
        return AppendResult(stream=p.stream, version=current, position=0, duplicate=True), []
    if p.expected != ANY_VERSION and p.expected != current:
        raise ConcurrencyError(p.stream, p.expected, current)
    positions = [conn.execute(_INSERT, _row(p.stream, current + offset, event)).lastrowid or 0
                 for offset, event in enumerate(p.events, start=1)]
    position = positions[-1] if positions else last
    version = current + len(p.events)
    if p.cause is not None:
        conn.execute(_INSERT_REACTION, (p.stream, p.cause, version, position))
    for cause, upto in p.causes:
        conn.execute(_INSERT_REACTION, (p.stream, cause, current + upto, positions[upto - 1]))
    return AppendResult(stream=p.stream, version=version, position=position), positions


def _settle(group: Sequence[Pending], outcomes: Sequence[Outcome]) -> None:
    """On the loop: hand each waiting append its outcome."""
    for p, outcome in zip(group, outcomes, strict=True):
        if p.outcome.done():
            continue
        if isinstance(outcome, BaseException):
            p.outcome.set_exception(outcome)
        else:
            p.outcome.set_result(outcome)
