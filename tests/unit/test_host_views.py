"""The hosts projection folds a batch of host events in memory: a host's claims, releases
and beats in one batch are one row written, and whatever the batches, the rows are those
of the events folded one by one (on a SQLite log and on PostgreSQL)."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from actors.host import (
    AllocationRatios,
    HostClaimed,
    HostDown,
    HostHeartbeat,
    HostInventoryChanged,
    HostRegistered,
    HostReleased,
    HostUp,
    Resources,
)
from actors.host_views import HostsProjection, read_host, read_hosts
from schemas import SYSTEM_EVENTS
from schemas.hostd import Capacity
from store.projections import ProjectionRunner
from store.registry import EventTypes
from tests.support.events import new_event
from tests.support.logs import backend, open_store

__all__ = ["backend"]  # the fixture this module's tests run on

T0 = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)
HOST_EVENTS = (HostRegistered, HostInventoryChanged, HostHeartbeat, HostDown, HostUp,
               HostClaimed, HostReleased)


def at(seconds: int) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


@pytest.fixture
async def store(backend: tuple[str, str]) -> AsyncIterator[Any]:
    """An empty log, on SQLite and on PostgreSQL."""
    log: Any = await open_store(backend, EventTypes([*HOST_EVENTS, *SYSTEM_EVENTS]))
    try:
        yield log
    finally:
        await log.close()


async def test_a_batch_folds_to_the_same_hosts_as_its_events_one_by_one(store: Any) -> None:
    ratios = AllocationRatios(cpu=2.0, ram=1.5, disk=1.0)
    lives: dict[str, list[msgspec.Struct]] = {
        "h1": [HostRegistered(capacity=Capacity(vcpus=8, ram_mb=16384, disk_gb=100),
                              ratios=ratios, at=at(0)),
               *(HostClaimed(instance_id=f"i{i}", vcpus=1, ram_mb=512, disk_gb=1)
                 for i in range(5)),
               HostReleased(instance_id="i0", vcpus=1, ram_mb=512, disk_gb=1),
               HostHeartbeat(at=at(5), sent_at=at(5)),
               HostDown(at=at(40), last_heartbeat=at(5)),
               HostUp(at=at(50)),
               HostInventoryChanged(capacity=Capacity(vcpus=16, ram_mb=16384, disk_gb=100),
                                    ratios=ratios, at=at(60))],
        "h2": [HostRegistered(capacity=Capacity(vcpus=4, ram_mb=8192, disk_gb=50),
                              ratios=AllocationRatios(), at=at(1)),
               HostClaimed(instance_id="j", vcpus=2, ram_mb=1024, disk_gb=5),
               HostDown(at=at(30), last_heartbeat=at(1))],
        "h3": [HostHeartbeat(at=at(2), sent_at=at(2))],  # never reported: no row
    }
    versions = dict.fromkeys(lives, 0)
    for step in range(max(len(v) for v in lives.values())):
        for host, life in lives.items():
            if step < len(life):
                await store.append(f"host:{host}", [new_event(life[step])], versions[host])
                versions[host] += 1
    seen = []
    for batch in (1, 1000):
        await ProjectionRunner(store, HostsProjection(), batch=batch).rebuild()
        seen.append(await read_hosts(store))
    assert seen[0] == seen[1]
    h1, h2 = seen[1]
    assert (h1.id, h1.state, h1.capacity.vcpus, h1.used, h1.instances) == (
        "h1", "up", 16, Resources(vcpus=4, ram_mb=2048, disk_gb=4), 4)
    assert h1.last_heartbeat == at(50) and h1.ratios == ratios
    assert (h2.state, h2.used.vcpus, h2.instances) == ("down", 2, 1)
    assert await read_host(store, "h3") is None
