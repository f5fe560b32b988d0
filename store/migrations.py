"""Schema migrations of the PostgreSQL event log: numbered SQL files applied once, in order."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import structlog

log = structlog.get_logger(__name__)

#: pg advisory lock key held while migrating, so two processes never both apply.
MIGRATION_LOCK_KEY = 0x6F72_7265_7279  # "orrery" as a bigint
_NAME = re.compile(r"^(\d+)_[\w-]+\.sql$")

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    int PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""


@dataclass(frozen=True)
class Migration:
    """One numbered SQL file of store/migrations."""

    version: int
    name: str
    sql: str


def available() -> list[Migration]:
    """Every migration shipped with the package, ordered by version."""
    found: list[Migration] = []
    for entry in resources.files("store").joinpath("migrations").iterdir():
        match = _NAME.match(entry.name)
        if match is None:
            continue
        found.append(Migration(int(match.group(1)), entry.name, entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"two migrations share a version: {versions}")
    return found


async def applied(conn: Any, timeout: float = 30.0) -> list[int]:
    """Versions already recorded in schema_migrations (empty if the table is missing)."""
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations')", timeout=timeout)
    if exists is None:
        return []
    rows = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version",
                            timeout=timeout)
    return [r[0] for r in rows]


async def migrate(conn: Any, timeout: float = 60.0) -> list[int]:
    """Apply every pending migration on ``conn`` (an asyncpg connection); return those applied.

    Idempotent. Holds a session advisory lock while it runs, so concurrent starters wait
    for the first and then find nothing left to do. Each migration runs in its own
    transaction together with its schema_migrations row.
    """
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY, timeout=timeout)
    try:
        await conn.execute(_CREATE_TABLE, timeout=timeout)
        done = set(await applied(conn, timeout))
        newly: list[int] = []
        for migration in available():
            if migration.version in done:
                continue
            async with conn.transaction():
                await conn.execute(migration.sql, timeout=timeout)
                await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)",
                                   migration.version, timeout=timeout)
            log.info("migration_applied", version=migration.version, name=migration.name)
            newly.append(migration.version)
        return newly
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY, timeout=timeout)
