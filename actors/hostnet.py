"""What each host's network should be, from the log's networking and hosts views: pure.

A host carries a network when a port of it (other than the network's own ``network:*``
ports) is bound to the host; it then has the network's segment and plugs each of its
ports there. On a VXLAN network its flood list (``peers``) is the underlay address of
every other host that carries the network, down ones included: a host whose hostd is
silent may still run guests (data-plane independence), and flooding to a dead endpoint
costs little, while dropping it would cut live guests off.

DHCP: exactly one host serves a network (as Neutron's default ``dhcp_agents_per_network
= 1``), chosen by rendezvous hashing of (network, host) among the up hosts that carry
it; when none of them is up, among all that do. So the choice is stable (a host joining
moves a network's DHCP only if it wins that network's draw, about 1 in n), spreads
networks over hosts, and moves off a host that goes down (Neutron's
``allow_automatic_dhcp_failover``). The DHCP server speaks with the network's DHCP port's
MAC and addresses wherever it runs, so a move is invisible to the guests. It serves a
static entry for every port of the network, bound or not, as Neutron's DHCP agent does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import cast

import msgspec

from actors.network import DHCP_OWNER
from actors.network_views import NetworkView, PortView, SubnetView
from schemas.hostnet import (
    DesiredHostNetwork,
    DhcpChange,
    DhcpHost,
    DhcpSpec,
    NetworkChange,
    NetworkSpec,
    NetworkType,
    PortChange,
    PortSpec,
    SubnetSpec,
    port_device,
)

#: device owners of the ports a network owns itself (its DHCP port): they are never
#: plugged as a guest's tap and do not make a host carry the network
NETWORK_OWNED = "network:"
__all__ = ["DHCP_OWNER", "HostInfo", "NetworkFacts", "NetworkLite", "carriers", "delta_for",
           "desired_for", "dhcp_server", "network_head", "peers", "segment_spec"]


class HostInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What the planner needs of a host: whether it is up, and its tunnel endpoint."""

    id: str
    up: bool
    underlay_ip: str | None = None


class NetworkFacts(msgspec.Struct, frozen=True, kw_only=True):
    """One network as the views have it: itself, its subnets and all its ports."""

    network: NetworkView
    subnets: tuple[SubnetView, ...] = ()
    ports: tuple[PortView, ...] = ()


def is_guest_port(port: PortView) -> bool:
    """Whether the port is an instance's (or a user's), not the network's own."""
    return not port.device_owner.startswith(NETWORK_OWNED)


class NetworkLite(msgspec.Struct, frozen=True, kw_only=True):
    """One network without its ports: what a delta needs (`delta_for`). ``carriers`` are
    the hosts a guest port of it is bound to (the ``net_carriers`` view)."""

    network: NetworkView
    subnets: tuple[SubnetView, ...] = ()
    carriers: frozenset[str] = frozenset()
    dhcp_port: PortView | None = None


def carriers(facts: NetworkFacts) -> set[str]:
    """The hosts a guest port of the network is bound to."""
    return {p.host_id for p in facts.ports if p.host_id and is_guest_port(p)}


def _draw(network_id: str, host: str) -> bytes:
    return hashlib.blake2b(f"{network_id}/{host}".encode(), digest_size=8).digest()


def _dhcp_server(network_id: str, subnets: Iterable[SubnetView], bound: Iterable[str],
                 hosts: Mapping[str, HostInfo]) -> str | None:
    if not any(s.enable_dhcp for s in subnets):
        return None
    bound = set(bound)
    up = [h for h in bound if h in hosts and hosts[h].up]
    candidates = up or sorted(bound)
    if not candidates:
        return None
    return max(candidates, key=lambda h: _draw(network_id, h))


def dhcp_server(facts: NetworkFacts | NetworkLite,
                hosts: Mapping[str, HostInfo]) -> str | None:
    """The host that serves the network's DHCP (None: no host carries it, or it has no
    DHCP-enabled subnet)."""
    bound = facts.carriers if isinstance(facts, NetworkLite) else carriers(facts)
    return _dhcp_server(facts.network.id, facts.subnets, bound, hosts)


def _peers(network: NetworkView, bound: Iterable[str], host: str,
           hosts: Mapping[str, HostInfo]) -> tuple[str, ...]:
    if network.network_type != "vxlan":
        return ()
    mine = hosts[host].underlay_ip if host in hosts else None
    found = {hosts[h].underlay_ip for h in bound if h != host and h in hosts}
    return tuple(sorted(ip for ip in found if ip and ip != mine))


def peers(facts: NetworkFacts, host: str, hosts: Mapping[str, HostInfo]) -> tuple[str, ...]:
    """The underlay addresses ``host`` floods the network's traffic to (VXLAN only)."""
    return _peers(facts.network, carriers(facts), host, hosts)


def _served(subnets: Iterable[SubnetView]) -> set[str]:
    return {s.id for s in subnets if s.enable_dhcp}


def dhcp_head(subnets: Iterable[SubnetView], server: PortView | None) -> DhcpSpec | None:
    """The network's DHCP server without its static entries: its DHCP port's MAC and
    addresses (None: no DHCP port, or no DHCP-enabled subnet)."""
    served = _served(subnets)
    if server is None or not served:
        return None
    ips = tuple(f.ip_address for f in server.fixed_ips if f.subnet_id in served)
    if not ips:
        return None
    return DhcpSpec(mac=server.mac_address, ips=ips, port_id=server.id)


def dhcp_entries(port: PortView, served: set[str]) -> tuple[DhcpHost, ...]:
    """The static DHCP entries of one port: one per address in a served subnet."""
    return tuple(DhcpHost(mac=port.mac_address, ip=f.ip_address, port_id=port.id)
                 for f in port.fixed_ips if f.subnet_id in served)


def dhcp_spec(facts: NetworkFacts) -> DhcpSpec | None:
    """The DHCP server of the network: its DHCP port's MAC and addresses, and a static
    entry for every other port's address in a DHCP-enabled subnet (None: no DHCP port,
    or no DHCP-enabled subnet)."""
    server = next((p for p in facts.ports if p.device_owner == DHCP_OWNER), None)
    head = dhcp_head(facts.subnets, server)
    if head is None:
        return None
    served = _served(facts.subnets)
    return msgspec.structs.replace(head, hosts=tuple(
        h for p in facts.ports if p is not server for h in dhcp_entries(p, served)))


def segment_spec(network: NetworkView, subnets: Iterable[SubnetView] = ()) -> NetworkSpec:
    """The network's segment on a host, without DHCP and peers (what a spawn carries:
    enough to plug its ports; the rest comes with the host's desired network)."""
    kind = network.network_type if network.network_type in ("flat", "vlan", "vxlan") \
        else "vxlan"
    return NetworkSpec(
        network_id=network.id, type=cast(NetworkType, kind),
        physical_network=network.physical_network, segmentation_id=network.segmentation_id,
        mtu=network.mtu,
        subnets=tuple(SubnetSpec(subnet_id=s.id, cidr=s.cidr, gateway_ip=s.gateway_ip,
                                 dns_nameservers=tuple(s.dns_nameservers),
                                 enable_dhcp=s.enable_dhcp) for s in subnets))


def network_spec(facts: NetworkFacts, host: str, hosts: Mapping[str, HostInfo]) -> NetworkSpec:
    """The network as ``host`` should carry it: segment, peers, and DHCP if it serves it."""
    spec = segment_spec(facts.network, facts.subnets)
    dhcp = dhcp_spec(facts) if dhcp_server(facts, hosts) == host else None
    return msgspec.structs.replace(spec, peers=peers(facts, host, hosts), dhcp=dhcp)


def network_head(lite: NetworkLite, host: str, hosts: Mapping[str, HostInfo]) -> NetworkSpec:
    """``network_spec`` without the static DHCP entries (a delta sends those per port)."""
    spec = segment_spec(lite.network, lite.subnets)
    dhcp = dhcp_head(lite.subnets, lite.dhcp_port) if dhcp_server(lite, hosts) == host \
        else None
    return msgspec.structs.replace(spec, peers=_peers(lite.network, lite.carriers, host, hosts),
                                   dhcp=dhcp)


def port_spec(port: PortView) -> PortSpec:
    """A bound guest port as its host plugs it."""
    return PortSpec(port_id=port.id, network_id=port.network_id, mac=port.mac_address,
                    ips=tuple(f.ip_address for f in port.fixed_ips),
                    device=port_device(port.id))


def desired_for(host: str, networks: Iterable[NetworkFacts],
                hosts: Mapping[str, HostInfo]) -> DesiredHostNetwork:
    """Everything ``host`` should have, given the facts of (at least) every network it
    carries: those networks, and its guest ports on them, sorted by id."""
    carried = sorted((f for f in networks if host in carriers(f)),
                     key=lambda f: f.network.id)
    ports = sorted((p for f in carried for p in f.ports
                    if p.host_id == host and is_guest_port(p)), key=lambda p: p.id)
    return DesiredHostNetwork(networks=tuple(network_spec(f, host, hosts) for f in carried),
                              ports=tuple(port_spec(p) for p in ports))


def delta_for(host: str, networks: Mapping[str, NetworkLite | None], ports: Iterable[PortView],
              gone: Iterable[str], hosts: Mapping[str, HostInfo]
              ) -> tuple[tuple[NetworkChange, ...], tuple[PortChange, ...]]:
    """What a delta tells ``host`` about the touched ``networks`` (None: the views no
    longer have it) and ports (``ports`` as the views have them now, ``gone`` the touched
    ones they no longer have): each network as the host should carry it (or None), each
    port as the host plugs it (or None), and, on the networks it serves DHCP for, the
    entries of those ports."""
    ports = list(ports)
    gone = sorted(set(gone))
    changes = []
    for network_id in sorted(networks):
        lite = networks[network_id]
        if lite is None or host not in lite.carriers:
            changes.append(NetworkChange(network_id=network_id))
            continue
        spec = network_head(lite, host, hosts)
        dhcp: list[DhcpChange] = []
        if spec.dhcp is not None:
            served = _served(lite.subnets)
            dhcp = [DhcpChange(port_id=p.id, hosts=dhcp_entries(p, served)) for p in ports
                    if p.network_id == network_id and p.id != spec.dhcp.port_id]
            dhcp += [DhcpChange(port_id=p) for p in gone]
        changes.append(NetworkChange(network_id=network_id, spec=spec, dhcp=tuple(dhcp)))
    port_changes = [PortChange(port_id=p.id, port=port_spec(p) if p.host_id == host
                               and is_guest_port(p) else None) for p in ports]
    port_changes += [PortChange(port_id=p) for p in gone]
    return tuple(changes), tuple(sorted(port_changes, key=lambda c: c.port_id))
