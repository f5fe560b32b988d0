"""Wiring: builds the store, the bus and the actor kinds a process runs from its Config."""

from __future__ import annotations

import asyncio
import importlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from actors.codec import KindCodec
from actors.kind import ActorKind
from bus.protocol import Bus
from bus.routing import Names
from hostd.hypervisor import Hypervisor
from orrery.config import Config
from schemas import SYSTEM_EVENTS
from store.registry import EventTypes

#: the resource kinds every worker runs (they arrive with the compute, network, … issues)
DEFAULT_KINDS: tuple[str, ...] = ()
KINDS_ENV = "ORRERY_KINDS"


def load_kinds(extra: Iterable[str] = ()) -> list[ActorKind[Any]]:
    """The default kinds plus ``module:attribute`` specs (from --kind or $ORRERY_KINDS)."""
    specs = [*DEFAULT_KINDS, *extra]
    specs += [s for s in os.environ.get(KINDS_ENV, "").split(",") if s.strip()]
    kinds: dict[str, ActorKind[Any]] = {}
    for spec in specs:
        module, _, attr = spec.strip().partition(":")
        kind = getattr(importlib.import_module(module), attr)
        if not isinstance(kind, ActorKind):
            raise TypeError(f"{spec} is not an ActorKind")
        kinds[kind.name] = kind
    return list(kinds.values())


def event_types(kinds: Iterable[ActorKind[Any]]) -> EventTypes:
    """The registry the log validates appends against: every kind's events and the system's."""
    types = EventTypes(SYSTEM_EVENTS)
    for kind in kinds:
        types.register(*KindCodec(kind).event_types())
    return types


async def open_store(cfg: Config, types: EventTypes) -> Any:
    """The configured event log: SQLite (embedded) or PostgreSQL."""
    if cfg.embedded_store:
        from store.sqlite import SqliteEventStore

        path = cfg.sqlite_path
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        return await SqliteEventStore.open(path, types)
    from store.postgres import PostgresEventStore

    return await PostgresEventStore.connect(cfg.database_url, types)


async def open_bus(cfg: Config) -> Bus:
    """The configured bus: in-process (embedded) or RabbitMQ."""
    names = Names(prefix=cfg.bus_prefix, shards=cfg.shards)
    if cfg.embedded_bus:
        from bus.memory import MemoryBus

        return MemoryBus(names, max_attempts=cfg.command_max_attempts)
    from bus.amqp import AmqpBus

    return await AmqpBus.connect(cfg.amqp_url, names, max_attempts=cfg.command_max_attempts)


#: the hypervisor drivers ``orrery hostd --hypervisor`` offers
HYPERVISORS = ("fake", "libvirt")


#: ``vcpus,ram_mb,disk_gb`` a fake host reports (e.g. a big one for benchmarks)
FAKE_CAPACITY_ENV = "ORRERY_FAKE_HOST_CAPACITY"


def libvirt_available() -> bool:
    """Whether libvirt-python is installed."""
    import importlib.util

    return importlib.util.find_spec("libvirt") is not None


def test_node_uri(directory: Path, host: str, *, vcpus: int = 16, ram_mb: int = 65536) -> str:
    """A libvirt test-driver URI private to ``host``: ``test:///default`` is one shared node
    per process, while a node file gives each connection its own, so several in-process
    hosts do not see each other's domains."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{host}.xml"
    path.write_text(
        "<node><cpu><mhz>2000</mhz><model>x86_64</model>"
        f"<active>{vcpus}</active><nodes>1</nodes><sockets>1</sockets><cores>{vcpus}</cores>"
        f"<threads>1</threads></cpu><memory>{ram_mb * 1024}</memory></node>\n")
    return f"test://{path.resolve()}"


async def open_hypervisor(kind: str, uri: str = "test:///default") -> Hypervisor:
    """The hypervisor a hostd drives: the in-memory fake, or libvirt at ``uri``."""
    if kind == "fake":
        from hostd.fake import DEFAULT_CAPACITY, FakeHypervisor
        from schemas.hostd import Capacity

        raw = os.environ.get(FAKE_CAPACITY_ENV)
        if not raw:
            return FakeHypervisor(capacity=DEFAULT_CAPACITY)
        vcpus, ram_mb, disk_gb = (int(x) for x in raw.split(","))
        return FakeHypervisor(capacity=Capacity(vcpus=vcpus, ram_mb=ram_mb, disk_gb=disk_gb))
    if kind == "libvirt":
        from hostd.libvirt_driver import LibvirtHypervisor

        return await LibvirtHypervisor.open(uri)
    raise ValueError(f"unknown hypervisor {kind!r} (choose from {', '.join(HYPERVISORS)})")


#: the storage backends ``orrery storaged --backend`` offers
STORAGE_BACKENDS = ("qemu-img", "fake")


def qemu_img_available() -> bool:
    """Whether qemu-img (Debian's qemu-utils) is on the PATH."""
    import shutil

    return shutil.which("qemu-img") is not None


def open_storage(kind: str, root: Path, *, format: str = "raw",
                 capacity_gb: int | None = None) -> Any:
    """A storage host's backend: volume files made with qemu-img in ``root``, or the
    in-memory fake (``capacity_gb`` GiB, default 1000)."""
    if format not in ("raw", "qcow2"):
        raise ValueError(f"unknown volume format {format!r} (choose raw or qcow2)")
    if kind == "fake":
        from hostd.storage_fake import FakeStorageBackend

        return FakeStorageBackend(capacity_gb=capacity_gb or 1000,
                                  format="qcow2" if format == "qcow2" else "raw")
    if kind == "qemu-img":
        from hostd.storage_qemu import QemuImgBackend

        return QemuImgBackend(root, format="qcow2" if format == "qcow2" else "raw",
                              capacity_gb=capacity_gb)
    raise ValueError(f"unknown storage backend {kind!r} (choose from"
                     f" {', '.join(STORAGE_BACKENDS)})")


NETWORK_DRIVERS = ("fake", "pyroute2")
#: the physical network every fake host offers (flat networks name it)
DEFAULT_PHYSNET = "physnet1"


def parse_bridge_mappings(specs: Iterable[str]) -> dict[str, str]:
    """``physnet=bridge`` pairs (as Neutron's bridge_mappings) as a dict; ValueError on a
    pair without both halves."""
    mappings: dict[str, str] = {}
    for spec in specs:
        physnet, _, bridge = spec.partition("=")
        if not physnet.strip() or not bridge.strip():
            raise ValueError(f"bridge mapping {spec!r}: expected PHYSNET=BRIDGE")
        mappings[physnet.strip()] = bridge.strip()
    return mappings


async def open_host_network(kind: str, *, state_dir: Path, underlay_ip: str | None = None,
                            bridge_mappings: dict[str, str] | None = None,
                            netns: str | None = None) -> Any:
    """A host's network driver: the recording fake (with one flat physical network when
    no mapping is given), or pyroute2 on this host (or in ``netns``)."""
    if kind == "fake":
        from hostd.net_fake import FakeHostNetwork

        return FakeHostNetwork(underlay_ip=underlay_ip or "192.0.2.1",
                               bridge_mappings=bridge_mappings or {DEFAULT_PHYSNET: "br-phys"})
    if kind == "pyroute2":
        from hostd.net_pyroute2 import Pyroute2HostNetwork

        await asyncio.to_thread(state_dir.mkdir, parents=True, exist_ok=True)
        return await Pyroute2HostNetwork.open(netns=netns, underlay_ip=underlay_ip,
                                              bridge_mappings=bridge_mappings,
                                              state_dir=state_dir)
    raise ValueError(f"unknown network driver {kind!r} (choose from"
                     f" {', '.join(NETWORK_DRIVERS)})")


def image_cache(data_dir: Path, host: str, origin: str | None = None,
                cache_dir: str | None = None) -> Any:
    """The image cache of ``host``: ``<data_dir>/hosts/<host>/images`` (or ``cache_dir``),
    filled from ``origin``: an image store directory (default ``<data_dir>/images``, the
    one ``orrery up`` and ``orrery api`` write) or the gateway's URL (``http://...``),
    fetched with a token for ``ORRERY_HOSTD_USER`` / ``ORRERY_HOSTD_PASSWORD`` (default
    ``admin`` / ``ORRERY_ADMIN_PASSWORD``) on project ``ORRERY_HOSTD_PROJECT`` (``admin``)."""
    from hostd.image_cache import ImageCache
    from hostd.image_fetch import directory_fetch, http_fetch

    root = Path(cache_dir) if cache_dir else data_dir / "hosts" / host / "images"
    root.mkdir(parents=True, exist_ok=True)
    source = origin or str(data_dir / "images")
    if source.startswith(("http://", "https://")):
        return ImageCache(root, http_fetch(source, password_token(source)))
    return ImageCache(root, directory_fetch(Path(source)))


def password_token(base_url: str) -> Any:
    """A token provider for the gateway at ``base_url``: password auth, renewed before
    the token's hour is up."""
    import time

    import aiohttp

    user = os.environ.get("ORRERY_HOSTD_USER", "admin")
    password = os.environ.get("ORRERY_HOSTD_PASSWORD") or os.environ.get(
        "ORRERY_ADMIN_PASSWORD", "")
    project = os.environ.get("ORRERY_HOSTD_PROJECT", "admin")
    body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": user, "domain": {"name": "Default"}, "password": password}}},
        "scope": {"project": {"name": project, "domain": {"name": "Default"}}}}}
    held: dict[str, Any] = {}

    async def token() -> str:
        if held and held["until"] > time.monotonic():
            return str(held["token"])
        url = f"{base_url.rstrip('/')}/identity/v3/auth/tokens"
        async with aiohttp.ClientSession() as session, session.post(url, json=body) as resp:
            if resp.status != 201:
                raise RuntimeError(f"hostd could not authenticate as {user}: {resp.status}")
            held.update(token=resp.headers["X-Subject-Token"],
                        until=time.monotonic() + 1800)
        return str(held["token"])

    return token
