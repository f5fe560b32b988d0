"""Opening the log the tool reads: PostgreSQL, or the SQLite file of ``orrery up``.

The SQLite store is opened as a follower: ``orrery up`` may be writing the file while the
tool reads it, and only one process may append to it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from replay.errors import BadArgument
from store.registry import EventTypes


def database_url(url: str | None, data_dir: str | None, configured: str) -> str:
    """The log to read: ``url``, else ``<data_dir>/orrery.sqlite``, else ``configured``."""
    if url and data_dir:
        raise BadArgument("give --database-url or --data-dir, not both")
    if url:
        return url
    if data_dir:
        return f"sqlite:///{Path(data_dir) / 'orrery.sqlite'}"
    return configured


async def open_log(url: str, types: EventTypes) -> Any:
    """The store at ``url`` (``sqlite:///PATH`` or ``postgresql://…``)."""
    if url.startswith("sqlite:///"):
        from store.sqlite import SqliteEventStore

        path = url.removeprefix("sqlite:///")
        if path != ":memory:" and not await asyncio.to_thread(Path(path).exists):
            raise BadArgument(f"no event log at {path}")
        return await SqliteEventStore.open(path, types, follower=True)
    if url.startswith(("postgresql://", "postgres://")):
        from store.postgres import PostgresEventStore

        return await PostgresEventStore.connect(url, types, writers=1, read_pool_size=3,
                                                settle_timeout=0.5)
    raise BadArgument(f"not a database URL the tool can read: {url!r}")
