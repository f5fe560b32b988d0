"""Pure address arithmetic for the networking kinds: free sets, subnet plans, MACs.

A free set is a sorted list of disjoint inclusive integer ranges ``[[lo, hi], ...]``
(IPv4 addresses as ints, or segmentation ids). Drawing takes the lowest free value in
O(1) and giving back merges neighbours, so a pool is drained without ever searching
its allocations, and its size stays proportional to its fragments, not its addresses.

`plan_subnet` turns a subnet request into its gateway and allocation pools, or says in
Neutron's words why it cannot (invalid CIDR, pool outside the CIDR, gateway in a pool).
"""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import Sequence

Ranges = list[list[int]]

#: Neutron's default base_mac: generated MACs are fa:16:3e:xx:xx:xx
BASE_MAC = (0xFA, 0x16, 0x3E)


# -- free sets -----------------------------------------------------------------------------


def size(free: Ranges) -> int:
    return sum(hi - lo + 1 for lo, hi in free)


def contains(free: Ranges, value: int) -> bool:
    return any(lo <= value <= hi for lo, hi in free)


def draw(free: Ranges) -> tuple[int, Ranges] | None:
    """The lowest free value and the set without it; None when the set is empty."""
    if not free:
        return None
    (lo, hi), rest = free[0], free[1:]
    return lo, ([[lo + 1, hi]] if lo < hi else []) + rest


def take(free: Ranges, value: int) -> Ranges:
    """The set without ``value`` (unchanged when it is not in the set)."""
    out: Ranges = []
    for lo, hi in free:
        if lo <= value <= hi:
            out += [r for r in ([lo, value - 1], [value + 1, hi]) if r[0] <= r[1]]
        else:
            out.append([lo, hi])
    return out


def give(free: Ranges, value: int) -> Ranges:
    """The set with ``value`` added back, neighbours merged."""
    if contains(free, value):
        return free
    merged: Ranges = []
    for lo, hi in sorted([*free, [value, value]]):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return merged


# -- subnets -------------------------------------------------------------------------------


class PlanError(ValueError):
    """A subnet request Neutron refuses with 400; the message is Neutron's."""


def parse_cidr(cidr: str) -> ipaddress.IPv4Network:
    """The IPv4 network ``cidr`` names exactly (host bits zero), else PlanError."""
    try:
        net = ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        raise PlanError(f"Invalid input for cidr. Reason: '{cidr}' is not a valid IP "
                        "subnet.") from None
    if not isinstance(net, ipaddress.IPv4Network) or "/" not in cidr:
        raise PlanError(f"Invalid input for cidr. Reason: '{cidr}' is not a valid IPv4 "
                        "subnet.")
    if str(net) != cidr:
        raise PlanError(f"Invalid input for cidr. Reason: '{cidr}' isn't a recognized IP "
                        f"subnet cidr, '{net}' is recommended.")
    if net.prefixlen > 30:
        raise PlanError(f"Invalid input for cidr. Reason: '{cidr}' is too small: a subnet "
                        "needs at least two usable addresses.")
    return net


def parse_ip(text: str, what: str = "ip_address") -> int:
    try:
        return int(ipaddress.IPv4Address(text))
    except ValueError:
        raise PlanError(f"Invalid input for {what}. Reason: '{text}' is not a valid IP "
                        "address.") from None


def ip_text(value: int) -> str:
    return str(ipaddress.IPv4Address(value))


def hosts(net: ipaddress.IPv4Network) -> tuple[int, int]:
    """First and last usable address (network and broadcast addresses excluded)."""
    return int(net.network_address) + 1, int(net.broadcast_address) - 1


def plan_subnet(cidr: str, gateway: str | None, pools: Sequence[tuple[str, str]] | None,
                *, default_gateway: bool) -> tuple[str | None, Ranges]:
    """(gateway_ip, allocation pools as ranges) for a subnet request, else PlanError.

    Without ``gateway`` the gateway is the first host when ``default_gateway`` (the
    request left it out) and none otherwise (the request said null). Without ``pools``
    the pool is every host address but the gateway.
    """
    net = parse_cidr(cidr)
    first, last = hosts(net)
    gw: int | None = None
    if gateway is not None:
        gw = parse_ip(gateway, "gateway_ip")
        if not first <= gw <= last:
            raise PlanError(f"Gateway IP {gateway} is not a usable address of subnet "
                            f"{cidr}.")
    elif default_gateway:
        gw = first
    ranges = _pools(cidr, pools, first, last) if pools else [[first, last]]
    if gw is not None:
        if pools and contains(ranges, gw):
            raise PlanError(f"Gateway ip {ip_text(gw)} conflicts with allocation pool "
                            f"{_pool_of(ranges, gw)}")
        ranges = take(ranges, gw)
    return (ip_text(gw) if gw is not None else None), ranges


def _pools(cidr: str, pools: Sequence[tuple[str, str]], first: int, last: int) -> Ranges:
    ranges: Ranges = []
    for start, end in pools:
        lo, hi = parse_ip(start, "allocation_pools"), parse_ip(end, "allocation_pools")
        if lo > hi:
            raise PlanError(f"Invalid input for operation: allocation pool {start}-{end} "
                            "ends before it starts.")
        if lo < first or hi > last:
            raise PlanError(f"The allocation pool {start}-{end} spans beyond the subnet "
                            f"cidr {cidr}.")
        if any(lo <= b and a <= hi for a, b in ranges):
            raise PlanError(f"Found overlapping allocation pools: {start}-{end} and "
                            "another pool.")
        ranges.append([lo, hi])
    return sorted(ranges)


def _pool_of(ranges: Ranges, value: int) -> str:
    lo, hi = next(r for r in ranges if r[0] <= value <= r[1])
    return f"{ip_text(lo)}-{ip_text(hi)}"


def pool_docs(ranges: Ranges) -> list[dict[str, str]]:
    """Neutron's ``allocation_pools`` for ranges."""
    return [{"start": ip_text(lo), "end": ip_text(hi)} for lo, hi in ranges]


def overlaps(cidr: str, others: Sequence[str]) -> str | None:
    """The first of ``others`` that ``cidr`` overlaps, else None."""
    net = ipaddress.ip_network(cidr)
    return next((o for o in others if net.overlaps(ipaddress.ip_network(o))), None)


# -- MACs ----------------------------------------------------------------------------------


def normalise_mac(text: str) -> str | None:
    """``aa:bb:cc:dd:ee:ff`` lower-case for a valid unicast MAC (``-`` separators too),
    else None."""
    parts = text.replace("-", ":").lower().split(":")
    if len(parts) != 6 or any(len(p) != 2 for p in parts):
        return None
    try:
        octets = [int(p, 16) for p in parts]
    except ValueError:
        return None
    if octets[0] & 1 or not any(octets):
        return None  # multicast, broadcast or all zeros
    return ":".join(f"{o:02x}" for o in octets)


def derived_mac(seed: str) -> str:
    """A MAC under BASE_MAC whose last three octets come from ``seed`` (a uuid string)."""
    tail = uuid.UUID(seed).bytes[:3]
    return ":".join(f"{o:02x}" for o in (*BASE_MAC, *tail))
