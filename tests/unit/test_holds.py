"""The holds ledger (actors.holds): its look-ups by holder and of pending holds agree
with its holds however it got them (folded, or decoded from a snapshot)."""

from __future__ import annotations

import datetime as dt

import msgspec

from actors import holds
from actors.holds import HoldConfirmed, HoldReleased, HoldTaken, Ledger

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def taken(key: str, holder: str) -> HoldTaken:
    return HoldTaken(key=key, holder_kind="port", holder=holder, at=T0)


def scan(ledger: Ledger) -> tuple[dict[str, list[str]], list[str]]:
    """What the look-ups must answer, by a pass over every hold (sorted)."""
    by_holder: dict[str, list[str]] = {}
    for key, hold in ledger.holds.items():
        by_holder.setdefault(hold.holder, []).append(key)
    return ({h: sorted(k) for h, k in by_holder.items()},
            sorted(k for k, h in ledger.holds.items() if not h.confirmed))


def looked_up(ledger: Ledger, holders: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    return ({h: sorted(ledger.of(h)) for h in holders if ledger.of(h)},
            sorted(ledger.pending()))


def test_look_ups_follow_takes_confirms_releases_and_a_snapshot() -> None:
    """After holds are taken, confirmed, released and taken again by another holder,
    ``of`` and ``pending`` answer as a scan would, before and after a snapshot round
    trip; a release by the wrong holder changes nothing."""
    ledger = Ledger()
    events: list[msgspec.Struct] = [
        *(taken(f"10.0.0.{n}", f"p{n % 7}") for n in range(2, 40)),
        *(HoldConfirmed(key=f"10.0.0.{n}", holder=f"p{n % 7}") for n in range(2, 40, 3)),
        *(HoldReleased(key=f"10.0.0.{n}", holder=f"p{n % 7}") for n in range(2, 40, 4)),
        HoldReleased(key="10.0.0.3", holder="not-its-holder"),
        taken("10.0.0.2", "q"), taken("10.0.0.3", "q")]
    holders = [f"p{n}" for n in range(7)] + ["q", "not-its-holder"]
    for event in events:
        holds.fold(ledger, event)
        assert looked_up(ledger, holders) == scan(ledger)
    assert ledger.of("q") == ["10.0.0.2", "10.0.0.3"]  # in the order q took them
    decoded = msgspec.json.decode(msgspec.json.encode(ledger), type=Ledger)
    assert decoded == ledger
    assert looked_up(decoded, holders) == scan(decoded)
    assert holds.holders(decoded) == sorted(scan(decoded)[0])
