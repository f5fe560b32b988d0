"""The real data plane: two hosts (namespaces joined by a veth underlay) each run the
pyroute2 driver; guests (namespaces whose veth stands in for the instance's tap) get
their addresses by DHCP from the networks' dnsmasq and talk over VXLAN.

Network one (VNI 101) spans both hosts, its DHCP served from host A; network two
(VNI 102) lives on host B with the same subnet, so isolation is not a routing accident.
"""

from __future__ import annotations

import stat
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hostd.net_pyroute2 import Pyroute2HostNetwork
from schemas.hostnet import (
    DesiredHostNetwork,
    DhcpHost,
    DhcpSpec,
    HostNetworkView,
    NetworkSpec,
    PortSpec,
    SubnetSpec,
    port_device,
)
from tests.support.netns import in_ns, need_netns, remove_namespaces, sh, stop_dnsmasqs

pytestmark = pytest.mark.timeout(180)

CIDR, GATEWAY = "10.10.0.0/24", "10.10.0.1"
UNDERLAY = {"a": "192.0.2.1", "b": "192.0.2.2"}
#: udhcpc's hook: apply the lease and print it, so the test sees what DHCP gave.
DHCP_SCRIPT = """#!/bin/sh
if [ "$1" = bound ]; then
  ip addr add "$ip/$mask" dev "$interface"
  echo "LEASE ip=$ip mask=$mask router=$router mtu=$mtu"
fi
"""


@dataclass
class Guest:
    """A guest namespace and the port its veth stands in for."""

    ns: str
    host: str
    port: PortSpec


@dataclass
class World:
    """Two hosts, two networks, three guests, and the drivers running the hosts."""

    prefix: str
    state: Path
    script: Path
    nets: dict[str, Pyroute2HostNetwork] = field(default_factory=dict)
    desired: dict[str, DesiredHostNetwork] = field(default_factory=dict)
    guests: dict[str, Guest] = field(default_factory=dict)

    def host_ns(self, host: str) -> str:
        return f"{self.prefix}{host}"

    async def driver(self, host: str) -> Pyroute2HostNetwork:
        """A new driver object for ``host`` (a hostd start)."""
        return await Pyroute2HostNetwork.open(
            netns=self.host_ns(host), underlay_ip=UNDERLAY[host],
            state_dir=self.state / host, dhcp_netns_prefix=f"{self.host_ns(host)}-d-")

    async def dhcp(self, guest: str) -> dict[str, str]:
        """Run udhcpc in the guest; the lease it got."""
        out = await in_ns(self.guests[guest].ns, "udhcpc", "-i", "eth0", "-f", "-q", "-n",
                          "-O", "mtu", "-t", "5", "-T", "2", "-s", str(self.script),
                          timeout=60)
        line = next(ln for ln in out.splitlines() if ln.startswith("LEASE "))
        return dict(kv.split("=", 1) for kv in line.split()[1:])

    async def pings(self, guest: str, address: str, *, within: int = 6) -> bool:
        """Whether the guest gets echo replies from ``address`` within ``within`` seconds
        (a lower bound for the replies that must not come: they never do)."""
        out = await in_ns(self.guests[guest].ns, "busybox", "ping", "-c", "2", "-w",
                          str(within), address, check=False)
        return " 0% packet loss" in out


def make_port(network_id: str, mac: str, ip: str) -> PortSpec:
    port_id = str(uuid.uuid4())
    return PortSpec(port_id=port_id, network_id=network_id, mac=mac, ips=(ip,),
                    device=port_device(port_id))


def network(network_id: str, vni: int, peers: tuple[str, ...],
            dhcp: DhcpSpec | None) -> NetworkSpec:
    return NetworkSpec(network_id=network_id, type="vxlan", segmentation_id=vni, mtu=1450,
                       peers=peers, dhcp=dhcp,
                       subnets=(SubnetSpec(subnet_id="s", cidr=CIDR, gateway_ip=GATEWAY),))


def dhcp_for(ports: list[PortSpec], mac: str, ip: str) -> DhcpSpec:
    return DhcpSpec(mac=mac, ips=(ip,),
                    hosts=tuple(DhcpHost(mac=p.mac, ip=p.ips[0]) for p in ports))


async def plug_guest(world: World, name: str, host: str, port: PortSpec) -> None:
    """A guest namespace whose eth0 (the port's MAC) is the far end of the port's device."""
    guest = Guest(ns=f"{world.prefix}{name}", host=host, port=port)
    await sh("ip", "netns", "add", guest.ns)
    await in_ns(guest.ns, "ip", "link", "set", "lo", "up")
    await in_ns(world.host_ns(host), "ip", "link", "add", port.device, "type", "veth",
                "peer", "name", "eth0", "netns", guest.ns)
    await in_ns(guest.ns, "ip", "link", "set", "eth0", "address", port.mac, "mtu", "1450", "up")
    world.guests[name] = guest
    await world.nets[host].ensure_port(port)


async def build(world: World) -> None:
    """Hosts joined by the underlay, both networks, three guests plugged."""
    for host in UNDERLAY:
        await sh("ip", "netns", "add", world.host_ns(host))
        await in_ns(world.host_ns(host), "ip", "link", "set", "lo", "up")
    await in_ns(world.host_ns("a"), "ip", "link", "add", "ul0", "type", "veth",
                "peer", "name", "ul0", "netns", world.host_ns("b"))
    for host, ip in UNDERLAY.items():
        await in_ns(world.host_ns(host), "ip", "addr", "add", f"{ip}/24", "dev", "ul0")
        await in_ns(world.host_ns(host), "ip", "link", "set", "ul0", "up")
        world.nets[host] = await world.driver(host)
    one, two = str(uuid.uuid4()), str(uuid.uuid4())
    g1 = make_port(one, "fa:16:3e:01:00:11", "10.10.0.11")
    g2 = make_port(one, "fa:16:3e:01:00:12", "10.10.0.12")
    g3 = make_port(two, "fa:16:3e:02:00:13", "10.10.0.13")
    one_a = network(one, 101, (UNDERLAY["b"],), dhcp_for([g1, g2], "fa:16:3e:01:00:02",
                                                         "10.10.0.2"))
    one_b = network(one, 101, (UNDERLAY["a"],), None)
    two_b = network(two, 102, (), dhcp_for([g3], "fa:16:3e:02:00:02", "10.10.0.2"))
    world.desired = {"a": DesiredHostNetwork(networks=(one_a,), ports=(g1,)),
                     "b": DesiredHostNetwork(networks=(one_b, two_b), ports=(g2, g3))}
    for host, desired in world.desired.items():
        for spec in desired.networks:
            await world.nets[host].ensure_network(spec)
    await plug_guest(world, "g1", "a", g1)
    await plug_guest(world, "g2", "b", g2)
    await plug_guest(world, "g3", "b", g3)


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    """The built world; every namespace, link and dnsmasq is gone afterwards, also when
    building or the test failed."""
    need_netns("udhcpc", "busybox")
    script = tmp_path / "udhcpc.sh"
    script.write_text(DHCP_SCRIPT)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    built = World(prefix=f"odp{uuid.uuid4().hex[:6]}", state=tmp_path / "state", script=script)
    try:
        await build(built)
        yield built
    finally:
        for net in built.nets.values():
            await net.close()
        stop_dnsmasqs(built.state / "a")
        stop_dnsmasqs(built.state / "b")
        remove_namespaces(built.prefix)


async def leases(world: World) -> dict[str, str]:
    return {name: (await world.dhcp(name))["ip"] for name in world.guests}


def indexes(view: HostNetworkView) -> dict[str, int]:
    return {name: d.index for name, d in view.devices.items()}


async def test_each_guest_gets_its_port_address_by_dhcp(world: World) -> None:
    """The address DHCP hands a guest is its port's, over the tunnel for the guest on
    the host that does not serve DHCP, with the subnet's prefix and the network's MTU."""
    lease = await world.dhcp("g2")
    assert (lease["ip"], lease["mask"], lease["router"], lease["mtu"]) == (
        "10.10.0.12", "24", GATEWAY, "1450")
    got = await leases(world)
    assert got == {name: g.port.ips[0] for name, g in world.guests.items()}


async def test_guests_of_one_vxlan_network_on_two_hosts_ping(world: World) -> None:
    """g1 on host A and g2 on host B share network one: they reach each other."""
    await leases(world)
    assert await world.pings("g1", "10.10.0.12")
    assert await world.pings("g2", "10.10.0.11")


async def test_guests_on_different_networks_cannot_reach_each_other(world: World) -> None:
    """g3 (network two) shares host B and the subnet with g2 (network one), and still
    reaches neither g2 nor g1; g1 does not reach g3."""
    await leases(world)
    assert await world.pings("g1", "10.10.0.12")
    assert not await world.pings("g3", "10.10.0.12", within=3)
    assert not await world.pings("g3", "10.10.0.11", within=3)
    assert not await world.pings("g1", "10.10.0.13", within=3)


async def test_a_hostd_restart_leaves_the_data_plane_as_it_was(world: World) -> None:
    """New driver objects reconciling the same desired sets remove nothing, keep every
    device (same ifindexes) and DHCP server, and the guests still ping and renew."""
    await leases(world)
    before = {host: await net.inspect() for host, net in world.nets.items()}
    for host in list(world.nets):
        await world.nets[host].close()
        world.nets[host] = await world.driver(host)
        assert await world.nets[host].reconcile(world.desired[host]) == ()
    after = {host: await net.inspect() for host, net in world.nets.items()}
    assert {h: indexes(v) for h, v in after.items()} == {
        h: indexes(v) for h, v in before.items()}
    assert after == before
    assert await world.pings("g1", "10.10.0.12")
    assert (await world.dhcp("g2"))["ip"] == "10.10.0.12"


async def test_a_removed_port_loses_connectivity(world: World) -> None:
    """After remove_port, the guest behind it is unreachable, the others are not."""
    await leases(world)
    assert await world.pings("g1", "10.10.0.12")
    await world.nets["b"].remove_port(world.guests["g2"].port.port_id)
    assert not await world.pings("g1", "10.10.0.12", within=3)
    view = await world.nets["b"].inspect()
    assert world.guests["g2"].port.device not in view.devices
    assert world.guests["g3"].port.device in view.devices
