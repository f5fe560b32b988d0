"""The HostNetwork seam: build a host's bridges, tunnels, taps and DHCP; names and errors.

Every device Orrery makes on a host carries one of a few three-letter prefixes followed
by the first 11 characters of the network's (or port's) id, so that names fit IFNAMSIZ
(15 characters) and a reconcile can tell its own devices from everybody else's:

    obr<net>  a network's bridge (vxlan, vlan)      ovx<net>  its VXLAN device
    ovl<net>  its 802.1Q subinterface               odh<net>  the DHCP server's veth
    otp<port> an instance's tap

Flat networks use the operator's pre-configured bridge of their physical network; Orrery
only attaches its taps and DHCP veths to it.

HostNetworkError              base; ``retryable`` says whether trying again may help
├── InvalidNetworkSpec        a spec that can never be built (bad VNI, no physnet, ...)
├── CapabilityMissing         the host cannot carry this network type (e.g. no 802.1Q)
├── UnknownPhysicalNetwork    the physical network has no bridge on this host
├── UnknownNetwork            a port on a network this driver was not asked to build
├── DhcpFailed                the network's DHCP server did not start (retryable)
└── NetlinkFailed             the kernel refused or did not answer a change (retryable)
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import Protocol

from schemas.hostnet import (
    IFNAME_MAX,
    TAP_PREFIX,
    Capabilities,
    DesiredHostNetwork,
    DhcpHost,
    HostNetworkView,
    NetworkSpec,
    NetworkType,
    PortSpec,
    name_key,
)

BRIDGE_PREFIX = "obr"
VXLAN_PREFIX = "ovx"
VLAN_PREFIX = "ovl"
DHCP_PREFIX = "odh"
#: Prefixes of the devices a network owns (all keyed by the network id).
NETWORK_PREFIXES = (BRIDGE_PREFIX, VXLAN_PREFIX, VLAN_PREFIX, DHCP_PREFIX)
VXLAN_PORT = 4789
VNI_MAX = 2**24 - 1
VLAN_MAX = 4094


class HostNetworkError(Exception):
    """Base of every host network error."""

    retryable = False

    def __init__(self, message: str, *, network_id: str | None = None) -> None:
        super().__init__(message)
        self.network_id = network_id


class InvalidNetworkSpec(HostNetworkError):
    """The spec contradicts itself; no host could build it."""


class CapabilityMissing(HostNetworkError):
    """This host cannot carry the network's type (its kernel lacks the device kind)."""


class UnknownPhysicalNetwork(HostNetworkError):
    """The physical network is not mapped to a bridge here, or the bridge is missing."""


class UnknownNetwork(HostNetworkError):
    """A port names a network that ``ensure_network`` has not built on this driver."""


class DhcpFailed(HostNetworkError):
    """The DHCP server could not be started or told about new entries."""

    retryable = True


class NetlinkFailed(HostNetworkError):
    """A netlink request failed for a reason that may pass (busy, timed out)."""

    retryable = True


class HostNetwork(Protocol):
    """One host's network data plane. Every operation is idempotent: ``ensure_*`` makes
    a thing exist exactly as specified (creating, fixing or leaving it), ``remove_*``
    makes it absent (absent already is no error). Calls may come concurrently; the
    driver serialises its changes."""

    async def capabilities(self) -> Capabilities:
        """Which network types this host can build (probed once, then remembered)."""
        ...

    async def ensure_network(self, spec: NetworkSpec) -> None:
        """Build the network's bridge, tunnel or subinterface and its DHCP server
        (``spec.dhcp``; None stops one that runs). ``spec.peers`` replaces the flood
        list of a VXLAN network."""
        ...

    async def remove_network(self, network_id: str) -> None:
        """Remove the network's devices, DHCP server and the ports plugged into it."""
        ...

    async def set_peers(self, network_id: str, peers: Iterable[str]) -> None:
        """Make a built VXLAN network flood to exactly these underlay addresses
        (other network types have no peers: nothing to do)."""
        ...

    async def update_dhcp_hosts(self, network_id: str, add: Sequence[DhcpHost],
                                remove: Sequence[DhcpHost]) -> None:
        """Change only some static entries of the network's running DHCP server: drop
        ``remove``, then add ``add`` (entries are compared by MAC and address), leaving
        the others as they are. UnknownNetwork when this host does not serve the
        network's DHCP; InvalidNetworkSpec for an address in no DHCP-enabled subnet."""
        ...

    async def ensure_port(self, port: PortSpec) -> None:
        """Plug the port: its device (created as a tap if missing, used as it is if
        libvirt or someone made it) enslaved to the network's bridge, up, at the
        network's MTU, with the host-side MAC ``host_side_mac(port.mac)``."""
        ...

    async def remove_port(self, port_id: str, device: str | None = None) -> None:
        """Unplug the port: delete its device (``port_device(port_id)`` by default)."""
        ...

    async def reconcile(self, desired: DesiredHostNetwork) -> tuple[str, ...]:
        """Make the host match ``desired`` exactly: build what is missing, and remove
        Orrery's devices and DHCP servers that are not desired; never touch others'.
        Returns the names of the devices and DHCP servers (``dhcp:<net>``) removed."""
        ...

    async def inspect(self) -> HostNetworkView:
        """The host's devices and Orrery's DHCP servers as they are now."""
        ...

    async def close(self) -> None:
        """Release netlink sockets; the data plane itself stays as it is."""
        ...


def bridge_name(network_id: str) -> str:
    return BRIDGE_PREFIX + name_key(network_id)


def vxlan_name(network_id: str) -> str:
    return VXLAN_PREFIX + name_key(network_id)


def vlan_name(network_id: str) -> str:
    return VLAN_PREFIX + name_key(network_id)


def dhcp_device_name(network_id: str) -> str:
    """The host end of the veth that joins the network to its DHCP namespace."""
    return DHCP_PREFIX + name_key(network_id)


def host_side_mac(mac: str) -> str:
    """The MAC of a port's host-side device: the guest's with the first octet ``fe``,
    as libvirt does, so that the bridge never takes the guest's MAC for its own."""
    return "fe" + mac.lower()[2:]


def is_ours(name: str) -> bool:
    """Whether a device name is one Orrery makes (and so may remove)."""
    return name.startswith((*NETWORK_PREFIXES, TAP_PREFIX)) and len(name) > 3


def supports(capabilities: Capabilities, network_type: NetworkType) -> bool:
    """Whether a host with these capabilities can build a network of this type."""
    return bool(getattr(capabilities, network_type))


def validate_network(spec: NetworkSpec) -> None:
    """Raise InvalidNetworkSpec unless the spec can be built on some host."""
    seg = spec.segmentation_id
    if spec.type == "vxlan" and (seg is None or not 1 <= seg <= VNI_MAX):
        raise _invalid(spec, f"vxlan needs a VNI in 1..{VNI_MAX}, got {seg}")
    if spec.type == "vlan" and (seg is None or not 1 <= seg <= VLAN_MAX):
        raise _invalid(spec, f"vlan needs a VLAN id in 1..{VLAN_MAX}, got {seg}")
    if spec.type in ("flat", "vlan") and not spec.physical_network:
        raise _invalid(spec, f"a {spec.type} network needs a physical network")
    if not 68 <= spec.mtu <= 65535:
        raise _invalid(spec, f"mtu {spec.mtu} is outside 68..65535")
    if spec.dhcp is not None:
        _validate_dhcp(spec)


def _validate_dhcp(spec: NetworkSpec) -> None:
    assert spec.dhcp is not None
    validate_dhcp_addresses(spec, (*spec.dhcp.ips, *(h.ip for h in spec.dhcp.hosts)))


def validate_dhcp_addresses(spec: NetworkSpec, ips: Iterable[str]) -> None:
    """Raise InvalidNetworkSpec unless every address is in a DHCP-enabled subnet."""
    served = [ipaddress.ip_network(s.cidr) for s in spec.subnets if s.enable_dhcp]
    for ip in ips:
        if not any(ipaddress.ip_address(ip) in net for net in served):
            raise _invalid(spec, f"DHCP address {ip} is in no DHCP-enabled subnet")


def dhcp_entry(host: DhcpHost) -> DhcpHost:
    """An entry as a driver keeps it: by MAC and address only."""
    return DhcpHost(mac=host.mac, ip=host.ip) if host.port_id else host


def changed_entries(current: Iterable[DhcpHost], add: Iterable[DhcpHost],
                    remove: Iterable[DhcpHost]) -> list[DhcpHost]:
    """``current`` without ``remove`` and with ``add`` (by lower-case MAC and address),
    sorted by MAC."""
    def key(h: DhcpHost) -> tuple[str, str]:
        return h.mac.lower(), h.ip

    entries = {key(h): dhcp_entry(h) for h in current}
    for h in remove:
        entries.pop(key(h), None)
    for h in add:
        entries[key(h)] = dhcp_entry(h)
    return sorted(entries.values(), key=key)


def _invalid(spec: NetworkSpec, reason: str) -> InvalidNetworkSpec:
    return InvalidNetworkSpec(f"network {spec.network_id}: {reason}",
                              network_id=spec.network_id)


def validate_port(port: PortSpec) -> None:
    """Raise InvalidNetworkSpec unless the port's device name is one of Orrery's taps."""
    if not port.device.startswith(TAP_PREFIX) or not 3 < len(port.device) <= IFNAME_MAX:
        raise InvalidNetworkSpec(
            f"port {port.port_id}: device {port.device!r} must start with {TAP_PREFIX!r} "
            f"and be at most {IFNAME_MAX} characters", network_id=port.network_id)


def network_devices(network_id: str) -> tuple[str, ...]:
    """Every device name a network may own on a host."""
    return tuple(p + name_key(network_id) for p in NETWORK_PREFIXES)


def stray_devices(names: Iterable[str], desired: DesiredHostNetwork) -> list[str]:
    """Orrery's devices among ``names`` that ``desired`` has no use for, sorted so that
    taps go before the bridges they hang on."""
    keep = {d for n in desired.networks for d in network_devices(n.network_id)}
    keep |= {p.device for p in desired.ports}
    strays = [n for n in names if is_ours(n) and n not in keep]
    return sorted(strays, key=lambda n: (not n.startswith(TAP_PREFIX), n))


def stray_dhcp(served: Iterable[str], desired: DesiredHostNetwork) -> list[str]:
    """The networks whose DHCP server runs here but should not."""
    keep = {n.network_id for n in desired.networks if n.dhcp is not None}
    return sorted(set(served) - keep)


def dhcp_prefixlen(spec: NetworkSpec, ip: str) -> int:
    """The prefix length of the subnet that holds ``ip`` (validated to exist)."""
    addr = ipaddress.ip_address(ip)
    for subnet in spec.subnets:
        net = ipaddress.ip_network(subnet.cidr)
        if addr in net:
            return net.prefixlen
    raise _invalid(spec, f"address {ip} is in no subnet")

