"""What a host's network driver is asked to build and what it reports: specs and views.

These travel from the control plane to hostd (inside hostd commands), so they are plain
frozen Structs with no logic (and the device naming both sides share). A host builds a
network's plumbing from a NetworkSpec and plugs an instance from a PortSpec;
``DesiredHostNetwork`` is everything one host should have, the input of a reconcile.
"""

from __future__ import annotations

import re
from typing import Literal

import msgspec

#: Longest interface name the kernel takes (IFNAMSIZ less the terminating NUL).
IFNAME_MAX = 15
#: every host device Orrery makes starts with a three-letter prefix; a port's tap this one
TAP_PREFIX = "otp"
_KEY_LEN = IFNAME_MAX - 3 - 1
_NOT_KEY = re.compile(r"[^0-9a-zA-Z]")


def name_key(resource_id: str) -> str:
    """The part of a network or port id that names its devices."""
    return _NOT_KEY.sub("", resource_id).lower()[:_KEY_LEN]


def port_device(port_id: str) -> str:
    """The tap name of a port (what PortSpec.device normally is): the control plane puts
    it in the domain's NIC, hostd makes it."""
    return TAP_PREFIX + name_key(port_id)

#: How a network reaches other hosts: a pre-configured bridge per physical network
#: (``flat``), an 802.1Q subinterface of it (``vlan``), or a VXLAN overlay (``vxlan``).
NetworkType = Literal["flat", "vlan", "vxlan"]


class SubnetSpec(msgspec.Struct, frozen=True, kw_only=True):
    """One IPv4 subnet of a network, as DHCP hands it to guests."""

    subnet_id: str
    cidr: str
    gateway_ip: str | None = None
    dns_nameservers: tuple[str, ...] = ()
    enable_dhcp: bool = True


class DhcpHost(msgspec.Struct, frozen=True, kw_only=True):
    """One static DHCP entry: the guest with this MAC gets this address. ``port_id``
    names the port it is for (so that a change of that port replaces its entries);
    drivers do not keep it ("" in what they report, and from older planners)."""

    mac: str
    ip: str
    port_id: str = ""


class DhcpSpec(msgspec.Struct, frozen=True, kw_only=True):
    """This host serves DHCP for the network: the network's DHCP port (its MAC and one
    address per DHCP-enabled subnet) and the static entries for every port of the
    network, on this host or another (guests elsewhere reach it over the overlay).
    ``port_id`` is the DHCP port's id, which hostd reports plugged once its server runs."""

    mac: str
    ips: tuple[str, ...]
    hosts: tuple[DhcpHost, ...] = ()
    port_id: str = ""


class NetworkSpec(msgspec.Struct, frozen=True, kw_only=True):
    """One network's plumbing on a host.

    ``segmentation_id`` is the VNI (vxlan) or VLAN id (vlan); ``physical_network`` names
    the pre-configured bridge (flat, vlan). ``peers`` are the underlay addresses of the
    other hosts on a VXLAN network. ``dhcp`` is None on hosts that do not serve DHCP for it.
    """

    network_id: str
    type: NetworkType
    physical_network: str | None = None
    segmentation_id: int | None = None
    mtu: int = 1500
    subnets: tuple[SubnetSpec, ...] = ()
    dhcp: DhcpSpec | None = None
    peers: tuple[str, ...] = ()


class PortSpec(msgspec.Struct, frozen=True, kw_only=True):
    """An instance's interface on a network: the guest's ``mac`` and ``ips``, and the
    host ``device`` (tap) that stands for it on the network's bridge."""

    port_id: str
    network_id: str
    mac: str
    ips: tuple[str, ...] = ()
    device: str


class DesiredHostNetwork(msgspec.Struct, frozen=True, kw_only=True):
    """Everything one host should have: what a reconcile makes true."""

    networks: tuple[NetworkSpec, ...] = ()
    ports: tuple[PortSpec, ...] = ()


class DhcpChange(msgspec.Struct, frozen=True, kw_only=True):
    """The static DHCP entries of one port as they are now (none: the port has none
    any more, or is gone)."""

    port_id: str
    hosts: tuple[DhcpHost, ...] = ()


class NetworkChange(msgspec.Struct, frozen=True, kw_only=True):
    """One network of a delta: ``spec`` is how the host should carry it now, except
    that ``spec.dhcp.hosts`` is left empty (the entries come as ``dhcp`` changes, only
    for the ports that changed); None: the host no longer carries it."""

    network_id: str
    spec: NetworkSpec | None = None
    dhcp: tuple[DhcpChange, ...] = ()


class PortChange(msgspec.Struct, frozen=True, kw_only=True):
    """One port of a delta: how the host plugs it now, or None: not on this host."""

    port_id: str
    port: PortSpec | None = None


class Capabilities(msgspec.Struct, frozen=True, kw_only=True):
    """Which network types this host can carry, and why not where it cannot
    (``missing`` maps a type to the reason). The scheduler avoids hosts that lack a
    network's type or physical network. ``underlay_ip`` is the host's VXLAN tunnel
    endpoint, which the other hosts of a VXLAN network flood to (None: no VXLAN)."""

    flat: bool
    vxlan: bool
    vlan: bool
    physical_networks: tuple[str, ...] = ()
    missing: dict[str, str] = msgspec.field(default_factory=dict)
    underlay_ip: str | None = None


class DeviceView(msgspec.Struct, frozen=True, kw_only=True):
    """One network device as the host has it. ``kind`` is bridge, vxlan, vlan, tap, veth
    or other; ``peers`` are a VXLAN device's flood endpoints, sorted."""

    name: str
    index: int
    kind: str
    mac: str
    mtu: int
    up: bool
    master: str | None = None
    vni: int | None = None
    peers: tuple[str, ...] = ()


class DhcpView(msgspec.Struct, frozen=True, kw_only=True):
    """The DHCP server of one network on this host: whether it runs, its interface's
    MAC and addresses, and the static entries it serves (sorted by MAC)."""

    network_id: str
    running: bool
    mac: str
    ips: tuple[str, ...]
    hosts: tuple[DhcpHost, ...]


class HostNetworkView(msgspec.Struct, frozen=True, kw_only=True):
    """What a host's network looks like now: every device (Orrery's and others') by
    name, and every DHCP server Orrery runs there by network id."""

    devices: dict[str, DeviceView]
    dhcp: dict[str, DhcpView]
