"""``verify``: the log's invariants, checked in one pass, each breach named.

* ``version-gap``: each stream's versions rise by one from 1, in log order.
* ``undecodable``: every event decodes with today's code, as its kind's actors decode it
  (the kind's union of events), to the Struct its envelope's type names.
* ``dangling-cause``: every causation id is explained by the log (see
  ``EventStore.unexplained_causes``): the id of an earlier event, or the cause the store
  recorded for the very append that wrote the event. Commands are not in the log, so a
  command's id is accepted exactly when the append it caused recorded it; an id that is
  neither (a typo, a lost event, an append that claims a cause it did not record) is a
  breach. A timer's id (``timer:<id>``) must also name a timer its stream set and had
  open when the event was recorded.
* ``overdue-timer``: no durable timer (``timer.set`` without ``timer.fired`` or
  ``timer.cancelled``) is due more than ``grace`` before the reference time: every
  transitional state is guarded by one, so an overdue timer is a state stuck past its
  deadline. The reference is the time of the log's last event (``now`` to judge a
  running cloud by the clock instead).
* ``overdue-state`` (with ``fold``): every stream is folded with today's ``evolve``; a
  state whose ``deadline`` field is more than ``grace`` past is stuck, and an ``evolve``
  that raises is ``unfoldable``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import msgspec

from actors.fold import fold_event
from replay.catalog import Catalog
from schemas import TimerSet
from store.protocol import EventStore, LogRow

GAP, UNDECODABLE, DANGLING = "version-gap", "undecodable", "dangling-cause"
OVERDUE_TIMER, OVERDUE_STATE, UNFOLDABLE = "overdue-timer", "overdue-state", "unfoldable"
CHECKS = (GAP, UNDECODABLE, DANGLING, OVERDUE_TIMER, OVERDUE_STATE, UNFOLDABLE)
TIMER = "timer:"
#: dangling causes counted at most (the database lists them; the first ``keep`` are shown)
DANGLING_COUNTED = 10_000
_TIMER_TYPES = frozenset({"timer.set", "timer.fired", "timer.cancelled"})
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
#: per stream kind: its events' decoder (None: no code knows the kind) and tag -> Struct
_KindCode = tuple[msgspec.json.Decoder[msgspec.Struct] | None, dict[str, type]]



class Breach(msgspec.Struct, frozen=True, kw_only=True):
    """One broken invariant: which check, where, and what was found."""

    check: str
    stream: str
    version: int | None = None
    position: int | None = None
    detail: str


class Report(msgspec.Struct, kw_only=True):
    """What ``verify`` found: counts per check (all of them) and the first breaches."""

    events: int
    streams: int
    head: int
    seconds: float
    counts: dict[str, int]
    breaches: list[Breach]

    @property
    def ok(self) -> bool:
        return not any(self.counts.values())


class _OpenTimer(msgspec.Struct, frozen=True):
    stream: str
    name: str
    fire_at: dt.datetime
    version: int


class LogChecker:
    """The checks that need the events in log order, fed a batch at a time."""

    def __init__(self, catalog: Catalog, *, keep: int = 100, fold: bool = False) -> None:
        self.catalog = catalog
        self.keep = keep
        self.fold = fold
        self.versions: dict[str, int] = {}
        self.timers: dict[str, _OpenTimer] = {}
        #: per stream, the timer its own firing just closed (its append's events follow)
        self.closed: dict[str, str] = {}
        self.states: dict[str, tuple[Any, dict[str, str]]] = {}
        self.latest: dt.datetime | None = None
        self._kinds: dict[str, _KindCode] = {}
        self.counts: Counter[str] = Counter()
        self.breaches: list[Breach] = []
        self.events = 0
        self._timer_set = msgspec.json.Decoder(TimerSet)

    def breach(self, check: str, stream: str, detail: str, *, version: int | None = None,
               position: int | None = None) -> None:
        self.counts[check] += 1
        if self.counts[check] <= self.keep:
            self.breaches.append(Breach(check=check, stream=stream, detail=detail,
                                        version=version, position=position))

    def feed(self, batch: Sequence[LogRow]) -> None:
        """Check a batch (the next rows in log order). One tight loop: this is where
        verify spends its time."""
        versions, kinds, fold = self.versions, self._kinds, self.fold
        latest = self.latest or _EPOCH
        for row in batch:
            position, stream, version, type_, data, occurred_at, cause = row
            last = versions.get(stream, 0)
            if version != last + 1:
                self._gap(row, last)
            versions[stream] = version
            if occurred_at > latest:
                latest = occurred_at
            kind = stream[:stream.find(":")]
            decoder, tags = kinds.get(kind) or self._kind(kind)
            if decoder is None:
                self.breach(UNDECODABLE, stream, f"no code for resource kind {kind!r}",
                            version=version, position=position)
                continue
            try:
                event = decoder.decode(data)
            except msgspec.DecodeError as exc:
                self.breach(UNDECODABLE, stream, f"{type_}: {exc}", version=version,
                            position=position)
                continue
            if type(event) is not tags.get(type_):
                self._mismatch(row, event)
                continue
            if type_ in _TIMER_TYPES:
                self._timer(row, event)
            if cause is not None and cause.startswith(TIMER):
                self._timer_cause(row, cause[len(TIMER):])
            if fold:
                self._fold(row, event)
        self.events += len(batch)
        self.latest = latest if batch else self.latest

    def _kind(self, kind: str) -> _KindCode:
        """The decoder and tags of a stream kind (no decoder: no code knows the kind)."""
        codec = self.catalog.codecs.get(kind)
        found: _KindCode = (codec.events, self.catalog.tags[kind]) if codec is not None \
            else (None, {})
        self._kinds[kind] = found
        return found

    def _gap(self, row: LogRow, last: int) -> None:
        position, stream, version = row[0], row[1], row[2]
        self.breach(GAP, stream, f"version {version} follows version {last}"
                    f" (missing {last + 1}..{version - 1})" if version > last + 1 else
                    f"version {version} after version {last}", version=version,
                    position=position)

    def _mismatch(self, row: LogRow, event: object) -> None:
        self.breach(UNDECODABLE, row[1], f"the data is a {type(event).__name__},"
                    f" the envelope says {row[3]}", version=row[2], position=row[0])

    def _timer(self, row: LogRow, event: msgspec.Struct | None) -> None:
        stream = row[1]
        if isinstance(event, TimerSet):
            self.timers[event.timer_id] = _OpenTimer(stream, event.name, event.fire_at,
                                                     row[2])
            return
        timer_id = getattr(event, "timer_id", None)
        if isinstance(timer_id, str) and self.timers.pop(timer_id, None) is not None \
                and row[6] == TIMER + timer_id:
            self.closed[stream] = timer_id

    def _timer_cause(self, row: LogRow, timer_id: str) -> None:
        stream = row[1]
        open_ = self.timers.get(timer_id)
        if (open_ is not None and open_.stream == stream) or \
                self.closed.get(stream) == timer_id:
            return
        self.breach(DANGLING, stream, f"caused by timer {timer_id}, which this stream"
                    " did not have open", version=row[2], position=row[0])

    def _fold(self, row: LogRow, event: msgspec.Struct) -> None:
        stream = row[1]
        kind, _, actor_id = stream.partition(":")
        codec = self.catalog.codecs[kind]
        state, timers = self.states.get(stream) or (codec.kind.initial(actor_id), {})
        try:
            self.states[stream] = (fold_event(codec, state, timers, event), timers)
        except Exception as exc:
            self.breach(UNFOLDABLE, stream, f"{row[3]}: evolve raised {exc!r}",
                        version=row[2], position=row[0])

    def finish(self, reference: dt.datetime | None, grace: dt.timedelta) -> None:
        """The end-of-log checks: timers (and, folded, states) overdue at ``reference``."""
        now = reference or self.latest
        if now is None:
            return
        for timer_id, t in sorted(self.timers.items(), key=lambda kv: kv[1].fire_at):
            if t.fire_at + grace < now:
                late = (now - t.fire_at).total_seconds()
                self.breach(OVERDUE_TIMER, t.stream, f"timer {timer_id} ({t.name}) due at"
                            f" {t.fire_at.isoformat()} is neither fired nor cancelled,"
                            f" {late:.0f} s late", version=t.version)
        for stream, (state, _) in self.states.items():
            deadline = getattr(state, "deadline", None)
            if isinstance(deadline, dt.datetime) and deadline + grace < now:
                self.breach(OVERDUE_STATE, stream, f"state past its deadline"
                            f" {deadline.isoformat()} by"
                            f" {(now - deadline).total_seconds():.0f} s")


async def verify(store: EventStore, catalog: Catalog, *, batch: int = 5000,
                 grace: dt.timedelta = dt.timedelta(minutes=5), now: dt.datetime | None = None,
                 fold: bool = False, keep: int = 100) -> Report:
    """Check the log up to its head when called; the causation query runs in the database
    while this process scans and decodes."""
    started = time.perf_counter()
    head = await store.head()
    checker = LogChecker(catalog, keep=keep, fold=fold)
    async with asyncio.TaskGroup() as tg:
        unexplained = tg.create_task(store.unexplained_causes(DANGLING_COUNTED))
        # the next batch is read while this one is checked
        reading = tg.create_task(store.scan_log(0, head, batch)) if head else None
        while reading is not None:
            rows = await reading
            reading = None
            if not rows:
                break
            after = rows[-1][0]
            if after < head:
                reading = tg.create_task(store.scan_log(after, head, batch))
            checker.feed(rows)
    for e in unexplained.result():
        if e.position <= head:
            checker.breach(DANGLING, e.stream, f"causation id {e.causation_id!r} is neither an"
                           " earlier event nor the recorded cause of this append",
                           version=e.version, position=e.position)
    checker.finish(now, grace)
    checker.breaches.sort(key=lambda b: (CHECKS.index(b.check), b.position or 0))
    return Report(events=checker.events, streams=len(checker.versions), head=head,
                  seconds=time.perf_counter() - started,
                  counts={c: checker.counts[c] for c in CHECKS}, breaches=checker.breaches)
