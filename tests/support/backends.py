"""Opening the embedded and the real backends the same way for runtime tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from bus.protocol import Bus
from bus.routing import Names
from store.registry import EventTypes


@asynccontextmanager
async def open_backends(
    which: str, *, types: EventTypes, names: Names, tmp_path: Path,
    pg_dsn: str | None = None, amqp_url: str | None = None, max_attempts: int = 3,
) -> AsyncIterator[tuple[Any, Bus]]:
    """(store, bus): SQLite + memory for "embedded", PostgreSQL + RabbitMQ for "real"."""
    if which == "embedded":
        from bus.memory import MemoryBus
        from store.sqlite import SqliteEventStore

        store: Any = await SqliteEventStore.open(tmp_path / "log.sqlite", types)
        bus: Bus = MemoryBus(names, max_attempts=max_attempts)
    else:
        from bus.amqp import AmqpBus
        from store.postgres import PostgresEventStore

        assert pg_dsn is not None and amqp_url is not None
        store = await PostgresEventStore.connect(pg_dsn, types)
        bus = await AmqpBus.connect(amqp_url, names, max_attempts=max_attempts)
    try:
        yield store, bus
    finally:
        await bus.close()
        await store.close()


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout: float = 20.0, what: str = "condition"
) -> None:
    """Wait until ``check()`` is true, failing the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if await check():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)
