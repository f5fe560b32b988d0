"""A fresh event log on each backend, for tests that run against SQLite and PostgreSQL:
the ``backend`` fixture (import it into a test module or conftest) and ``open_store``."""

from __future__ import annotations

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
