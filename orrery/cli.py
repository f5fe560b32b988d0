"""The ``orrery`` command: ``up`` (all-in-one), ``worker``, ``relay``, ``api``, ``hostd``,
``storaged`` and ``replay`` (the debug tool over the log)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec
import structlog
from aiohttp import web
from prometheus_client import start_http_server

from actors.client import ActorClient
from actors.runtime import ActorRuntime
from actors.timers import TimerService
from bus.protocol import Bus
from hostd.daemon import HostDaemon
from hostd.storaged import StorageDaemon
from orrery.bootstrap import bootstrap, make_cloud_app, token_ttl
from orrery.clouds import CLOUD_NAME, write_clouds_yaml, written_password
from orrery.config import Config, ConfigError, load_config
from orrery.gc_policy import CollectorPolicy
from orrery.logging import configure_logging
from orrery.services import (
    cloud_apis,
    cloud_effects,
    cloud_kinds,
    cloud_projections,
    cloud_services,
    destination_policy,
    dispatcher_settings,
    webhook_dispatcher,
    worker_projections,
)
from orrery.wiring import (
    HYPERVISORS,
    NETWORK_DRIVERS,
    STORAGE_BACKENDS,
    event_types,
    image_cache,
    libvirt_available,
    load_kinds,
    open_bus,
    open_host_network,
    open_hypervisor,
    open_storage,
    open_store,
    parse_bridge_mappings,
    qemu_img_available,
    test_node_uri,
)
from store.projections import ProjectionHub
from store.relay import Relay

log = structlog.get_logger("orrery")


async def _serve_http(cfg: Config, store: Any, bus: Bus, *, write_clouds: bool = False) -> None:
    client = ActorClient(bus)
    projections = cloud_projections()
    for projection in projections:
        await store.run_ddl(projection.ddl)
    async with ProjectionHub(store, projections, lead=True):
        generated = await bootstrap(store, client)
        apis = cloud_apis(store, client, data_dir=cfg.data_dir,
                          destinations=destination_policy(cfg), heartbeat=cfg.events_heartbeat)
        app = make_cloud_app(store, client, apis=apis, ttl=token_ttl())
        if write_clouds:
            _write_clouds(cfg, generated)
        await _serve_app(cfg, app)


def _write_clouds(cfg: Config, generated: str | None) -> None:
    password = generated or os.environ.get("ORRERY_ADMIN_PASSWORD")
    url = f"http://{cfg.api_host}:{cfg.api_port}"
    path = write_clouds_yaml(cfg.data_dir, url, password)
    print(f"orrery: cloud '{CLOUD_NAME}' at {url}; try:\n"
          f"  OS_CLIENT_CONFIG_FILE={path} openstack --os-cloud {CLOUD_NAME} token issue",
          flush=True)
    if written_password(path) is None:
        print(f"orrery: {path} lacks the admin password (shown once, at the first start):"
              " put it there, or start with ORRERY_ADMIN_PASSWORD set", flush=True)


async def _serve_app(cfg: Config, app: web.Application) -> None:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, cfg.api_host, cfg.api_port)
    await site.start()
    log.info("http_listening", host=cfg.api_host, port=cfg.api_port)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


async def run_processes(cfg: Config, kinds_spec: Sequence[str], *, worker: bool, relay: bool,
                        http: bool, hosts: int = 0, hypervisor: str = "fake",
                        storage_hosts: int = 0, storage: str = "fake",
                        storage_capacity_gb: int | None = None) -> None:
    """Open the backends and run the chosen roles until cancelled."""
    kinds = [*load_kinds(kinds_spec), *cloud_kinds()]
    store = await open_store(cfg, event_types(kinds))
    bus = await open_bus(cfg)
    try:
        # every table this process reads exists before any of its roles starts (the
        # planner and the in-process hosts read views the API part would create later)
        for projection in [*(worker_projections() if worker else ()),
                           *(cloud_projections() if http else ())]:
            await store.run_ddl(projection.ddl)
        async with asyncio.TaskGroup() as tg:
            if relay:
                tg.create_task(Relay(store, bus).run(), name="relay")
            if worker:
                served = {p.name for p in cloud_projections()} if http else set()
                # the API part below folds its own; of the rest, whatever no other process
                # leads
                own = [p for p in worker_projections() if p.name not in served]
                if own:
                    tg.create_task(ProjectionHub(store, own, lead=True).run(),
                                   name="projections")
                runtime = ActorRuntime(store, bus, kinds, passivate_after=cfg.passivate_after,
                                       worker_id=cfg.resolved_worker_id,
                                       effect_handlers=cloud_effects(store, bus))
                await runtime.start()
                tg.create_task(TimerService(store, bus).run(), name="timers")
                for service in cloud_services(store, bus):
                    tg.create_task(service.run(), name=type(service).__name__)
                tg.create_task(webhook_dispatcher(store, ActorClient(bus),
                                                  dispatcher_settings(cfg)).run(),
                               name="webhooks")
            for i in range(hosts):  # all-in-one: in-process hosts
                name = f"host-{i + 1}"
                uri = test_node_uri(Path(cfg.data_dir) / "hosts", name) \
                    if hypervisor == "libvirt" else ""
                network = await open_host_network(
                    "fake", state_dir=Path(cfg.data_dir) / "hosts" / name / "network",
                    underlay_ip=f"192.0.2.{i + 1}")
                daemon = HostDaemon(bus, await open_hypervisor(hypervisor, uri), name,
                                    images=image_cache(Path(cfg.data_dir), name),
                                    network=network)
                tg.create_task(daemon.run(), name=f"hostd-{i + 1}")
            for i in range(storage_hosts):  # all-in-one: in-process storage hosts
                name = f"storage-{i + 1}"
                backend = open_storage(storage, Path(cfg.data_dir) / "volumes" / name,
                                       format=cfg.volume_format,
                                       capacity_gb=storage_capacity_gb)
                storaged = StorageDaemon(bus, backend, name,
                                         images=image_cache(Path(cfg.data_dir), name))
                tg.create_task(storaged.run(), name=name)
            if http:
                tg.create_task(_serve_http(cfg, store, bus, write_clouds=hosts > 0),
                               name="http")
            log.info("orrery_started", worker=worker, relay=relay, http=http,
                     kinds=[k.name for k in kinds], config=cfg.redacted())
            await asyncio.Event().wait()
    finally:
        if worker:
            with contextlib.suppress(NameError):
                await runtime.shutdown()
        await bus.close()
        await store.close()


async def run_hostd(cfg: Config, args: argparse.Namespace) -> None:
    """Open the bus and the hypervisor and run one host's daemon until cancelled."""
    if cfg.embedded_bus:
        log.warning("hostd_on_embedded_bus", reason="no other process can reach this host")
    bus = await open_bus(cfg)
    try:
        hypervisor = await open_hypervisor(args.hypervisor, args.libvirt_uri)
        network = None
        try:
            images = image_cache(Path(cfg.data_dir), args.host, args.images_from,
                                 args.image_cache)
            network = await open_host_network(
                args.network, state_dir=Path(cfg.data_dir) / "hosts" / args.host / "network",
                underlay_ip=args.underlay_ip, netns=args.network_netns,
                bridge_mappings=parse_bridge_mappings(args.bridge_mapping) or None)
            daemon = HostDaemon(bus, hypervisor, args.host,
                                heartbeat_every=args.heartbeat_every, images=images,
                                reconcile_every=args.reconcile_every,
                                orphan_grace=args.orphan_grace, network=network)
            await daemon.run()
        finally:
            if network is not None:
                await network.close()
            await hypervisor.close()
    finally:
        await bus.close()


async def run_storaged(cfg: Config, args: argparse.Namespace) -> None:
    """Open the bus and the storage backend and run one storage host until cancelled."""
    if cfg.embedded_bus:
        log.warning("storaged_on_embedded_bus", reason="no other process can reach this host")
    bus = await open_bus(cfg)
    try:
        root = Path(args.storage_dir or Path(cfg.data_dir) / "volumes" / args.host)
        backend = open_storage(args.backend, root, format=args.format or cfg.volume_format,
                               capacity_gb=args.capacity_gb)
        if hasattr(backend, "sweep_partials"):
            await backend.sweep_partials()
        images = image_cache(Path(cfg.data_dir), args.host, args.images_from,
                             args.image_cache)
        daemon = StorageDaemon(bus, backend, args.host, images=images,
                               heartbeat_every=args.heartbeat_every)
        await daemon.run()
    finally:
        await bus.close()


def _add_storaged(sub: Any) -> None:
    p = sub.add_parser("storaged", help="one storage host: block storage capacity, heartbeats,"
                                        " volume files")
    p.add_argument("--host", required=True, help="this host's name (queue compute.NAME)")
    p.add_argument("--backend", choices=STORAGE_BACKENDS, default="qemu-img")
    p.add_argument("--storage-dir", metavar="DIR",
                   help="where volume files live (default DATA_DIR/volumes/HOST); compute"
                        " hosts must reach it at the same path")
    p.add_argument("--format", choices=("raw", "qcow2"),
                   help="format of new volume files (default ORRERY_VOLUME_FORMAT)")
    p.add_argument("--capacity-gb", type=int, metavar="GIB",
                   help="block storage offered (default: the size of the storage file system)")
    p.add_argument("--heartbeat-every", type=float, default=5.0, metavar="SECONDS")
    p.add_argument("--images-from", metavar="DIR|URL",
                   help="where images for volumes come from (as hostd's --images-from)")
    p.add_argument("--image-cache", metavar="DIR",
                   help="this host's image cache (default DATA_DIR/hosts/HOST/images)")


def _add_hostd(sub: Any) -> None:
    p = sub.add_parser("hostd", help="one host's daemon: capacity, heartbeats, domains")
    p.add_argument("--host", required=True, help="this host's name (queue compute.NAME)")
    p.add_argument("--hypervisor", choices=HYPERVISORS, default="fake")
    p.add_argument("--libvirt-uri", default="test:///default",
                   help="libvirt connection URI (qemu:///system in production)")
    p.add_argument("--heartbeat-every", type=float, default=5.0, metavar="SECONDS")
    p.add_argument("--images-from", metavar="DIR|URL",
                   help="where images come from: the image store directory (default"
                        " DATA_DIR/images) or the API's URL")
    p.add_argument("--image-cache", metavar="DIR",
                   help="this host's image cache (default DATA_DIR/hosts/HOST/images)")
    p.add_argument("--reconcile-every", type=float, default=60.0, metavar="SECONDS")
    p.add_argument("--orphan-grace", type=float, default=300.0, metavar="SECONDS",
                   help="how long an unknown domain is left alone before it is removed")
    p.add_argument("--network", choices=NETWORK_DRIVERS, default="fake",
                   help="the data plane driver: the recording fake, or pyroute2 (netlink)")
    p.add_argument("--underlay-ip", metavar="ADDRESS",
                   help="this host's tunnel endpoint for VXLAN networks")
    p.add_argument("--bridge-mapping", action="append", default=[], metavar="PHYSNET=BRIDGE",
                   help="a physical network's pre-configured bridge (repeatable)")
    p.add_argument("--network-netns", metavar="NAME",
                   help="build the data plane inside this network namespace")


def _add_replay(sub: Any) -> None:
    from replay.cli import add_arguments

    p = sub.add_parser("replay", help="read the event log: history, state, trace, verify, …",
                       description="The replay and debug tool: reads the log directly.")
    p.add_argument("--kind", action="append", default=[], dest="extra_kinds",
                   help="extra actor kind as module:attribute (repeatable)")
    add_arguments(p)


def _replay(cfg: Config, args: argparse.Namespace) -> int:
    """``orrery replay …`` with the cloud's kinds and projections (and the timers')."""
    from actors.timers import TimerProjection
    from replay.cli import run

    kinds = {k.name: k for k in [*cloud_kinds(), *load_kinds(args.extra_kinds)]}
    projections = {p.name: p for p in [*worker_projections(), *cloud_projections(),
                                       TimerProjection(lambda *_: None)]}
    return run(args, list(kinds.values()), list(projections.values()), cfg.database_url)


def _run(main: Callable[[], Awaitable[None]]) -> int:
    async def guarded() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await main()

    CollectorPolicy().install()  # short pauses of the collector in a long-lived heap
    try:
        import uvloop

        uvloop.run(guarded())
    except ImportError:
        asyncio.run(guarded())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="orrery", description=__doc__)
    parser.add_argument("--config", help="TOML file (else $ORRERY_CONFIG)")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("up", "everything in one process (embedded defaults)"),
        ("worker", "the actor runtime and durable timers"),
        ("relay", "publish committed events to the bus"),
        ("api", "the HTTP gateway"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--kind", action="append", default=[],
                       help="extra actor kind as module:attribute (repeatable)")
        if name == "up":
            p.add_argument("--port", type=int, help="HTTP port (else ORRERY_API_PORT)")
            p.add_argument("--data-dir", help="state directory (else ORRERY_DATA_DIR)")
            p.add_argument("--hosts", type=int, default=1,
                           help="compute hosts run in-process (default 1)")
            p.add_argument("--hypervisor", choices=("auto", *HYPERVISORS), default="auto",
                           help="the hosts' hypervisor: libvirt's test driver when"
                                " libvirt-python is installed (auto), else the fake")
            p.add_argument("--storage-hosts", type=int, default=1,
                           help="storage hosts run in-process (default 1)")
            p.add_argument("--storage", choices=("auto", *STORAGE_BACKENDS), default="auto",
                           help="their backend: qemu-img files in DATA_DIR/volumes when"
                                " qemu-img is installed (auto), else the fake")
            p.add_argument("--storage-capacity-gb", type=int, metavar="GIB",
                           help="block storage each offers (default: the size of the file"
                                " system DATA_DIR is on)")
    _add_hostd(sub)
    _add_storaged(sub)
    _add_replay(sub)
    args = parser.parse_args(argv)
    try:
        cfg = load_config(path=args.config)
    except ConfigError as exc:
        print(f"orrery: {exc}", file=sys.stderr)
        return 2
    if args.command == "up":
        cfg = _up_overrides(cfg, args)
    if args.command == "replay":  # a tool at a terminal: only its warnings are news
        configure_logging("warning", cfg.log_format)
        return _replay(cfg, args)
    configure_logging(cfg.log_level, cfg.log_format)
    if args.command in ("worker", "relay", "hostd", "storaged"):
        # processes without an HTTP API still expose /metrics: on metrics_port, or on a
        # free port (logged) so that several workers can share one machine
        server, _thread = start_http_server(cfg.metrics_port, addr=cfg.api_host)
        log.info("metrics_listening", host=cfg.api_host, port=server.server_port)
    if args.command == "hostd":
        return _run(lambda: run_hostd(cfg, args))
    if args.command == "storaged":
        return _run(lambda: run_storaged(cfg, args))
    roles = {
        "up": dict(worker=True, relay=True, http=True),
        "worker": dict(worker=True, relay=False, http=False),
        "relay": dict(worker=False, relay=True, http=False),
        "api": dict(worker=False, relay=False, http=True),
    }[args.command]
    hosts = args.hosts if args.command == "up" else 0
    hypervisor = getattr(args, "hypervisor", "fake")
    if hypervisor == "auto":
        hypervisor = "libvirt" if libvirt_available() else "fake"
    storage_hosts = args.storage_hosts if args.command == "up" else 0
    storage = getattr(args, "storage", "fake")
    if storage == "auto":
        storage = "qemu-img" if qemu_img_available() else "fake"
    capacity = getattr(args, "storage_capacity_gb", None)
    return _run(lambda: run_processes(cfg, args.kind, hosts=hosts, hypervisor=hypervisor,
                                      storage_hosts=storage_hosts, storage=storage,
                                      storage_capacity_gb=capacity, **roles))


def _up_overrides(cfg: Config, args: argparse.Namespace) -> Config:
    """--port and --data-dir win over the configuration; the default SQLite log moves into
    the chosen data directory."""
    changes: dict[str, Any] = {}
    if args.port is not None:
        changes["api_port"] = args.port
    if args.data_dir is not None:
        changes["data_dir"] = args.data_dir
        if cfg.database_url == Config().database_url:
            changes["database_url"] = f"sqlite:///{Path(args.data_dir) / 'orrery.sqlite'}"
    return msgspec.structs.replace(cfg, **changes)


if __name__ == "__main__":
    sys.exit(main())
