"""Where webhooks may go: http(s) only, never to loopback, link-local or private addresses
unless the operator allows them.

`DestinationPolicy.check(url)` is what the API asks at creation and update (the gateway
gets it as a plain callable): a host name is resolved and *every* address it resolves to
must be allowed. `webhooks.http` applies the same rule again when a delivery connects,
so a name that resolves elsewhere later (DNS rebinding) still cannot reach a forbidden
address. Link-local addresses (169.254.0.0/16, fe80::/10: cloud metadata services) are
refused whatever the configuration; loopback needs ``allow_loopback``; every other
non-global address (RFC 1918, unique-local, shared, documentation, unspecified,
multicast, reserved) needs ``allow_private``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
RESOLVE_TIMEOUT = 5.0


class DestinationRefused(OSError):
    """A delivery's destination resolved to an address the policy refuses."""


@dataclass(frozen=True)
class DestinationPolicy:
    """Which addresses deliveries may reach."""

    allow_loopback: bool = False
    allow_private: bool = False

    def refusal(self, address: Address) -> str | None:
        """Why ``address`` may not be reached (None: it may)."""
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if address.is_link_local:
            return f"{address} is a link-local address"
        if address.is_loopback:
            return None if self.allow_loopback else f"{address} is a loopback address"
        if not address.is_global or address.is_multicast:
            return None if self.allow_private else f"{address} is not a public address"
        return None

    async def check(self, url: str) -> str | None:
        """Why webhooks may not go to ``url`` (None: they may); resolves its host."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return "url must be an http:// or https:// URL with a host."
        try:
            addresses = await resolve(parts.hostname, parts.port or 443)
        except (OSError, TimeoutError) as exc:
            return f"url's host {parts.hostname} cannot be resolved ({exc})."
        for address in addresses:
            problem = self.refusal(address)
            if problem is not None:
                return f"url's host {parts.hostname} is not allowed: {problem}."
        return None


async def resolve(host: str, port: int) -> list[Address]:
    """Every address ``host`` resolves to (a literal address is itself)."""
    try:
        return [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(RESOLVE_TIMEOUT):
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [ipaddress.ip_address(info[4][0]) for info in infos]
