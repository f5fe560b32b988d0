"""hostd's network sync (hostd.netsync) on the recording driver and the in-process bus:
desired sets applied in log order, a spawn's ports kept until the log knows them, taken
back when a push names them gone, and DHCP ports reported plugged."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import msgspec
import pytest

from bus.memory import MemoryBus
from bus.protocol import Delivery
from bus.routing import Names
from hostd.net_fake import FakeHostNetwork
from hostd.netsync import NetworkSync
from schemas import COMMAND_DECODER
from schemas.hostd import DhcpPortPlugged, SyncNetwork
from schemas.hostnet import DesiredHostNetwork, DhcpSpec, NetworkSpec, PortSpec, SubnetSpec

NET = NetworkSpec(network_id="n1", type="vxlan", segmentation_id=7, mtu=1450,
                  subnets=(SubnetSpec(subnet_id="s1", cidr="10.0.0.0/24"),))
SERVED = msgspec.structs.replace(NET, peers=("192.0.2.9",), dhcp=DhcpSpec(
    mac="fa:16:3e:00:00:02", ips=("10.0.0.2",), port_id="dhcp-port"))
P1 = PortSpec(port_id="p1", network_id="n1", mac="fa:16:3e:00:00:11", ips=("10.0.0.11",),
              device="otpp1")
P2 = PortSpec(port_id="p2", network_id="n1", mac="fa:16:3e:00:00:12", ips=("10.0.0.12",),
              device="otpp2")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


Setup = tuple[NetworkSync, FakeHostNetwork, Clock, list[bytes]]


@pytest.fixture
async def setup() -> AsyncIterator[Setup]:
    bus = MemoryBus(Names(prefix="netsync", shards=2))
    seen: list[bytes] = []

    async def record(delivery: Delivery) -> None:
        seen.append(delivery.body)

    sub = await bus.consume_commands("port", record)
    network = FakeHostNetwork()
    clock = Clock()
    sync = NetworkSync(bus, network, "h1", pending_grace=30.0, clock=clock)
    try:
        yield sync, network, clock, seen
    finally:
        await sub.cancel()
        await bus.close()


def desired(*ports: PortSpec, net: NetworkSpec = SERVED) -> DesiredHostNetwork:
    return DesiredHostNetwork(networks=(net,), ports=ports)


async def test_a_desired_set_is_applied_and_an_older_one_ignored(setup: Setup) -> None:
    """Position 5 builds the network (with DHCP and peers) and plugs p1; a set read at
    position 3 that arrives later changes nothing; position 6 without them removes both
    (a push: only what changed)."""
    sync, network, _, _ = setup
    assert await sync.apply(SyncNetwork(desired=desired(P1), position=5)) == ()
    assert "otpp1" in network.host.devices and "n1" in network.host.dhcp
    assert await sync.apply(SyncNetwork(desired=DesiredHostNetwork(), position=3)) is None
    assert "otpp1" in network.host.devices
    removed = await sync.apply(SyncNetwork(desired=DesiredHostNetwork(), position=6))
    assert removed == ("otpp1", "network:n1")
    assert not {"otpp1", "obrn1", "ovxn1"} & set(network.host.devices)
    assert "n1" not in network.host.dhcp


async def test_a_push_changes_only_what_changed_and_a_full_sync_sweeps(setup: Setup) -> None:
    """A push that adds p2 leaves a stray tap alone (it only ensures p2); a full sync
    (what a pull does) removes the stray and keeps everything desired."""
    sync, network, _, _ = setup
    await sync.apply(SyncNetwork(desired=desired(P1), position=1))
    network.host.add_device("otpstray", "tap", master="obrn1", up=True)
    assert await sync.apply(SyncNetwork(desired=desired(P1, P2), position=2)) == ()
    assert {"otpstray", "otpp2"} <= set(network.host.devices)
    removed = await sync.apply(SyncNetwork(desired=desired(P1, P2), position=2), full=True)
    assert removed == ("otpstray",)
    assert {"otpp1", "otpp2", "obrn1"} <= set(network.host.devices)


async def test_a_spawned_port_survives_a_set_that_does_not_know_it_yet(setup: Setup) -> None:
    """A spawn plugs p2 on the carried network without touching its DHCP or peers; a
    set read before p2 was bound keeps it; once a set lists it, a later set without it
    removes it."""
    sync, network, _, _ = setup
    await sync.apply(SyncNetwork(desired=desired(P1), position=1))
    await sync.plug([NET], [P2])
    assert network.host.dhcp["n1"].running and network.host.devices["ovxn1"].peers == {
        "192.0.2.9"}
    await sync.apply(SyncNetwork(desired=desired(P1), position=2))
    assert "otpp2" in network.host.devices
    await sync.apply(SyncNetwork(desired=desired(P1, P2), position=3))
    await sync.apply(SyncNetwork(desired=desired(P1), position=4))
    assert "otpp2" not in network.host.devices


async def test_a_spawned_port_named_gone_or_past_its_grace_is_removed(setup: Setup) -> None:
    """A port deleted before any set listed it goes when a push names it gone; another
    one that no set ever lists goes once its grace has passed."""
    sync, network, clock, _ = setup
    await sync.plug([NET], [P1, P2])
    await sync.apply(SyncNetwork(desired=DesiredHostNetwork(), position=1, gone_ports=("p1",)))
    assert "otpp1" not in network.host.devices and "otpp2" in network.host.devices
    clock.now = 31.0
    await sync.apply(SyncNetwork(desired=DesiredHostNetwork(), position=2))
    assert "otpp2" not in network.host.devices and "obrn1" not in network.host.devices


async def test_the_dhcp_port_of_a_served_network_is_reported_plugged(setup: Setup) -> None:
    """After a set with DHCP for n1 is applied, its DHCP port is told it is plugged on
    this host (the port actor's ``port.plug``)."""
    sync, _, _, seen = setup
    await sync.apply(SyncNetwork(desired=desired(P1), position=1))
    for _ in range(50):
        if seen:
            break
        await asyncio.sleep(0.01)
    (body,) = seen
    msg = COMMAND_DECODER.decode(body)
    assert (msg.actor_id, msg.type) == ("dhcp-port", "port.plug")
    assert msgspec.json.decode(msg.body, type=DhcpPortPlugged).host_id == "h1"
