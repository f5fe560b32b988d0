"""Netlink in one namespace, the few calls the network driver needs, each with a timeout.

A thin layer over pyroute2's IPRoute, run on one worker thread per namespace: pyroute2's
AsyncIPRoute cannot open its netlink socket on uvloop (which our processes run on), and
a thread keeps the blocking calls off the event loop, as the libvirt driver does.

Look a link up by name, make a link exist with the given kind and attributes
(recreating it when an attribute that cannot change, such as a VNI, differs), set what
can change only when it differs (so an unchanged data plane is not touched at all), and
keep a VXLAN device's flood list. Netlink errors are mapped once here to the HostNetwork
errors.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, TypeVar

import structlog
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from hostd.network import CapabilityMissing, NetlinkFailed

log = structlog.get_logger(__name__)
T = TypeVar("T")
Link = Any  # a pyroute2 ifinfmsg; pyroute2 ships no types
#: The all-zero MAC: a VXLAN FDB entry with it floods to its destination.
FLOOD_MAC = "00:00:00:00:00:00"
_IFF_UP = 1
_KINDS = {"tun": "tap", "bridge": "bridge", "vxlan": "vxlan", "vlan": "vlan", "veth": "veth"}


def link_kind(link: Link) -> str:
    """bridge, vxlan, vlan, tap, veth or other."""
    info = link.get("linkinfo")
    return _KINDS.get(info.get("kind") if info else "", "other")


def link_data(link: Link, key: str) -> Any:
    """One attribute of a link's kind-specific data (None if it has none)."""
    info = link.get("linkinfo")
    data = info.get("data") if info else None
    return data.get(key) if data else None


def is_up(link: Link) -> bool:
    return bool(link["flags"] & _IFF_UP)


class Links:
    """Netlink calls in one namespace (``netns`` None: this process's own)."""

    def __init__(self, ipr: IPRoute, pool: ThreadPoolExecutor, *, timeout: float) -> None:
        self._ipr = ipr
        self._pool = pool
        self.timeout = timeout

    @classmethod
    @asynccontextmanager
    async def opened(cls, netns: str | None, *, timeout: float) -> AsyncIterator[Links]:
        """Links in ``netns`` for the duration of a block."""
        links = await cls.open(netns, timeout=timeout)
        try:
            yield links
        finally:
            await links.close()

    @classmethod
    async def open(cls, netns: str | None, *, timeout: float) -> Links:
        """Open a netlink socket in ``netns`` (which must exist)."""
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="netlink")
        opener = partial(IPRoute, netns=netns, flags=0) if netns else IPRoute
        try:
            ipr = await _call(pool, opener, timeout, f"open netlink in {netns or 'own'}")
        except BaseException:
            pool.shutdown(wait=False)
            raise
        return cls(ipr, pool, timeout=timeout)

    async def close(self) -> None:
        try:
            await _call(self._pool, self._ipr.close, self.timeout, "close netlink")
        finally:
            self._pool.shutdown(wait=False)

    async def _do(self, what: str, call: Callable[[], T]) -> T:
        return await _call(self._pool, call, self.timeout, what)

    async def get(self, name: str) -> Link | None:
        """The link called ``name``, None if there is none."""
        try:
            found = await self._do(f"get {name}", lambda: self._ipr.link("get", ifname=name))
        except NetlinkFailed as exc:
            if isinstance(exc.__cause__, NetlinkError) and exc.__cause__.code == errno.ENODEV:
                return None
            raise
        return found[0] if found else None

    async def dump(self) -> list[Link]:
        """Every link in the namespace."""
        return await self._do("dump links", lambda: list(self._ipr.link("dump")))

    async def delete(self, name: str) -> bool:
        """Delete the link if it exists; whether it did."""
        link = await self.get(name)
        if link is None:
            return False
        await self._do(f"delete {name}", lambda: self._ipr.link("del", index=link["index"]))
        log.info("link_removed", ifname=name)
        return True

    async def ensure(self, name: str, kind: str, *, create: dict[str, Any],
                     keep: Callable[[Link], bool] = lambda _link: True) -> Link:
        """A link ``name`` of ``kind``: the one there if its kind matches and ``keep``
        accepts it, else a new one made with ``create`` (pyroute2 link arguments)."""
        link = await self.get(name)
        if link is not None and (link_kind(link) != kind or not keep(link)):
            log.info("link_replaced", ifname=name, was=link_kind(link))
            await self.delete(name)
            link = None
        if link is None:
            await self._do(f"create {name}",
                           lambda: self._ipr.link("add", ifname=name, **create))
            log.info("link_created", ifname=name, kind=kind)
            link = await self.get(name)
            if link is None:
                raise NetlinkFailed(f"{name} vanished right after it was created")
        return link

    async def configure(self, link: Link, *, master: int | None = None,
                        mtu: int | None = None, mac: str | None = None) -> None:
        """Set what differs of master, MTU and MAC, and bring the link up."""
        change: dict[str, Any] = {}
        if master is not None and link.get("master") != master:
            change["master"] = master
        if mtu is not None and link.get("mtu") != mtu:
            change["mtu"] = mtu
        if mac is not None and link.get("address") != mac.lower():
            change["address"] = mac.lower()
        if not is_up(link):
            change["state"] = "up"
        if change:
            index = link["index"]
            await self._do(f"set {link.get('ifname')}",
                           lambda: self._ipr.link("set", index=index, **change))

    async def move_to(self, name: str, netns: str) -> None:
        """Move the link into another namespace."""
        link = await self.get(name)
        if link is not None:
            await self._do(f"move {name}", lambda: self._ipr.link(
                "set", index=link["index"], net_ns_fd=netns))

    async def index(self, name: str) -> int | None:
        link = await self.get(name)
        return None if link is None else int(link["index"])

    async def flood_peers(self, index: int) -> set[str]:
        """The destinations of a VXLAN device's all-zero (flood) FDB entries."""
        def collect() -> set[str]:
            return {e.get("dst") for e in self._ipr.fdb("dump", ifindex=index)
                    if e["ifindex"] == index and e.get("lladdr") == FLOOD_MAC and e.get("dst")}
        return await self._do("dump fdb", collect)

    async def set_flood_peers(self, index: int, peers: Iterable[str]) -> None:
        """Make the VXLAN device flood to exactly ``peers``."""
        want = set(peers)
        have = await self.flood_peers(index)
        for dst in sorted(want - have):
            await self._do(f"fdb add {dst}", partial(
                self._ipr.fdb, "append", ifindex=index, lladdr=FLOOD_MAC, dst=dst))
        for dst in sorted(have - want):
            await self._do(f"fdb del {dst}", partial(
                self._ipr.fdb, "del", ifindex=index, lladdr=FLOOD_MAC, dst=dst))
        if want != have:
            log.info("vxlan_peers_set", ifindex=index, peers=sorted(want))

    async def addresses(self, index: int) -> set[tuple[str, int]]:
        """The IPv4 addresses (address, prefix length) on a link."""
        return await self._do("dump addresses", lambda: {
            (a.get("address"), a["prefixlen"])
            for a in self._ipr.addr("dump", index=index, family=2)})

    async def set_addresses(self, index: int, want: set[tuple[str, int]]) -> None:
        """Make the link carry exactly these IPv4 addresses."""
        have = await self.addresses(index)
        for ip, plen in sorted(want - have):
            await self._do(f"add {ip}", partial(
                self._ipr.addr, "add", index=index, address=ip, prefixlen=plen))
        for ip, plen in sorted(have - want):
            await self._do(f"del {ip}", partial(
                self._ipr.addr, "del", index=index, address=ip, prefixlen=plen))


async def _call(pool: ThreadPoolExecutor, call: Callable[[], T], timeout: float,
                what: str) -> T:
    """One netlink request on the worker thread with a deadline; its errors as
    HostNetwork errors. A call past its deadline is abandoned, not interrupted."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            return await loop.run_in_executor(pool, call)
    except NetlinkError as exc:
        if exc.code == errno.EOPNOTSUPP:
            raise CapabilityMissing(f"{what}: the kernel does not support it") from exc
        raise NetlinkFailed(f"{what}: {exc}") from exc
    except TimeoutError as exc:
        raise NetlinkFailed(f"{what}: no answer within {timeout}s") from exc
