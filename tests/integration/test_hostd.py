"""hostd: capacity, heartbeats and hypervisor commands over the bus, in one process on the
embedded backends and as a real ``orrery hostd`` process on PostgreSQL + RabbitMQ."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest

from actors.client import ActorClient, command_envelope
from actors.host import HOST_EVENTS, make_host_kind
from actors.host_views import HostsProjection, HostView, read_host
from actors.runtime import ActorRuntime
from bus.protocol import Bus
from bus.routing import HOST_KIND, Names
from hostd.daemon import HostDaemon
from hostd.fake import FakeHypervisor
from hostd.net_fake import FakeHostNetwork
from schemas import SYSTEM_EVENTS, Reply
from schemas.hostd import (
    Capacity,
    DestroyDomain,
    DomainSpec,
    DomainState,
    GetDomainState,
    RebootDomain,
    SpawnDomain,
    StartDomain,
    StopDomain,
)
from schemas.hostnet import NetworkSpec, PortSpec, SubnetSpec, port_device
from store.postgres import PostgresEventStore
from store.projections import ProjectionRunner
from store.registry import EventTypes
from tests.support.backends import eventually, open_backends
from tests.support.procs import ROOT, Procs, orrery_processes

CAP = Capacity(vcpus=8, ram_mb=16384, disk_gb=200)
HOST = "h1"


def spec(iid: str) -> DomainSpec:
    return DomainSpec(uuid=iid, name=f"vm-{iid}", vcpus=1, ram_mb=512, disk_gb=1,
                      image_path="/images/cirros.qcow2")


@dataclass
class Embedded:
    store: Any
    bus: Bus
    hypervisor: FakeHypervisor
    client: ActorClient
    network: FakeHostNetwork

    async def hostd(self, command: msgspec.Struct, timeout: float = 5.0) -> Reply:
        return await self.client.call(HOST_KIND, HOST, command, timeout=timeout)

    async def host_view(self) -> HostView | None:
        return await read_host(self.store, HOST)


@pytest.fixture
async def embedded(tmp_path: Path, bus_names: Names) -> AsyncIterator[Embedded]:
    """The host kind's runtime and the hosts projection on SQLite + the in-process bus, and a
    HostDaemon for host h1 on a FakeHypervisor (guests honour ACPI shutdown after 0.05 s)."""
    types = EventTypes([*HOST_EVENTS, *SYSTEM_EVENTS])
    async with open_backends("embedded", types=types, names=bus_names,
                             tmp_path=tmp_path) as (store, bus):
        runtime = ActorRuntime(store, bus, [make_host_kind(down_after=30.0)])
        await store.run_ddl(HostsProjection.ddl)
        hypervisor = FakeHypervisor(capacity=CAP, shutdown_delay=0.05)
        network = FakeHostNetwork(bridge_mappings={"physnet1": "br-phys"})
        daemon = HostDaemon(bus, hypervisor, HOST, heartbeat_every=0.1, network=network)
        async with runtime, ProjectionRunner(store, HostsProjection()), \
                asyncio.TaskGroup() as tg:
            tg.create_task(daemon.run())
            try:
                yield Embedded(store, bus, hypervisor, ActorClient(bus, timeout=5), network)
            finally:
                daemon.shutdown()
        await hypervisor.close()


async def test_hostd_reports_its_capacity_and_the_host_shows_up(embedded: Embedded) -> None:
    """At start hostd reports the hypervisor's capacity to the host actor: the hosts
    projection shows h1 up with exactly that capacity and a recent heartbeat."""

    async def up() -> bool:
        view = await embedded.host_view()
        return view is not None and view.up and view.last_heartbeat is not None

    await eventually(up, timeout=10, what="h1 up in the hosts projection")
    view = await embedded.host_view()
    assert view is not None
    assert (view.capacity.vcpus, view.capacity.ram_mb, view.capacity.disk_gb) == \
        (CAP.vcpus, CAP.ram_mb, CAP.disk_gb)


NET = NetworkSpec(network_id="9a1f0c52-0c52-4c52-8c52-0c520c520c52", type="vxlan",
                  segmentation_id=1001, mtu=1450,
                  subnets=(SubnetSpec(subnet_id="s1", cidr="10.0.0.0/24", gateway_ip="10.0.0.1"),))
PORT = PortSpec(port_id="4b2d0e61-0e61-4e61-8e61-0e610e610e61", network_id=NET.network_id,
                mac="fa:16:3e:00:00:01", ips=("10.0.0.5",),
                device=port_device("4b2d0e61-0e61-4e61-8e61-0e610e610e61"))


async def test_spawn_plugs_its_ports_before_the_domain_and_destroy_unplugs_them(
        embedded: Embedded) -> None:
    """A spawn with networks and ports builds each network and plugs each port (the tap
    on the network's bridge) before the domain boots; the domain's spec carries the NIC;
    destroy unplugs the ports it names and keeps the network."""
    nic_spec = msgspec.structs.replace(spec("i9"), nics=())
    reply = await embedded.hostd(SpawnDomain(instance_id="i9", spec=nic_spec,
                                             networks=(NET,), ports=(PORT,)))
    assert reply.ok, reply.error
    view = await embedded.network.inspect()
    tap = view.devices[PORT.device]
    assert tap.kind == "tap" and tap.master is not None
    assert view.devices[tap.master].kind == "bridge"
    reply = await embedded.hostd(DestroyDomain(instance_id="i9", ports=(PORT.port_id,)))
    assert reply.ok, reply.error
    view = await embedded.network.inspect()
    assert PORT.device not in view.devices
    assert any(d.kind == "vxlan" and d.vni == 1001 for d in view.devices.values())


async def test_a_spawn_on_a_network_the_host_cannot_carry_fails_and_boots_nothing(
        embedded: Embedded) -> None:
    """A flat network on a physical network the host has no bridge for is a
    network_error, and no domain is defined."""
    flat = NetworkSpec(network_id=NET.network_id, type="flat", physical_network="nowhere")
    reply = await embedded.hostd(SpawnDomain(instance_id="i8", spec=spec("i8"),
                                             networks=(flat,), ports=(PORT,)))
    assert not reply.ok and reply.error_type == "network_error", reply
    assert "i8" not in await embedded.hypervisor.list_domains()


async def test_spawn_defines_and_boots_and_is_idempotent(embedded: Embedded) -> None:
    """hostd.spawn defines and starts the domain (ok, state running); spawning it again is
    ok and leaves the one running domain alone."""
    for _ in range(2):
        reply = await embedded.hostd(SpawnDomain(instance_id="i1", spec=spec("i1")))
        assert reply.ok and reply.result == DomainState.RUNNING
    assert await embedded.hypervisor.list_domains() == {"i1": DomainState.RUNNING}


async def test_stop_start_reboot_destroy_follow_the_domain(embedded: Embedded) -> None:
    """Each lifecycle command is answered ok with the state it left the domain in, and the
    hypervisor's state follows: stop → shutoff, start → running, hard reboot → running,
    destroy → missing; destroying a missing domain is ok too."""
    hv = embedded.hypervisor
    assert (await embedded.hostd(SpawnDomain(instance_id="i2", spec=spec("i2")))).ok
    steps: list[tuple[msgspec.Struct, DomainState]] = [
        (StopDomain(instance_id="i2", timeout=1.0), DomainState.SHUTOFF),
        (GetDomainState(instance_id="i2"), DomainState.SHUTOFF),
        (StartDomain(instance_id="i2"), DomainState.RUNNING),
        (RebootDomain(instance_id="i2"), DomainState.RUNNING),
        (RebootDomain(instance_id="i2", hard=True), DomainState.RUNNING),
        (DestroyDomain(instance_id="i2"), DomainState.MISSING),
        (DestroyDomain(instance_id="i2"), DomainState.MISSING),
    ]
    for command, state in steps:
        reply = await embedded.hostd(command)
        assert (reply.ok, reply.result) == (True, state), command
        assert await hv.state("i2") == state


async def test_commands_for_one_instance_run_in_arrival_order(embedded: Embedded) -> None:
    """A start sent while a (slow, graceful) stop of the same domain is under way waits for
    it: both are ok and the domain ends running, not shut off."""
    await embedded.hostd(SpawnDomain(instance_id="i5", spec=spec("i5")))
    stop = asyncio.create_task(embedded.hostd(StopDomain(instance_id="i5", timeout=1.0)))
    await asyncio.sleep(0.01)
    start = await embedded.hostd(StartDomain(instance_id="i5"))
    assert (await stop).ok and start.ok
    assert await embedded.hypervisor.state("i5") == DomainState.RUNNING


async def test_commands_in_the_wrong_state_or_for_unknown_domains_are_errors(
    embedded: Embedded,
) -> None:
    """A soft reboot of a shut-off domain is a conflict, starting an unknown domain is
    not_found, a spec for another uuid is a bad_request; none is retryable and none
    changes the hypervisor."""
    await embedded.hostd(SpawnDomain(instance_id="i3", spec=spec("i3")))
    await embedded.hostd(StopDomain(instance_id="i3", timeout=1.0))
    cases: list[tuple[msgspec.Struct, str]] = [
        (RebootDomain(instance_id="i3"), "conflict"),
        (StartDomain(instance_id="nope"), "not_found"),
        (SpawnDomain(instance_id="i4", spec=spec("other")), "bad_request"),
    ]
    for command, error_type in cases:
        reply = await embedded.hostd(command)
        assert (reply.ok, reply.error_type, reply.retryable) == (False, error_type, False)
        assert reply.error
    assert await embedded.hypervisor.list_domains() == {"i3": DomainState.SHUTOFF}


async def test_a_command_past_its_deadline_is_not_carried_out(embedded: Embedded) -> None:
    """A spawn whose deadline has passed when hostd gets it is answered deadline_exceeded
    and defines nothing."""
    env = command_envelope(HOST_KIND, HOST, SpawnDomain(instance_id="late", spec=spec("late")),
                           timeout=-1.0)
    reply = await embedded.bus.call(env, timeout=5.0)
    assert (reply.ok, reply.error_type) == (False, "deadline_exceeded")
    assert await embedded.hypervisor.state("late") == DomainState.MISSING


async def test_a_bad_command_body_is_dead_lettered_with_a_reason(embedded: Embedded) -> None:
    """A hostd.spawn whose body lacks its spec never reaches the hypervisor: it goes to the
    dead letters at once, with the decode error as the reason."""
    good = command_envelope(HOST_KIND, HOST, StartDomain(instance_id="x"))
    bad = msgspec.structs.replace(good, type="hostd.spawn",
                                  body=msgspec.Raw(b'{"type":"hostd.spawn","instance_id":"x"}'))
    await embedded.bus.send(bad)
    letters: list[Any] = []

    async def dead() -> bool:
        letters.extend(await embedded.bus.dead_letters())
        return bool(letters)

    await eventually(dead, timeout=10, what="a dead letter")
    assert "spec" in letters[0].reason and letters[0].queue.endswith(f"compute.{HOST}")
    assert await embedded.hypervisor.list_domains() == {}


# -- a real hostd process ------------------------------------------------------------------


@pytest.fixture
async def real(pg_dsn: str, amqp_url: str, amqp_cleanup: Names,
               tmp_path: Path) -> AsyncIterator[tuple[Procs, Any]]:
    """A worker process (host kind down after 2 s) on PostgreSQL + RabbitMQ, the hosts
    projection folded in this process, and Procs to start `orrery hostd` with."""
    names = amqp_cleanup
    types = EventTypes([*HOST_EVENTS, *SYSTEM_EVENTS])
    store = await PostgresEventStore.connect(pg_dsn, types)
    await store.run_ddl(HostsProjection.ddl)
    with orrery_processes(pg_dsn=pg_dsn, amqp_url=amqp_url, prefix=names.prefix,
                          shards=names.shards, log_dir=tmp_path) as procs:
        procs.env.update(ORRERY_HOST_DOWN_AFTER="2")
        try:
            async with ProjectionRunner(store, HostsProjection()):
                yield procs, store
        except BaseException:
            print(procs.logs())
            raise
        finally:
            await store.close()


def start_hostd(procs: Procs, *args: str) -> subprocess.Popen[bytes]:
    """`orrery hostd ARGS` as one of ``procs`` (Procs.start takes no arguments)."""
    procs.count += 1
    log = open(procs.log_dir / f"hostd-{procs.count}.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "orrery.cli", "hostd", *args],
                            env=procs.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    procs.running.append(proc)
    return proc


async def _state_of(store: Any, host: str) -> str | None:
    view = await read_host(store, host)
    return None if view is None else view.state


async def test_a_real_hostd_process_brings_its_host_up_and_down_when_killed(
    real: tuple[Procs, Any],
) -> None:
    """`orrery hostd --host h1` on RabbitMQ with a worker on PostgreSQL: h1 becomes up in
    the hosts projection with the fake hypervisor's capacity; after the hostd process is
    SIGKILLed it goes down (no more beats for down_after = 2 s)."""
    procs, store = real
    procs.start("worker")
    hostd = start_hostd(procs, "--host", HOST, "--heartbeat-every", "0.3")

    async def is_up() -> bool:
        return await _state_of(store, HOST) == "up"

    await eventually(is_up, timeout=30, what="h1 up")
    view = await read_host(store, HOST)
    assert view is not None and view.capacity.vcpus > 0
    await asyncio.sleep(2.5)  # beats keep it up past down_after
    assert await is_up()
    procs.kill(hostd)

    async def is_down() -> bool:
        return await _state_of(store, HOST) == "down"

    await eventually(is_down, timeout=30, what="h1 down after the kill")
