"""The HostNetwork contract: the recording fake and the pyroute2 driver (in a fresh
network namespace per test) build, report and remove the same things."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import msgspec
import pytest
import uvloop

from hostd.net_fake import FakeHost, FakeHostNetwork
from hostd.net_pyroute2 import Pyroute2HostNetwork
from hostd.network import (
    CapabilityMissing,
    HostNetwork,
    InvalidNetworkSpec,
    UnknownNetwork,
    UnknownPhysicalNetwork,
    bridge_name,
    dhcp_device_name,
    host_side_mac,
    vlan_name,
    vxlan_name,
)
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
from tests.support.netns import (
    in_ns,
    need_netns,
    remove_namespaces,
    sh,
    stop_dnsmasqs,
    unique,
)

PHYSNET, PHYS_BRIDGE, UNDERLAY = "physnet1", "brphys", "192.0.2.1"


class Host:
    """One host under test: its driver, and what an operator may do behind its back."""

    def __init__(self, kind: str, tmp: Path, *, underlay_ip: str | None) -> None:
        self.kind = kind
        self.ns = unique("otc")
        self.state_dir = tmp / self.ns
        self.underlay_ip = underlay_ip
        self.fake_host = FakeHost(bridges=[PHYS_BRIDGE])
        self.net: HostNetwork = FakeHostNetwork(self.fake_host)

    async def start(self) -> None:
        if self.kind == "pyroute2":
            await sh("ip", "netns", "add", self.ns)
            await in_ns(self.ns, "ip", "link", "add", PHYS_BRIDGE, "type", "bridge")
            await in_ns(self.ns, "ip", "link", "set", PHYS_BRIDGE, "up")
        self.net = await self.driver()

    async def driver(self) -> HostNetwork:
        """A new driver object on this host (a hostd (re)start)."""
        mappings = {PHYSNET: PHYS_BRIDGE}
        if self.kind == "fake":
            return FakeHostNetwork(self.fake_host, underlay_ip=self.underlay_ip,
                                   bridge_mappings=mappings)
        return await Pyroute2HostNetwork.open(
            netns=self.ns, underlay_ip=self.underlay_ip, bridge_mappings=mappings,
            state_dir=self.state_dir, dhcp_netns_prefix=f"{self.ns}-d-")

    async def restart(self) -> None:
        await self.net.close()
        self.net = await self.driver()

    async def add_device(self, name: str) -> None:
        """A device someone else made (a veth, as libvirt or an operator would)."""
        if self.kind == "fake":
            self.fake_host.add_device(name, "veth")
        else:
            await in_ns(self.ns, "ip", "link", "add", name, "type", "veth",
                        "peer", "name", unique("peer"))

    async def stop(self) -> None:
        await self.net.close()
        if self.kind == "pyroute2":
            stop_dnsmasqs(self.state_dir)
            remove_namespaces(self.ns)


MakeHost = Callable[..., Awaitable[Host]]


@pytest.fixture(params=["fake", "pyroute2"])
async def make_host(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[MakeHost]:
    """Makes hosts of the parameter's kind; each is torn down (namespaces, dnsmasq)
    at the end, also when the test failed."""
    if request.param == "pyroute2":
        need_netns()
    hosts: list[Host] = []

    async def make(*, underlay_ip: str | None = UNDERLAY) -> Host:
        host = Host(request.param, tmp_path, underlay_ip=underlay_ip)
        hosts.append(host)
        await host.start()
        return host

    try:
        yield make
    finally:
        for host in hosts:
            await host.stop()


@pytest.fixture
async def host(make_host: MakeHost) -> Host:
    return await make_host()


def net_id() -> str:
    return str(uuid.uuid4())


def vxlan_net(network_id: str | None = None, *, vni: int = 1001,
              peers: tuple[str, ...] = (), dhcp: DhcpSpec | None = None) -> NetworkSpec:
    return NetworkSpec(network_id=network_id or net_id(), type="vxlan", segmentation_id=vni,
                       mtu=1450, peers=peers, dhcp=dhcp,
                       subnets=(SubnetSpec(subnet_id="s1", cidr="10.1.0.0/24",
                                           gateway_ip="10.1.0.1"),))


def flat_net(*, dhcp: DhcpSpec | None = None, physnet: str = PHYSNET) -> NetworkSpec:
    return NetworkSpec(network_id=net_id(), type="flat", physical_network=physnet, mtu=1500,
                       dhcp=dhcp, subnets=(SubnetSpec(subnet_id="s1", cidr="10.2.0.0/24",
                                                      gateway_ip="10.2.0.1"),))


def port_on(network: NetworkSpec, mac: str = "fa:16:3e:00:00:05",
            ip: str = "10.1.0.5") -> PortSpec:
    port_id = str(uuid.uuid4())
    return PortSpec(port_id=port_id, network_id=network.network_id, mac=mac, ips=(ip,),
                    device=port_device(port_id))


DHCP = DhcpSpec(mac="fa:16:3e:00:00:02", ips=("10.2.0.2",),
                hosts=(DhcpHost(mac="fa:16:3e:00:00:10", ip="10.2.0.10"),))


def ours(view: HostNetworkView) -> set[str]:
    """The device names in a view other than the test's own furniture."""
    return set(view.devices) - {"lo", PHYS_BRIDGE}


async def test_dhcp_entries_change_one_by_one_and_the_rest_stay(host: Host) -> None:
    """``update_dhcp_hosts`` adds and drops only the entries it is given (a port's own
    id on an entry is not kept); the server keeps running with the others. A network
    whose DHCP this host does not serve is UnknownNetwork, an address outside the DHCP
    subnets InvalidNetworkSpec."""
    spec = flat_net(dhcp=DHCP)
    await host.net.ensure_network(spec)
    new = DhcpHost(mac="fa:16:3e:00:00:01", ip="10.2.0.11", port_id="p11")
    await host.net.update_dhcp_hosts(spec.network_id, [new], [])
    dhcp = (await host.net.inspect()).dhcp[spec.network_id]
    assert dhcp.running and dhcp.hosts == (DhcpHost(mac=new.mac, ip=new.ip), *DHCP.hosts)
    await host.net.update_dhcp_hosts(spec.network_id, [], DHCP.hosts)
    dhcp = (await host.net.inspect()).dhcp[spec.network_id]
    assert dhcp.running and dhcp.hosts == (DhcpHost(mac=new.mac, ip=new.ip),)
    with pytest.raises(InvalidNetworkSpec):
        await host.net.update_dhcp_hosts(spec.network_id, [
            DhcpHost(mac="fa:16:3e:00:00:03", ip="10.9.0.3")], [])
    with pytest.raises(UnknownNetwork):
        await host.net.update_dhcp_hosts("not-here", [new], [])


async def test_capabilities_report_flat_vxlan_and_vlan_or_why_not(host: Host) -> None:
    """The host reports its physical networks, flat and VXLAN, and VLAN or the reason."""
    caps = await host.net.capabilities()
    assert caps.flat and caps.vxlan
    assert caps.physical_networks == (PHYSNET,)
    assert caps.vlan or "802.1Q" in caps.missing["vlan"]


async def test_without_an_underlay_vxlan_is_missing_and_refused(make_host: MakeHost) -> None:
    """A host with no tunnel endpoint says so and builds nothing for a VXLAN network."""
    host = await make_host(underlay_ip=None)
    caps = await host.net.capabilities()
    assert not caps.vxlan and "underlay" in caps.missing["vxlan"]
    with pytest.raises(CapabilityMissing):
        await host.net.ensure_network(vxlan_net())
    assert ours(await host.net.inspect()) == set()


async def test_vxlan_network_is_a_bridge_and_a_vxlan_device_with_its_vni(host: Host) -> None:
    """ensure_network builds the bridge and the VXLAN device on it, up, at the MTU,
    flooding to the peers; doing it again changes nothing (same ifindexes)."""
    spec = vxlan_net(peers=("192.0.2.2", "192.0.2.3"))
    await host.net.ensure_network(spec)
    first = await host.net.inspect()
    bridge = first.devices[bridge_name(spec.network_id)]
    vxlan = first.devices[vxlan_name(spec.network_id)]
    assert (bridge.kind, bridge.up, bridge.mtu) == ("bridge", True, 1450)
    assert (vxlan.kind, vxlan.vni, vxlan.master, vxlan.up, vxlan.mtu) == (
        "vxlan", 1001, bridge.name, True, 1450)
    assert vxlan.peers == ("192.0.2.2", "192.0.2.3")
    await host.net.ensure_network(spec)
    assert await host.net.inspect() == first


async def test_peers_follow_hosts_joining_and_leaving(host: Host) -> None:
    """set_peers and a new spec's peers replace the flood list exactly."""
    spec = vxlan_net(peers=("192.0.2.2",))
    await host.net.ensure_network(spec)
    await host.net.set_peers(spec.network_id, ["192.0.2.3", "192.0.2.4"])
    view = await host.net.inspect()
    assert view.devices[vxlan_name(spec.network_id)].peers == ("192.0.2.3", "192.0.2.4")
    await host.net.ensure_network(msgspec.structs.replace(spec, peers=()))
    view = await host.net.inspect()
    assert view.devices[vxlan_name(spec.network_id)].peers == ()


async def test_a_changed_vni_replaces_the_vxlan_device(host: Host) -> None:
    """A VNI cannot change in place: the device is made again with the new one."""
    spec = vxlan_net()
    await host.net.ensure_network(spec)
    await host.net.ensure_network(msgspec.structs.replace(spec, segmentation_id=2002))
    assert (await host.net.inspect()).devices[vxlan_name(spec.network_id)].vni == 2002


async def test_flat_dhcp_serves_static_entries_on_the_physnet_bridge(host: Host) -> None:
    """A flat network's DHCP server hangs on the physnet bridge, runs with the DHCP
    port's MAC and address, and serves exactly the entries given, updated in place."""
    spec = flat_net(dhcp=DHCP)
    await host.net.ensure_network(spec)
    view = await host.net.inspect()
    assert view.devices[dhcp_device_name(spec.network_id)].master == PHYS_BRIDGE
    dhcp = view.dhcp[spec.network_id]
    assert (dhcp.running, dhcp.mac, dhcp.ips, dhcp.hosts) == (
        True, DHCP.mac, DHCP.ips, DHCP.hosts)
    more = (*DHCP.hosts, DhcpHost(mac="fa:16:3e:00:00:01", ip="10.2.0.11"))
    await host.net.ensure_network(msgspec.structs.replace(
        spec, dhcp=msgspec.structs.replace(DHCP, hosts=more)))
    dhcp = (await host.net.inspect()).dhcp[spec.network_id]
    assert dhcp.running and [h.ip for h in dhcp.hosts] == ["10.2.0.11", "10.2.0.10"]
    await host.net.ensure_network(msgspec.structs.replace(spec, dhcp=None))
    view = await host.net.inspect()
    assert spec.network_id not in view.dhcp
    assert dhcp_device_name(spec.network_id) not in view.devices


async def test_a_port_is_a_tap_on_the_network_bridge(host: Host) -> None:
    """ensure_port makes the tap, on the bridge, up, at the network's MTU, with the
    host-side MAC; again changes nothing; remove_port deletes it, twice is fine."""
    spec = vxlan_net()
    port = port_on(spec)
    await host.net.ensure_network(spec)
    await host.net.ensure_port(port)
    first = await host.net.inspect()
    tap = first.devices[port.device]
    assert (tap.kind, tap.master, tap.up, tap.mtu, tap.mac) == (
        "tap", bridge_name(spec.network_id), True, 1450, host_side_mac(port.mac))
    await host.net.ensure_port(port)
    assert await host.net.inspect() == first
    await host.net.remove_port(port.port_id)
    await host.net.remove_port(port.port_id)
    assert port.device not in (await host.net.inspect()).devices


async def test_a_device_made_by_someone_else_is_plugged_as_it_is(host: Host) -> None:
    """A port whose device exists (libvirt's tap, a test's veth) is attached, not remade."""
    spec = flat_net()
    port = port_on(spec, ip="10.2.0.5")
    await host.net.ensure_network(spec)
    await host.add_device(port.device)
    index = (await host.net.inspect()).devices[port.device].index
    await host.net.ensure_port(port)
    device = (await host.net.inspect()).devices[port.device]
    assert (device.kind, device.index, device.master) == ("veth", index, PHYS_BRIDGE)


async def test_a_port_on_a_network_not_built_here_is_refused(host: Host) -> None:
    """ensure_port before ensure_network raises UnknownNetwork and makes no device."""
    port = port_on(vxlan_net())
    with pytest.raises(UnknownNetwork):
        await host.net.ensure_port(port)
    assert port.device not in (await host.net.inspect()).devices


@pytest.mark.parametrize("spec", [
    NetworkSpec(network_id="n-novni", type="vxlan"),
    NetworkSpec(network_id="n-nophys", type="flat"),
    NetworkSpec(network_id="n-mtu", type="vxlan", segmentation_id=5, mtu=20),
    NetworkSpec(network_id="n-dhcp", type="flat", physical_network=PHYSNET,
                subnets=(SubnetSpec(subnet_id="s", cidr="10.3.0.0/24"),),
                dhcp=DhcpSpec(mac="fa:16:3e:00:00:02", ips=("10.9.9.9",))),
], ids=["vxlan-without-vni", "flat-without-physnet", "tiny-mtu", "dhcp-outside-subnet"])
async def test_an_impossible_spec_is_refused_and_builds_nothing(
        host: Host, spec: NetworkSpec) -> None:
    """InvalidNetworkSpec, and the host is as it was."""
    before = ours(await host.net.inspect())
    with pytest.raises(InvalidNetworkSpec):
        await host.net.ensure_network(spec)
    assert ours(await host.net.inspect()) == before


async def test_a_port_device_name_must_be_ours(host: Host) -> None:
    """A device name without Orrery's tap prefix (or too long) is refused."""
    spec = flat_net()
    await host.net.ensure_network(spec)
    port = msgspec.structs.replace(port_on(spec), device="eth-guest-0")
    with pytest.raises(InvalidNetworkSpec):
        await host.net.ensure_port(port)


async def test_an_unmapped_physical_network_is_refused(host: Host) -> None:
    """A flat network on a physnet this host has no bridge for: UnknownPhysicalNetwork."""
    with pytest.raises(UnknownPhysicalNetwork):
        await host.net.ensure_network(flat_net(physnet="physnet9"))


async def test_remove_network_takes_its_devices_dhcp_and_ports(host: Host) -> None:
    """Everything the network had goes; removing it again is no error."""
    spec = vxlan_net(dhcp=DhcpSpec(mac="fa:16:3e:00:00:02", ips=("10.1.0.2",)))
    port = port_on(spec)
    await host.net.ensure_network(spec)
    await host.net.ensure_port(port)
    await host.net.remove_network(spec.network_id)
    await host.net.remove_network(spec.network_id)
    view = await host.net.inspect()
    assert ours(view) == set() and view.dhcp == {}


async def test_vlan_network_is_a_subinterface_where_the_kernel_has_802_1q(host: Host) -> None:
    """Where the kernel has 802.1Q (the fake's does) the subinterface is enslaved to the
    network's bridge; where it lacks it (this machine's and CI's) a VLAN network is
    refused with CapabilityMissing naming the reason, and nothing is built."""
    spec = NetworkSpec(network_id=net_id(), type="vlan", physical_network=PHYSNET,
                       segmentation_id=101)
    caps = await host.net.capabilities()
    if caps.vlan:
        await host.net.ensure_network(spec)
        view = await host.net.inspect()
        assert view.devices[vlan_name(spec.network_id)].master == bridge_name(spec.network_id)
        return
    assert "802.1Q" in caps.missing["vlan"]
    with pytest.raises(CapabilityMissing, match=r"802\.1Q"):
        await host.net.ensure_network(spec)
    assert ours(await host.net.inspect()) == set()


@pytest.mark.parametrize("make_host", ["fake"], indirect=True)
async def test_vlan_where_the_kernel_lacks_it_is_refused(host: Host) -> None:
    """A host told its kernel lacks 802.1Q refuses a VLAN network with CapabilityMissing
    naming the reason and builds nothing (the fake: a real kernel cannot be told)."""
    host.fake_host.kernel_lacks = frozenset({"vlan"})
    spec = NetworkSpec(network_id=net_id(), type="vlan", physical_network=PHYSNET,
                       segmentation_id=101)
    with pytest.raises(CapabilityMissing, match=r"802\.1Q"):
        await host.net.ensure_network(spec)
    assert ours(await host.net.inspect()) == set()


async def test_reconcile_removes_strays_and_keeps_foreign_devices(host: Host) -> None:
    """What is Orrery's and not desired goes (devices and DHCP servers); what is not
    Orrery's stays; what is desired is built."""
    keep, drop = vxlan_net(), flat_net(dhcp=DHCP)
    kept_port, dropped_port = port_on(keep), port_on(keep, mac="fa:16:3e:00:00:06")
    for step in (host.net.ensure_network(keep), host.net.ensure_network(drop),
                 host.net.ensure_port(kept_port), host.net.ensure_port(dropped_port)):
        await step
    await host.add_device("eth-foreign")
    await host.add_device("otpstray00001")
    removed = await host.net.reconcile(DesiredHostNetwork(networks=(keep,), ports=(kept_port,)))
    assert set(removed) == {f"dhcp:{drop.network_id}", dropped_port.device, "otpstray00001"}
    view = await host.net.inspect()
    assert {"eth-foreign", PHYS_BRIDGE, kept_port.device, bridge_name(keep.network_id),
            vxlan_name(keep.network_id)} <= set(view.devices)
    assert {dropped_port.device, "otpstray00001", dhcp_device_name(drop.network_id)
            }.isdisjoint(view.devices)
    assert view.dhcp == {}


async def test_a_restarted_driver_reconciling_the_same_set_changes_nothing(host: Host) -> None:
    """A new driver object (hostd restart) reconciling what is there removes nothing and
    keeps every device (same ifindexes) and DHCP server; ports plug into it again."""
    spec = vxlan_net(peers=("192.0.2.9",), dhcp=DhcpSpec(mac="fa:16:3e:00:00:02",
                                                         ips=("10.1.0.2",)))
    port = port_on(spec)
    desired = DesiredHostNetwork(networks=(spec,), ports=(port,))
    await host.net.reconcile(desired)
    before = await host.net.inspect()
    await host.restart()
    assert await host.net.reconcile(desired) == ()
    assert await host.net.inspect() == before
    await host.net.remove_port(port.port_id)
    assert port.device not in (await host.net.inspect()).devices


async def test_reconcile_builds_the_rest_when_one_network_fails(host: Host) -> None:
    """A network that cannot be built is reported after the others are built."""
    good, bad = vxlan_net(), flat_net(physnet="physnet9")
    with pytest.raises(UnknownPhysicalNetwork):
        await host.net.reconcile(DesiredHostNetwork(networks=(bad, good)))
    assert bridge_name(good.network_id) in (await host.net.inspect()).devices


def test_the_pyroute2_driver_runs_on_uvloop(tmp_path: Path) -> None:
    """Regression: pyroute2's AsyncIPRoute cannot open netlink on uvloop, which our
    processes run on; the driver must build a network there all the same."""
    need_netns()
    host = Host("pyroute2", tmp_path, underlay_ip=UNDERLAY)

    async def build() -> HostNetworkView:
        await host.start()
        try:
            spec = vxlan_net()
            await host.net.ensure_network(spec)
            return await host.net.inspect()
        finally:
            await host.stop()

    view = uvloop.run(build())
    assert any(d.kind == "vxlan" for d in view.devices.values())
