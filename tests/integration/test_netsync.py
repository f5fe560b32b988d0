"""hostd's network sync (hostd.netsync) on the recording driver and the in-process bus:
desired sets applied in log order, a spawn's ports kept until the log knows them, taken
back when a push names them gone, DHCP ports reported plugged, and deltas: applied entry
by entry to the same end as the whole set, or answered with a pull."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import msgspec
import pytest

from bus.memory import MemoryBus
from bus.protocol import Delivery
from bus.replies import answer
from bus.routing import Names
from hostd import netstate
from hostd.net_fake import FakeHostNetwork
from hostd.netsync import NetworkSync
from schemas import COMMAND_DECODER, Reply
from schemas.hostd import HOSTNET_KIND, DhcpPortPlugged, SyncNetwork, SyncNetworkDelta
from schemas.hostnet import (
    DesiredHostNetwork,
    DhcpChange,
    DhcpHost,
    DhcpSpec,
    NetworkChange,
    NetworkSpec,
    PortChange,
    PortSpec,
    SubnetSpec,
)

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


def entries(*ports: PortSpec) -> tuple[DhcpHost, ...]:
    return tuple(DhcpHost(mac=p.mac, ip=p.ips[0], port_id=p.port_id) for p in ports)


def served(*ports: PortSpec) -> NetworkSpec:
    assert SERVED.dhcp is not None
    return msgspec.structs.replace(SERVED, dhcp=msgspec.structs.replace(
        SERVED.dhcp, hosts=entries(*ports)))


P3 = PortSpec(port_id="p3", network_id="n1", mac="fa:16:3e:00:00:13", ips=("10.0.0.13",),
              device="otpp3")


async def looks(network: FakeHostNetwork) -> object:
    """The host's network but for what differs between two equal builds (device
    indexes, generated MACs of bridges and veths)."""
    view = await network.inspect()
    devices = {d.name: (d.kind, d.mtu, d.up, d.master, d.vni, d.peers,
                        d.mac if d.kind == "tap" else "") for d in view.devices.values()}
    return devices, view.dhcp


def delta(position: int, *ports: PortChange, dhcp: tuple[DhcpChange, ...] = (),
          net: NetworkSpec | None = SERVED) -> SyncNetworkDelta:
    head = None if net is None else netstate.head(net)
    return SyncNetworkDelta(position=position, ports=ports, networks=(
        NetworkChange(network_id="n1", spec=head, dhcp=dhcp),))


async def test_deltas_end_in_the_same_host_network_as_the_whole_set(setup: Setup) -> None:
    """From a set with p1, deltas adding p2 and p3 and then dropping p1 leave the host
    exactly as one set with p2 and p3 would (devices and DHCP entries), and as applied
    they read back as that set."""
    sync, network, _, _ = setup
    await sync.apply(SyncNetwork(desired=desired(P1, net=served(P1)), position=1))
    await sync.apply_delta(delta(2, PortChange(port_id="p2", port=P2),
                                 dhcp=(DhcpChange(port_id="p2", hosts=entries(P2)),)))
    await sync.apply_delta(delta(3, PortChange(port_id="p3", port=P3), PortChange(
        port_id="p1"), dhcp=(DhcpChange(port_id="p3", hosts=entries(P3)),
                             DhcpChange(port_id="p1"))))
    assert sync.desired == desired(P2, P3, net=served(P2, P3))
    other = FakeHostNetwork()
    await other.reconcile(desired(P2, P3, net=served(P2, P3)))
    assert await looks(network) == await looks(other)
    assert sync.pulled_for_delta == 0


async def test_a_delta_changes_dhcp_entries_one_by_one(setup: Setup) -> None:
    """A delta about one port changes that port's DHCP entry only (the driver's
    ``update_dhcp_hosts``), without building the network again."""
    sync, network, _, _ = setup
    await sync.apply(SyncNetwork(desired=desired(P1, net=served(P1)), position=1))
    before = dict(network.calls)
    await sync.apply_delta(delta(2, PortChange(port_id="p2"), dhcp=(
        DhcpChange(port_id="p2", hosts=entries(P2)),)))
    assert network.calls["update_dhcp_hosts"] == before.get("update_dhcp_hosts", 0) + 1
    assert network.calls["ensure_network"] == before["ensure_network"]
    assert network.calls["reconcile"] == before["reconcile"]
    assert {(h.mac, h.ip) for h in network.host.dhcp["n1"].hosts} == {
        (P1.mac, "10.0.0.11"), (P2.mac, "10.0.0.12")}


async def test_a_delta_entry_older_than_the_applied_one_is_ignored(setup: Setup) -> None:
    """Deltas may overtake each other: p2 plugged at position 4 stays when a delta read
    at position 3 (before it was bound here) arrives later; a delta about another port
    at position 3 still applies."""
    sync, network, _, _ = setup
    await sync.apply(SyncNetwork(desired=desired(P1, net=served(P1)), position=1))
    await sync.apply_delta(delta(4, PortChange(port_id="p2", port=P2)))
    await sync.apply_delta(delta(3, PortChange(port_id="p2"), PortChange(port_id="p3",
                                                                          port=P3)))
    assert {"otpp2", "otpp3"} <= set(network.host.devices)


async def test_a_delta_that_makes_the_host_serve_dhcp_pulls_the_whole_set(
        setup: Setup) -> None:
    """A host carrying the network without its DHCP that a delta makes its DHCP server
    does not know the entries: it pulls the whole set instead of applying the delta."""
    sync, network, _, _ = setup
    whole = SyncNetwork(desired=desired(P1, P2, net=served(P1, P2)), position=9)

    async def planner(delivery: Delivery) -> None:
        msg = COMMAND_DECODER.decode(delivery.body)
        await answer(sync.bus, msg, Reply(command_id=msg.command_id, ok=True,
                                          result=msgspec.json.encode(whole).decode()))

    sub = await sync.bus.consume_commands(HOSTNET_KIND, planner)
    try:
        bare = msgspec.structs.replace(SERVED, dhcp=None)
        await sync.apply(SyncNetwork(desired=desired(P1, net=bare), position=1))
        assert "n1" not in network.host.dhcp
        assert await sync.apply_delta(delta(2, PortChange(port_id="p2", port=P2))) is None
        assert sync.pulled_for_delta == 1 and sync.position == 9
        assert {(h.mac, h.ip) for h in network.host.dhcp["n1"].hosts} == {
            (P1.mac, "10.0.0.11"), (P2.mac, "10.0.0.12")}
    finally:
        await sub.cancel()


async def test_a_delta_takes_back_a_network_only_a_spawn_built(setup: Setup) -> None:
    """A spawn builds a network no set has named yet; a delta that names its port gone
    and says the host does not carry the network removes both (regression: the
    network stayed until the next pull)."""
    sync, network, _, _ = setup
    await sync.apply(SyncNetwork(desired=DesiredHostNetwork(), position=1))
    await sync.plug([NET], [P1])
    assert "obrn1" in network.host.devices
    gone = SyncNetworkDelta(position=2, gone_ports=("p1",), ports=(PortChange(port_id="p1"),),
                            networks=(NetworkChange(network_id="n1"),))
    assert await sync.apply_delta(gone) == ("otpp1", "network:n1")
    assert not {"otpp1", "obrn1", "ovxn1"} & set(network.host.devices)
