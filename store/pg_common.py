"""What the PostgreSQL log's modules share: channels, error mapping, the json codec."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import asyncpg

from store.errors import StoreUnavailable

EVENTS_CHANNEL = "orrery_events"
PROJECTIONS_CHANNEL = "orrery_projections"
CONN_ERRORS = (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError)
#: server errors worth retrying (deadlock/serialization, out of resources, shutdown)
TRANSIENT = (asyncpg.TransactionRollbackError, asyncpg.InsufficientResourcesError,
             asyncpg.OperatorInterventionError)


async def init_conn(conn: Any) -> None:
    """Event data is ``json`` (kept byte for byte, unlike jsonb) sent and read in binary
    form, which for json is the text itself: the bytes are never re-parsed in Python."""
    await conn.set_type_codec("json", schema="pg_catalog", format="binary",
                              encoder=_same_bytes, decoder=_same_bytes)


def _same_bytes(data: bytes) -> bytes:
    return data


@contextlib.contextmanager
def mapped() -> Iterator[None]:
    """Map lost connections and timeouts to StoreUnavailable (retryable)."""
    try:
        yield
    except CONN_ERRORS as exc:
        raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc
