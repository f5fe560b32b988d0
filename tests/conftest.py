"""Shared fixtures: a fresh PostgreSQL database and fresh AMQP names per test run.

With ORRERY_REQUIRE_SERVICES=1 (as in CI) a test that cannot reach PostgreSQL or
RabbitMQ fails; otherwise it is skipped with the reason.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from bus.routing import Names
from schemas import SYSTEM_EVENTS
from store.registry import EventTypes
from tests.support.broker import delete_amqp_prefix
from tests.support.events import COUNTER_EVENTS

PG_ADMIN_DSN = os.environ.get("ORRERY_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
AMQP_URL = os.environ.get("ORRERY_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672/")
REQUIRE = os.environ.get("ORRERY_REQUIRE_SERVICES") == "1"
RUN_ID = uuid.uuid4().hex[:8]


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def _need(service: str, host: str, port: int) -> None:
    if _reachable(host, port):
        return
    message = f"{service} is not reachable at {host}:{port}"
    if REQUIRE:
        pytest.fail(message + " and ORRERY_REQUIRE_SERVICES=1")
    pytest.skip(message + " (set ORRERY_REQUIRE_SERVICES=1 to make this a failure)")


@pytest.fixture(scope="session")
def pg_server() -> str:
    _need("PostgreSQL", "127.0.0.1", 5432)
    return PG_ADMIN_DSN


@pytest.fixture(scope="session")
def amqp_url() -> str:
    _need("RabbitMQ", "127.0.0.1", 5672)
    return AMQP_URL


async def _create_db(admin_dsn: str, name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def _drop_db(admin_dsn: str, name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def _dsn_for(admin_dsn: str, name: str) -> str:
    return admin_dsn.rsplit("/", 1)[0] + "/" + name


@pytest.fixture
def pg_dsn(pg_server: str) -> Iterator[str]:
    """A brand-new database for one test, dropped afterwards."""
    name = f"orrery_t_{RUN_ID}_{uuid.uuid4().hex[:8]}"
    asyncio.run(_create_db(pg_server, name))
    try:
        yield _dsn_for(pg_server, name)
    finally:
        asyncio.run(_drop_db(pg_server, name))


@pytest.fixture
def bus_names() -> Names:
    """AMQP names no other test or run uses."""
    return Names(prefix=f"t{RUN_ID}{uuid.uuid4().hex[:6]}", shards=4)


@pytest.fixture
def event_types() -> EventTypes:
    return EventTypes([*COUNTER_EVENTS, *SYSTEM_EVENTS])


@pytest.fixture
async def amqp_cleanup(amqp_url: str, bus_names: Names) -> AsyncIterator[Names]:
    """Deletes every queue and exchange under the test's prefix afterwards."""
    yield bus_names
    await delete_amqp_prefix(bus_names.prefix, AMQP_URL)


@pytest.fixture(params=["embedded", "real"])
def backends(request: pytest.FixtureRequest) -> tuple[str, dict[str, str]]:
    """Each test twice: on the embedded backends (SQLite + in-process bus) and on the real
    ones (a fresh PostgreSQL database + fresh RabbitMQ names), as open_backends takes them."""
    if request.param == "embedded":
        return "embedded", {}
    request.getfixturevalue("amqp_cleanup")
    return "real", {"pg_dsn": request.getfixturevalue("pg_dsn"),
                    "amqp_url": request.getfixturevalue("amqp_url")}
