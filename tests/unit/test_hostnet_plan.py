"""The host network plan (actors.hostnet), pure: which networks and ports a host carries,
who serves each network's DHCP, and whom a host floods a VXLAN network's traffic to."""

from __future__ import annotations

import msgspec

from actors.hostnet import (
    HostInfo,
    NetworkFacts,
    NetworkLite,
    carriers,
    delta_for,
    desired_for,
    dhcp_server,
    network_head,
    network_spec,
    peers,
)
from actors.network import DHCP_OWNER, dhcp_port_id
from actors.network_views import NetworkView, PortView, SubnetView
from actors.port import FixedIp

NET = "5b8e4c1a-0000-4000-8000-000000000001"
SUBNET = "5b8e4c1a-0000-4000-8000-0000000000s1"
STAMP = "2026-01-01T00:00:00Z"


def network(net_id: str = NET, kind: str = "vxlan") -> NetworkView:
    return NetworkView(id=net_id, project_id="p", name="n", description="",
                       admin_state_up=True, shared=False, network_type=kind,
                       physical_network=None if kind == "vxlan" else "physnet1",
                       segmentation_id=100, mtu=1450, created_at=STAMP, updated_at=STAMP,
                       revision=0)


def subnet(dhcp: bool = True) -> SubnetView:
    return SubnetView(id=SUBNET, network_id=NET, project_id="p", name="", description="",
                      cidr="10.0.0.0/24", gateway_ip="10.0.0.1", enable_dhcp=dhcp,
                      pools=[], dns_nameservers=["192.0.2.53"], host_routes=[],
                      created_at=STAMP, updated_at=STAMP, revision=0)


def port(port_id: str, n: int, host: str = "", owner: str = "compute:nova") -> PortView:
    return PortView(id=port_id, network_id=NET, project_id="p", name="", description="",
                    mac_address=f"fa:16:3e:00:00:{n:02x}",
                    fixed_ips=[FixedIp(subnet_id=SUBNET, ip_address=f"10.0.0.{n}")],
                    device_id="d" if host else "", device_owner=owner, admin_state_up=True,
                    status="DOWN", host_id=host, created_at=STAMP, updated_at=STAMP,
                    revision=0)


DHCP_PORT = port(dhcp_port_id(NET), 2, owner=DHCP_OWNER)


def facts(*ports: PortView, dhcp: bool = True, kind: str = "vxlan") -> NetworkFacts:
    return NetworkFacts(network=network(kind=kind), subnets=(subnet(dhcp),),
                        ports=(DHCP_PORT, *ports))


def hosts(*names: str, down: tuple[str, ...] = ()) -> dict[str, HostInfo]:
    return {h: HostInfo(id=h, up=h not in down, underlay_ip=f"192.0.2.{i + 1}")
            for i, h in enumerate(names)}


def test_a_host_carries_the_networks_of_its_bound_ports_and_plugs_only_those() -> None:
    """h1 has p1 bound: it carries the network and plugs p1 (its tap named after the
    port); p2 is on h2, p3 unbound, the DHCP port never a tap; h3 carries nothing."""
    f = facts(port("p1", 11, "h1"), port("p2", 12, "h2"), port("p3", 13))
    all_hosts = hosts("h1", "h2", "h3")
    d1 = desired_for("h1", [f], all_hosts)
    assert [n.network_id for n in d1.networks] == [NET]
    assert [(p.port_id, p.mac, p.ips, p.device) for p in d1.ports] == [
        ("p1", "fa:16:3e:00:00:0b", ("10.0.0.11",), "otpp1")]
    assert desired_for("h3", [f], all_hosts).networks == ()


def test_exactly_one_carrier_serves_dhcp_with_an_entry_for_every_port() -> None:
    """Of the hosts carrying the network exactly one gets its DHCP: the DHCP port's MAC
    and address, a static entry for every other port (bound or not), the port id."""
    f = facts(port("p1", 11, "h1"), port("p2", 12, "h2"), port("p3", 13))
    all_hosts = hosts("h1", "h2")
    specs = [desired_for(h, [f], all_hosts).networks[0] for h in ("h1", "h2")]
    served = [s.dhcp for s in specs if s.dhcp is not None]
    assert len(served) == 1
    (dhcp,) = served
    assert (dhcp.mac, dhcp.ips, dhcp.port_id) == (DHCP_PORT.mac_address, ("10.0.0.2",),
                                                  DHCP_PORT.id)
    assert {(h.mac, h.ip) for h in dhcp.hosts} == {
        ("fa:16:3e:00:00:0b", "10.0.0.11"), ("fa:16:3e:00:00:0c", "10.0.0.12"),
        ("fa:16:3e:00:00:0d", "10.0.0.13")}


def test_dhcp_moves_off_a_down_host_and_back_when_it_is_up() -> None:
    """When the serving host goes down another carrier serves; when it comes back the
    choice is the first one again (a stable draw, not an order of arrival)."""
    f = facts(port("p1", 11, "h1"), port("p2", 12, "h2"), port("p3", 13, "h3"))
    first = dhcp_server(f, hosts("h1", "h2", "h3"))
    assert first is not None
    moved = dhcp_server(f, hosts("h1", "h2", "h3", down=(first,)))
    assert moved not in (None, first)
    assert dhcp_server(f, hosts("h1", "h2", "h3")) == first


def test_with_every_carrier_down_one_of_them_keeps_serving() -> None:
    """A down hostd may still have its guests and dnsmasq running: with no carrier up,
    DHCP stays with one of the carriers rather than nowhere."""
    f = facts(port("p1", 11, "h1"), port("p2", 12, "h2"))
    assert dhcp_server(f, hosts("h1", "h2", down=("h1", "h2"))) in ("h1", "h2")


def test_a_host_joining_moves_dhcp_only_for_the_networks_it_wins() -> None:
    """Rendezvous hashing: adding a carrier keeps each network's DHCP where it was
    unless the new host wins that network, and over many networks some move, most not."""
    moved = 0
    for i in range(200):
        net_id = f"5b8e4c1a-0000-4000-8000-{i:012d}"
        f1 = NetworkFacts(network=network(net_id), subnets=(subnet(),),
                          ports=(DHCP_PORT, port("p1", 11, "h1"), port("p2", 12, "h2")))
        f2 = NetworkFacts(network=f1.network, subnets=f1.subnets,
                          ports=(*f1.ports, port("p3", 13, "h3")))
        before, after = dhcp_server(f1, hosts("h1", "h2", "h3")), \
            dhcp_server(f2, hosts("h1", "h2", "h3"))
        assert after in (before, "h3")
        moved += after != before
    assert 30 < moved < 110  # about a third


def test_no_dhcp_without_a_dhcp_enabled_subnet() -> None:
    f = facts(port("p1", 11, "h1"), dhcp=False)
    assert dhcp_server(f, hosts("h1")) is None
    assert desired_for("h1", [f], hosts("h1")).networks[0].dhcp is None


def test_peers_are_the_other_carriers_underlay_addresses_down_ones_included() -> None:
    """h1 floods to h2 and h3 (h3's hostd is silent, its guests may not be), never to
    itself or to a host without a port on the network; flat networks have no peers."""
    f = facts(port("p1", 11, "h1"), port("p2", 12, "h2"), port("p3", 13, "h3"))
    all_hosts = hosts("h1", "h2", "h3", "h4", down=("h3",))
    assert peers(f, "h1", all_hosts) == ("192.0.2.2", "192.0.2.3")
    assert desired_for("h1", [f], all_hosts).networks[0].peers == ("192.0.2.2", "192.0.2.3")
    flat = facts(port("p1", 11, "h1"), port("p2", 12, "h2"), kind="flat")
    assert peers(flat, "h1", all_hosts) == ()


def lite(*ports: PortView) -> NetworkLite:
    f = facts(*ports)
    return NetworkLite(network=f.network, subnets=f.subnets, carriers=frozenset(carriers(f)),
                       dhcp_port=DHCP_PORT)


def test_a_delta_carries_only_the_touched_ports_and_their_dhcp_entries() -> None:
    """Of a network with many ports, a delta about p2 (bound to h2) tells h2 to plug p2
    and the DHCP server only p2's entry; the other ports are in no delta, and the
    network comes without its static entries. A port gone from the views is unplugged
    and its entries dropped."""
    many = [port(f"p{n}", n, "h1" if n % 2 else "h2") for n in range(10, 60)]
    view = lite(*many)
    all_hosts = hosts("h1", "h2")
    p2 = next(p for p in many if p.id == "p11")
    server = dhcp_server(view, all_hosts)
    for host in ("h1", "h2"):
        networks, ports = delta_for(host, {NET: view}, [p2], ["gone"], all_hosts)
        (change,) = networks
        assert change.spec is not None and change.spec.peers
        assert [(c.port_id, c.port is not None) for c in ports] == [
            ("gone", False), ("p11", host == "h1")]
        if host == server:
            assert change.spec.dhcp is not None and change.spec.dhcp.hosts == ()
            assert [(c.port_id, [(h.mac, h.ip) for h in c.hosts]) for c in change.dhcp] == [
                ("p11", [("fa:16:3e:00:00:0b", "10.0.0.11")]), ("gone", [])]
        else:
            assert change.spec.dhcp is None and change.dhcp == ()


def test_a_delta_takes_a_network_from_a_host_that_no_longer_carries_it() -> None:
    """A host outside the network's carriers (or a network the views lost) is told the
    network is gone."""
    view = lite(port("p1", 11, "h1"))
    networks, _ = delta_for("h2", {NET: view, "lost": None}, [], [], hosts("h1", "h2"))
    assert [(n.network_id, n.spec) for n in networks] == [(NET, None), ("lost", None)]


def test_the_head_of_a_network_is_its_spec_without_static_entries() -> None:
    """What a delta sends of a network equals the full spec but for DHCP's entries."""
    ports = (port("p1", 11, "h1"), port("p2", 12, "h2"))
    all_hosts = hosts("h1", "h2")
    for host in ("h1", "h2"):
        full = network_spec(facts(*ports), host, all_hosts)
        head = network_head(lite(*ports), host, all_hosts)
        assert head == (full if full.dhcp is None else msgspec.structs.replace(
            full, dhcp=msgspec.structs.replace(full.dhcp, hosts=())))
