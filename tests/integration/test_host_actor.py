"""The host actor and the scheduler on the real runtime, on embedded (SQLite + memory) and
real (PostgreSQL + RabbitMQ) backends, with the hosts projection read back."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import pytest

from actors.client import ActorClient
from actors.host import (
    HOST_EVENTS,
    Claim,
    Heartbeat,
    HostState,
    Release,
    ReportCapacity,
    make_host_kind,
)
from actors.host_views import HostsProjection, HostView, read_host, read_hosts
from actors.runtime import ActorRuntime
from actors.scheduler import NoValidHost, PlacementRequest, schedule
from actors.timers import TimerService
from bus.routing import Names
from schemas import SYSTEM_EVENTS, Reply, stream_name
from schemas.hostd import Capacity
from store.projections import ProjectionRunner
from store.registry import EventTypes
from store.relay import Relay
from tests.support.backends import eventually, open_backends

WAIT = 10.0
#: room for exactly ten 1-vCPU / 1 GiB / 10 GiB claims (RAM is the limit)
CAP = Capacity(vcpus=4, ram_mb=10 * 1024, disk_gb=500)


class Cloud(msgspec.Struct, kw_only=True):
    store: Any
    runtime: ActorRuntime
    client: ActorClient

    async def report(self, host: str, capacity: Capacity = CAP) -> Reply:
        now = dt.datetime.now(dt.UTC)
        return await self.client.call("host", host, ReportCapacity(capacity=capacity, at=now))

    async def claim(self, host: str, iid: str, ram_mb: int = 1024) -> Reply:
        return await self.client.call(
            "host", host, Claim(instance_id=iid, vcpus=1, ram_mb=ram_mb, disk_gb=10))

    async def view(self, host: str, position: int) -> HostView:
        """The projection's row once it has folded up to ``position``."""
        assert await self.store.wait_for_projection("hosts", position, timeout=WAIT)
        found = await read_host(self.store, host)
        assert found is not None
        return found

    async def types(self, host: str) -> list[str]:
        return [e.type for e in await self.store.read_stream(stream_name("host", host))]

    def state(self, host: str) -> HostState:
        state = self.runtime.cells[("host", host)].state
        assert isinstance(state, HostState)
        return state

    async def hosts(self) -> list[HostView]:
        return await read_hosts(self.store)


CloudFactory = Callable[..., AbstractAsyncContextManager[Cloud]]


@pytest.fixture
def open_cloud(
    backends: tuple[str, dict[str, Any]], bus_names: Names, tmp_path: Path
) -> CloudFactory:
    """Opens the runtime with a host kind, the relay, timers and the hosts projection."""
    which, extra = backends

    @asynccontextmanager
    async def opened(**kind_options: Any) -> AsyncIterator[Cloud]:
        types = EventTypes([*HOST_EVENTS, *SYSTEM_EVENTS])
        async with open_backends(which, types=types, names=bus_names, tmp_path=tmp_path,
                                 **extra) as (store, bus):
            runtime = ActorRuntime(store, bus, [make_host_kind(**kind_options)])
            async with runtime, ProjectionRunner(store, HostsProjection()), \
                    asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(Relay(store, bus).run()),
                         tg.create_task(TimerService(store, bus, resend_after=120).run())]
                try:
                    yield Cloud(store=store, runtime=runtime,
                                client=ActorClient(bus, timeout=15))
                finally:
                    for task in tasks:
                        task.cancel()

    return opened


async def test_fifty_concurrent_claims_on_room_for_ten_accept_exactly_ten(
    open_cloud: CloudFactory,
) -> None:
    """The host is the single writer of its capacity: 10 of 50 racing claims win, and usage
    (in the actor and in the projection) is exactly the sum of the accepted ones."""
    async with open_cloud() as cloud:
        await cloud.report("h1")
        replies = await asyncio.gather(*(cloud.claim("h1", f"i{n}") for n in range(50)))
        accepted = [r for r in replies if r.ok]
        assert len(accepted) == 10
        assert {r.error_type for r in replies if not r.ok} == {"conflict"}
        assert (await cloud.types("h1")).count("host.claimed") == 10
        state = cloud.state("h1")
        assert (state.used.vcpus, state.used.ram_mb, state.used.disk_gb) == (10, 10240, 100)
        row = await cloud.view("h1", max(r.position for r in accepted))
        assert (row.used.vcpus, row.used.ram_mb, row.used.disk_gb, row.instances) == (
            10, 10240, 100, 10)


async def test_release_returns_capacity_and_the_projection_follows(
    open_cloud: CloudFactory,
) -> None:
    """After each claim and release the hosts row shows capacity and usage; a released
    slot can be claimed again; a repeated claim adds nothing."""
    async with open_cloud() as cloud:
        first = await cloud.report("h1")
        row = await cloud.view("h1", first.position)
        assert (row.state, row.capacity, row.used.ram_mb) == ("up", CAP, 0)
        assert row.ratios.cpu == 4.0 and row.last_heartbeat is not None
        claimed = await cloud.claim("h1", "big", ram_mb=10240)
        assert (await cloud.view("h1", claimed.position)).free.ram_mb == 0
        again = await cloud.claim("h1", "big", ram_mb=10240)
        assert again.ok and again.version == claimed.version
        assert not (await cloud.claim("h1", "other")).ok
        released = await cloud.client.call("host", "h1", Release(instance_id="big"))
        row = await cloud.view("h1", released.position)
        assert (row.used.ram_mb, row.instances) == (0, 0)
        assert (await cloud.claim("h1", "other")).ok


async def test_silent_host_goes_down_by_durable_timer_and_comes_back_on_a_beat(
    open_cloud: CloudFactory,
) -> None:
    """No beat for down_after: host.down (projection: down, scheduler skips it); the next
    beat records host.up."""
    async with open_cloud(down_after=1.0, record_every=0.3) as cloud:
        await cloud.report("h1")
        await cloud.report("h2", Capacity(vcpus=4, ram_mb=2048, disk_gb=500))

        async def h1_down() -> bool:
            return "host.down" in await cloud.types("h1")

        beats = asyncio.create_task(_keep_beating(cloud, "h2", every=0.2))
        try:
            await eventually(h1_down, timeout=WAIT, what="h1 to go down")
            row = await cloud.view("h1", await cloud.store.head())
            assert row.state == "down"
            request = PlacementRequest(instance_id="i1", vcpus=1, ram_mb=512, disk_gb=1)
            assert await schedule(cloud.client, cloud.hosts, request) == "h2"
            assert "host.down" not in await cloud.types("h2")
        finally:
            beats.cancel()
        up = await cloud.client.call("host", "h1", Heartbeat(capacity=CAP,
                                                             at=dt.datetime.now(dt.UTC)))
        assert (await cloud.types("h1"))[-2:] == ["host.up", "timer.set"]
        assert (await cloud.view("h1", up.position)).state == "up"


async def _keep_beating(cloud: Cloud, host: str, every: float) -> None:
    while True:
        beat = Heartbeat(capacity=Capacity(vcpus=4, ram_mb=2048, disk_gb=500),
                         at=dt.datetime.now(dt.UTC))
        await cloud.client.call("host", host, beat)
        await asyncio.sleep(every)


async def test_schedule_moves_on_when_a_stale_view_meets_a_full_host(
    open_cloud: CloudFactory,
) -> None:
    """A conflict from the best-ranked host (filled since the view was read) sends the claim
    to the next host; when every host refuses, NoValidHost says why for each."""
    async with open_cloud() as cloud:
        await cloud.report("big")
        small = await cloud.report("small", Capacity(vcpus=4, ram_mb=2048, disk_gb=500))
        assert await cloud.store.wait_for_projection("hosts", small.position, timeout=WAIT)
        stale = await cloud.hosts()
        assert (await cloud.claim("big", "filler", ram_mb=10240)).ok

        async def read_stale() -> list[HostView]:
            return stale

        request = PlacementRequest(instance_id="i1", vcpus=1, ram_mb=2048, disk_gb=1)
        assert await schedule(cloud.client, read_stale, request) == "small"
        late = PlacementRequest(instance_id="i2", vcpus=1, ram_mb=2048, disk_gb=1)
        with pytest.raises(NoValidHost) as exc:
            await schedule(cloud.client, read_stale, late)
        message = str(exc.value)
        assert message.startswith("No valid host was found. ")
        assert "big: not enough RAM" in message and "small: not enough RAM" in message


async def test_a_claim_left_unanswered_is_released_before_the_next_host_is_tried(
    open_cloud: CloudFactory,
) -> None:
    """When the best host answers too late, its claim may still be recorded: schedule sends
    it a Release (queued behind the claim) and places on the next host, so no room leaks."""
    async with open_cloud() as cloud:
        await cloud.report("slow")
        fast = await cloud.report("fast", Capacity(vcpus=4, ram_mb=2048, disk_gb=500))
        assert await cloud.store.wait_for_projection("hosts", fast.position, timeout=WAIT)
        busy = cloud.runtime.cells[("host", "slow")].lock
        await busy.acquire()  # the slow host is stuck on an earlier message
        try:
            request = PlacementRequest(instance_id="i1", vcpus=1, ram_mb=512, disk_gb=1)
            # the slow host cannot answer at all (its lock is held), so the timeout only has to
            # be long enough for the fast host to answer on a loaded machine
            assert await schedule(cloud.client, cloud.hosts, request, timeout=3.0) == "fast"
        finally:
            busy.release()

        async def settled() -> bool:
            return (await cloud.types("slow"))[-2:] == ["host.claimed", "host.released"]

        await eventually(settled, timeout=WAIT, what="the late claim and its release")
        assert cloud.state("slow").claims == {}
