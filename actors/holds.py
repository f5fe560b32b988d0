"""Holds: what an owning actor (a subnet's pool, a network's MACs, a segment range) has
handed to a holder actor (a port, a subnet, a network), and how a half-done hand-out is
taken back.

An owner hands something out in one decision (``hold.taken``, *pending*); the holder then
records it in its own stream, and the owner confirms the hold when it sees that event
(a reaction) or the caller says so. If the caller dies in between, the hold would leak;
so a pending hold has a lease. One durable ``holds`` timer per owner fires at the
oldest pending hold's lease end; each hold past its lease is then *asked about*: the
owner Tells the holder a read-only ``hold.check`` query, and the holder answers ``held``
(the hold is confirmed) or ``free`` (released). The lease is longer than any command's
deadline, so no late command can make a holder take something after it answered
``free``: the runtime refuses a command past its deadline.

Releases come from the holder's own events (reactions: a port's address released, a
port or subnet deleted), so they happen at least once, from the log, even when the
process that deleted the holder died before it told the owner itself.

The events are shared by every owner kind (like the timer events); each owner folds
them with `fold` into its `Ledger`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import msgspec

from actors.kind import Context, Events, Tell
from schemas import Reply, TimerCancelled, TimerFired, TimerSet

SWEEP_TIMER = "holds"
HELD, FREE = "held", "free"
_ASK = "/hold/"


class Hold(msgspec.Struct, kw_only=True):
    """One thing handed out: to whom, since when, whether the holder has it for sure."""

    holder_kind: str
    holder: str
    since: dt.datetime
    confirmed: bool = False
    value: str = ""  # what the owner needs to remember with it (a subnet's CIDR)


class Ledger(msgspec.Struct, kw_only=True, dict=True):
    """Every hold of one owner, by key, and its sweep timer.

    Beside the holds (the state, as snapshotted) it keeps two indexes in memory, made
    from them when first needed and kept up by `fold`: the keys of each holder, and the
    keys still pending (so that a subnet or network with thousands of holds finds a
    port's in one look-up, not a pass over all of them)."""

    holds: dict[str, Hold] = {}
    timer: str | None = None
    timer_at: dt.datetime | None = None

    def of(self, holder: str) -> list[str]:
        """The keys ``holder`` holds, in the order it took them."""
        return list(self._by_holder().get(holder, ()))

    def pending(self) -> list[str]:
        """The keys not confirmed yet, in the order they were taken."""
        return list(self._pending())

    def _by_holder(self) -> dict[str, dict[str, None]]:
        index: dict[str, dict[str, None]] | None = self.__dict__.get("_idx_by_holder")
        if index is None:
            index = {}
            for key, hold in self.holds.items():
                index.setdefault(hold.holder, {})[key] = None
            self.__dict__["_idx_by_holder"] = index
        return index

    def _pending(self) -> dict[str, None]:
        index: dict[str, None] | None = self.__dict__.get("_idx_pending")
        if index is None:
            index = {k: None for k, h in self.holds.items() if not h.confirmed}
            self.__dict__["_idx_pending"] = index
        return index

    def _put(self, key: str, hold: Hold) -> None:
        self._unindex(key)
        self.holds[key] = hold  # a key taken again keeps its place, as before the index
        self._by_holder().setdefault(hold.holder, {})[key] = None
        if not hold.confirmed:
            self._pending()[key] = None

    def _drop(self, key: str) -> None:
        self._unindex(key)
        self.holds.pop(key, None)

    def _unindex(self, key: str) -> None:
        old = self.holds.get(key)
        if old is None:
            return
        keys = self._by_holder().get(old.holder)
        if keys is not None:
            keys.pop(key, None)
            if not keys:
                del self._by_holder()[old.holder]
        self._pending().pop(key, None)

    def _confirm(self, key: str) -> None:
        self.holds[key].confirmed = True
        self._pending().pop(key, None)


# -- events (shared tags) ------------------------------------------------------------------


class HoldTaken(msgspec.Struct, frozen=True, kw_only=True, tag="hold.taken"):
    key: str
    holder_kind: str
    holder: str
    value: str = ""
    at: dt.datetime


class HoldConfirmed(msgspec.Struct, frozen=True, kw_only=True, tag="hold.confirmed"):
    key: str
    holder: str


class HoldReleased(msgspec.Struct, frozen=True, kw_only=True, tag="hold.released"):
    key: str
    holder: str
    reason: str = ""


class HoldRef(msgspec.Struct, frozen=True, kw_only=True):
    key: str
    holder_kind: str
    holder: str


class HoldsChecking(msgspec.Struct, frozen=True, kw_only=True, tag="hold.checking"):
    """Pending holds past their lease; each holder is asked (request ``<msg>/hold/...``)."""

    checks: list[HoldRef]
    at: dt.datetime


HOLD_EVENTS: tuple[type[msgspec.Struct], ...] = (HoldTaken, HoldConfirmed, HoldReleased,
                                                 HoldsChecking)


# -- commands and the query ----------------------------------------------------------------


class ReleaseHolds(msgspec.Struct, frozen=True, kw_only=True, tag="hold.release"):
    """Give back what ``holder`` holds (only ``key`` when given); nothing held, no event."""

    holder: str
    key: str | None = None


class CheckHold(msgspec.Struct, frozen=True, kw_only=True, tag="hold.check"):
    """Asked of a holder: do you hold ``key`` of owner (``owner_kind``, ``owner_id``)?
    The answer (a query's result) is ``held`` or ``free``."""

    owner_kind: str
    owner_id: str
    key: str


# -- pure functions ------------------------------------------------------------------------


def fold(ledger: Ledger, event: msgspec.Struct) -> None:
    """Apply one event to ``ledger`` (other events are ignored)."""
    match event:
        case HoldTaken(key=key, holder_kind=kind, holder=holder, value=value, at=at):
            ledger._put(key, Hold(holder_kind=kind, holder=holder, since=at, value=value))
        case HoldConfirmed(key=key, holder=holder):
            hold = ledger.holds.get(key)
            if hold is not None and hold.holder == holder:
                ledger._confirm(key)
        case HoldReleased(key=key, holder=holder):
            if key in ledger.holds and ledger.holds[key].holder == holder:
                ledger._drop(key)
        case TimerSet(timer_id=tid, name=name, fire_at=at) if name == SWEEP_TIMER:
            ledger.timer, ledger.timer_at = tid, at
        case TimerFired(timer_id=tid) | TimerCancelled(timer_id=tid) if tid == ledger.timer:
            ledger.timer, ledger.timer_at = None, None


def taken(ledger: Ledger, key: str, holder_kind: str, holder: str, ctx: Context,
          lease: float, value: str = "") -> Events:
    """Hand ``key`` to ``holder``: the event, and the sweep timer if none is pending."""
    events: list[msgspec.Struct] = [HoldTaken(key=key, holder_kind=holder_kind, holder=holder,
                                              value=value, at=ctx.now)]
    if ledger.timer is None:
        events.append(_arm(ctx, ctx.now + dt.timedelta(seconds=lease)))
    return events


def confirmed(ledger: Ledger, holder: str, key: str | None = None) -> Events:
    """Confirm the pending holds of ``holder`` (only ``key`` when given)."""
    return [HoldConfirmed(key=k, holder=holder) for k in ledger.of(holder)
            if not ledger.holds[k].confirmed and key in (None, k)]


def released(ledger: Ledger, holder: str, key: str | None = None,
             reason: str = "") -> Events:
    """Release what ``holder`` holds (only ``key`` when given)."""
    return [HoldReleased(key=k, holder=holder, reason=reason) for k in ledger.of(holder)
            if key in (None, k)]


def sweep(ledger: Ledger, ctx: Context, lease: float) -> Events:
    """The sweep timer fired: ask about every pending hold past its lease, and re-arm for
    the next pending one."""
    limit = dt.timedelta(seconds=lease)
    pending = [(k, ledger.holds[k]) for k in ledger.pending()]
    due = [HoldRef(key=k, holder_kind=h.holder_kind, holder=h.holder)
           for k, h in pending if h.since + limit <= ctx.now]
    events: list[msgspec.Struct] = [HoldsChecking(checks=due, at=ctx.now)] if due else []
    if pending:
        # the asked ones again a lease from now, should their answers be lost
        later = [h.since + limit for _, h in pending if h.since + limit > ctx.now]
        events.append(_arm(ctx, min([*later, ctx.now + limit])))
    return events


def asks(owner_kind: str, event: HoldsChecking, ctx: Context) -> list[Tell]:
    """The effects of ``hold.checking``: one read-only question to each holder."""
    return [Tell(kind=c.holder_kind, actor_id=c.holder, request_id=ask_id(ctx, c),
                 command=CheckHold(owner_kind=owner_kind, owner_id=ctx.actor_id, key=c.key))
            for c in event.checks]


def ask_id(ctx: Context, ref: HoldRef) -> str:
    return f"{ctx.message_id}{_ASK}{ref.holder}/{ref.key}"


def answered(ledger: Ledger, reply: Reply) -> Events:
    """A holder's answer: confirm or release the hold it was asked about (if still
    pending for that holder); a failed question is asked again at the next sweep."""
    _, sep, rest = reply.command_id.partition(_ASK)
    holder, _, key = rest.partition("/")
    hold = ledger.holds.get(key)
    if not sep or hold is None or hold.holder != holder or hold.confirmed or not reply.ok:
        return []
    if reply.result == HELD:
        return [HoldConfirmed(key=key, holder=holder)]
    return [HoldReleased(key=key, holder=holder, reason="the holder never took it")]


def _arm(ctx: Context, at: dt.datetime) -> TimerSet:
    return TimerSet(timer_id=ctx.derive_id(99), name=SWEEP_TIMER, fire_at=at)


def answer_held(held: bool) -> str:
    return HELD if held else FREE


def holders(ledger: Ledger, prefix: str = "") -> Sequence[str]:
    """The distinct holders of keys starting with ``prefix``."""
    return sorted(h for h, keys in ledger._by_holder().items()
                  if any(k.startswith(prefix) for k in keys))
