"""Leaderships on PostgreSQL: one leader at a time, a standby takes over when the leader
goes, and a standby that asks every second keeps one session instead of opening one a try."""

from __future__ import annotations

import asyncpg

from store.postgres import PostgresEventStore
from store.registry import EventTypes


async def _sessions(dsn: str) -> frozenset[int]:
    """The sessions (backend pids) on the test database, this one left out."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT pid FROM pg_stat_activity WHERE datname ="
                                " current_database() AND pid <> pg_backend_pid()")
        return frozenset(r[0] for r in rows)
    finally:
        await conn.close()


async def test_one_leader_and_a_standby_that_takes_over(
    pg_dsn: str, event_types: EventTypes
) -> None:
    """While one process leads, another's tries fail; once the leader's block ends, the
    next try wins, on the standby's kept session, and holds the leadership until its own
    block ends."""
    one = await PostgresEventStore.connect(pg_dsn, event_types)
    two = await PostgresEventStore.connect(pg_dsn, event_types)
    try:
        async with one.try_leadership("relay") as leads:
            assert leads
            for _ in range(3):
                async with two.try_leadership("relay") as standby:
                    assert not standby
        async with two.try_leadership("relay") as leads:
            assert leads
            async with one.try_leadership("relay") as other:
                assert not other
        async with one.try_leadership("relay") as leads:
            assert leads  # the kept session held nothing once its block ended
    finally:
        await two.close()
        await one.close()


async def test_a_standby_keeps_one_session_however_often_it_asks(
    pg_dsn: str, event_types: EventTypes
) -> None:
    """Standing by, a process asks for a leadership every second (and for the
    projections' on a session of several): it does so on the session it kept, so
    PostgreSQL does not start a backend (and a TLS handshake) for every try."""
    one = await PostgresEventStore.connect(pg_dsn, event_types)
    two = await PostgresEventStore.connect(pg_dsn, event_types)
    try:
        async with one.try_leadership("timers"), one.try_leaderships(["p:a", "p:b"]) as held:
            assert held.held == {"p:a", "p:b"}
            seen = set()
            for _ in range(5):
                async with two.try_leadership("timers") as standby, \
                        two.try_leaderships(["p:a", "p:b"]) as none:
                    assert not standby and not none.held
                    seen.add(await _sessions(pg_dsn))  # the same backends each try
            assert len(seen) == 1
        async with two.try_leaderships(["p:a", "p:b"]) as held:
            assert held.held == {"p:a", "p:b"}
    finally:
        await two.close()
        await one.close()
