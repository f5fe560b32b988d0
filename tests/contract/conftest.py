"""The ``store`` fixture: every contract test runs against SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from store.projections import ProjectionHost
from store.registry import EventTypes
from tests.support.logs import backend, open_store

__all__ = ["backend", "open_store"]  # the fixture, and what test modules import from here


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
