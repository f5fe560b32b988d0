"""``orrery replay verify`` on a test database, SQLite and PostgreSQL: a clean log passes;
a deliberately corrupted one fails with exit status 1, naming each breach (a gap in a
stream's versions, an event today's code cannot decode, a causation id the log does not
explain, a durable timer long past its deadline) and nothing else."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import sqlite3
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from actors.kind import ActorKind
from orrery.cli import main
from schemas import NewEvent, TimerFired, TimerSet
from store.protocol import NO_STREAM
from tests.support.counter import COUNTER
from tests.support.events import Incremented, Noted, new_event
from tests.support.replay_tool import restore_logging

#: the tool runs in this process here, and configures its logging
pytestmark = pytest.mark.usefixtures(restore_logging.__name__)

COUNTER_KIND = "tests.support.counter:COUNTER"
NOW = dt.datetime.now(dt.UTC)


@pytest.fixture(params=["sqlite", "postgres"])
def log_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty log on each backend, as the tool's --database-url."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'log.sqlite'}"
    return str(request.getfixturevalue("pg_dsn"))


async def _open(url: str, kinds: Sequence[ActorKind[Any]] = (COUNTER,)) -> object:
    from replay.catalog import Catalog
    from replay.source import open_log

    types = Catalog(kinds).event_types()
    if url.startswith("sqlite"):
        from store.sqlite import SqliteEventStore

        return await SqliteEventStore.open(url.removeprefix("sqlite:///"), types)
    return await open_log(url, types)


def ev(payload: object, cause: str | None = None) -> NewEvent:
    return new_event(payload, causation_id=cause, correlation_id="req-1")  # type: ignore[arg-type]


async def _write_clean(url: str) -> None:
    """What the runtime writes: commands' events recorded with the command as the append's
    cause, a reaction caused by an earlier event, a timer set and fired, one still open."""
    store = await _open(url)
    try:
        a = store.append  # type: ignore[attr-defined]
        await a("counter:a", [ev(Incremented(amount=1), "cmd-1")], NO_STREAM, cause="cmd-1")
        [first] = await store.read_stream("counter:a")  # type: ignore[attr-defined]
        cause = str(first.event_id)
        await a("counter:a", [ev(TimerSet(timer_id="t1", name="ring", fire_at=NOW), "cmd-2")],
                1, cause="cmd-2")
        await a("counter:b", [ev(Incremented(amount=1), cause)], NO_STREAM, cause=cause)
        await a("counter:a", [ev(Noted(text="rang"), "timer:t1"),
                              ev(TimerFired(timer_id="t1", name="ring"), "timer:t1")], 2,
                cause="timer:t1")
        later = NOW + dt.timedelta(hours=2)
        await a("counter:c", [ev(TimerSet(timer_id="t2", name="later", fire_at=later), "cmd-3")],
                NO_STREAM, cause="cmd-3")
        await a("counter:d", [ev(Incremented(amount=1)), ev(Incremented(amount=2))], NO_STREAM)
    finally:
        await store.close()  # type: ignore[attr-defined]


async def _overdue(url: str) -> None:
    store = await _open(url)
    try:
        due = NOW - dt.timedelta(hours=1)
        await store.append("counter:e", [ev(TimerSet(timer_id="t3", name="stuck",  # type: ignore[attr-defined]
                                                     fire_at=due), "cmd-4")],
                           NO_STREAM, cause="cmd-4")
    finally:
        await store.close()  # type: ignore[attr-defined]


async def _sql(url: str, sql: str, *args: object) -> None:
    """Corrupt the log behind the store's back (``$n`` placeholders)."""
    if url.startswith("sqlite"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        with conn:
            conn.execute(re.sub(r"\$(\d+)", r"?\1", sql), args)
        conn.close()
        return
    import asyncpg

    pg = await asyncpg.connect(url)
    try:
        await pg.execute(sql, *[a.decode() if isinstance(a, bytes) else a for a in args])
    finally:
        await pg.close()


CORRUPTIONS = {
    "version-gap": lambda url: _sql(
        url, "UPDATE events SET version = 4 WHERE stream = 'counter:d' AND version = 2"),
    "undecodable": lambda url: _sql(
        url, "UPDATE events SET data = $1 WHERE stream = 'counter:d' AND version = 1",
        b'{"type": "counter.incremented", "amount": "lots"}'),
    "dangling-cause": lambda url: _sql(
        url, "UPDATE events SET causation_id = $1 WHERE stream = 'counter:b'",
        str(uuid.uuid4())),
    "overdue-timer": _overdue,
}
WHERE = {"version-gap": "counter:d v4", "undecodable": "counter:d v1",
         "dangling-cause": "counter:b v1", "overdue-timer": "counter:e v1"}


def verify(url: str, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    code = main(["replay", "--kind", COUNTER_KIND, "verify", "--database-url", url, *extra])
    return code, capsys.readouterr().out


def test_a_clean_log_verifies(log_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Commands, a reaction, a fired timer and an open one due later: exit 0, all ok."""
    asyncio.run(_write_clean(log_url))
    code, out = verify(log_url, capsys, "--fold")
    assert code == 0, out
    assert "BREACH" not in out and out.rstrip().endswith("log ok")


@pytest.mark.parametrize("check", sorted(CORRUPTIONS))
def test_a_corrupted_log_fails_naming_the_breach(
    log_url: str, check: str, capsys: pytest.CaptureFixture[str],
) -> None:
    """Exit 1; the breach is named with its stream and version, and it is the only one."""
    asyncio.run(_write_clean(log_url))
    asyncio.run(CORRUPTIONS[check](log_url))
    code, out = verify(log_url, capsys)
    assert code == 1, out
    breaches = [line for line in out.splitlines() if line.startswith("BREACH")]
    assert len(breaches) == 1, out
    assert breaches[0].startswith(f"BREACH {check} {WHERE[check]}"), out
    code, out = verify(log_url, capsys, "--json")
    report = json.loads(out)
    assert not report["ok"] and {k for k, v in report["counts"].items() if v} == {check}


def test_a_timer_cause_must_name_a_timer_its_stream_had_open(
    log_url: str, capsys: pytest.CaptureFixture[str],
) -> None:
    """An event caused by ``timer:<id>`` on a stream that never set that timer dangles,
    even though its append recorded the cause."""
    async def fire_unknown() -> None:
        store = await _open(log_url)
        try:
            await store.append("counter:d", [ev(Noted(text="?"), "timer:nope")], 2,  # type: ignore[attr-defined]
                               cause="timer:nope")
        finally:
            await store.close()  # type: ignore[attr-defined]

    asyncio.run(_write_clean(log_url))
    asyncio.run(fire_unknown())
    code, out = verify(log_url, capsys)
    assert code == 1
    assert "BREACH dangling-cause counter:d v3" in out and "timer nope" in out
