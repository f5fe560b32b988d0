"""The ``store`` fixture: every contract test runs against SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from store.projections import ProjectionHost
from store.registry import EventTypes
from store.sqlite import SqliteEventStore


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """Which log to open and where: a fresh SQLite file or a fresh PostgreSQL database.

    ``pg_dsn`` is pulled in here, outside the event loop, because it runs its own.
    """
    if request.param == "sqlite":
        return "sqlite", str(tmp_path / "log.sqlite")
    return "postgres", request.getfixturevalue("pg_dsn")


async def open_store(backend: tuple[str, str], types: EventTypes) -> ProjectionHost:
    """Open one more store on the backend's log (several may share it)."""
    kind, where = backend
    if kind == "sqlite":
        return await SqliteEventStore.open(where, types)
    from store.postgres import PostgresEventStore

    store: ProjectionHost = await PostgresEventStore.connect(where, types)
    return store


@pytest.fixture
async def store(backend: tuple[str, str], event_types: EventTypes) -> AsyncIterator[ProjectionHost]:
    """An empty event log implementing EventStore and ProjectionStore."""
    opened = await open_store(backend, event_types)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def open_another(
    backend: tuple[str, str], event_types: EventTypes
) -> AsyncIterator[Callable[[], Awaitable[ProjectionHost]]]:
    """Opens more stores on the same log as ``store`` (a restart, another process)."""
    opened: list[ProjectionHost] = []

    async def open_one() -> ProjectionHost:
        opened.append(await open_store(backend, event_types))
        return opened[-1]

    try:
        yield open_one
    finally:
        for one in opened:
            await one.close()
