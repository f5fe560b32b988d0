"""Time from the API's network create to a working data plane on a host, vs plain pyroute2.

Usage: PYTHONPATH=. .venv/bin/python bench/dataplane.py [--networks 50] [--no-uvloop]   (as root)

End to end (the figure of the result line): a whole cloud in this process on the embedded
backends (SQLite log, in-process bus, the host network planner) and one hostd whose
pyroute2 driver works in a fresh network namespace standing for the host. Per network,
timed from the first request until the host has it: POST /networks (VXLAN), POST
/subnets (/24, DHCP on), POST /ports, and the port bound to the host as the boot saga
binds it (``port.bind``; no VM is started); it ends when the hostd has applied a desired
set carrying the network with its DHCP (bridge, VXLAN device with its flood list, DHCP
namespace and veth, dnsmasq started and bound). Each network's dnsmasq is checked to run.

Also, the driver alone: Pyroute2HostNetwork.ensure_network per network in another
namespace. Ceiling, in the same run in a third namespace: the same devices made with
plain synchronous pyroute2 calls and the same dnsmasq, without any of the driver's
checks. Ratio = ceiling p50 / end-to-end p50. Everything made is removed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from pyroute2 import IPRoute, netns

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(1, str(Path(__file__).resolve().parent))

from common import loop_name, percentile, result_line, run

from actors.client import ActorClient
from actors.port import BindPort
from actors.runtime import ActorRuntime
from actors.timers import TimerService
from bus.memory import MemoryBus
from bus.routing import Names
from hostd.daemon import HostDaemon
from hostd.dnsmasq import dnsmasq_args
from hostd.fake import FakeHypervisor
from hostd.net_pyroute2 import Pyroute2HostNetwork
from orrery.bootstrap import bootstrap, make_cloud_app
from orrery.services import (
    cloud_apis,
    cloud_effects,
    cloud_kinds,
    cloud_projections,
    cloud_services,
    worker_projections,
)
from orrery.wiring import event_types
from schemas.hostnet import DhcpSpec, NetworkSpec, SubnetSpec
from store.projections import ProjectionRunner
from store.relay import Relay
from store.sqlite import SqliteEventStore

UNDERLAY, PEER = "192.0.2.1", "192.0.2.2"


def spec(i: int) -> NetworkSpec:
    """Network i: VNI 1000+i, a /24 of its own, DHCP with one static entry."""
    net = f"10.{i // 250}.{i % 250}"
    return NetworkSpec(
        network_id=str(uuid.uuid4()), type="vxlan", segmentation_id=1000 + i, mtu=1450,
        peers=(PEER,), subnets=(SubnetSpec(subnet_id="s", cidr=f"{net}.0/24",
                                           gateway_ip=f"{net}.1"),),
        dhcp=DhcpSpec(mac="fa:16:3e:00:00:02", ips=(f"{net}.2",)))


PASSWORD = "bench-secret"
HOST = "bench-host"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def cloud(tmp: Path) -> AsyncIterator[tuple[str, ActorClient, aiohttp.ClientSession]]:
    """The cloud as ``orrery up`` runs it (without hosts), serving on a free port."""
    kinds = cloud_kinds()
    store = await SqliteEventStore.open(tmp / "log.sqlite", event_types(kinds))
    bus = MemoryBus(Names(prefix=f"bench{uuid.uuid4().hex[:6]}"))
    tasks: list[asyncio.Task[None]] = []
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(store.close)
        stack.push_async_callback(bus.close)
        seen = {p.name: p for p in [*worker_projections(), *cloud_projections()]}
        for projection in seen.values():
            await stack.enter_async_context(ProjectionRunner(store, projection))
        await stack.enter_async_context(ActorRuntime(
            store, bus, kinds, effect_handlers=cloud_effects(store, bus)))
        for part in (TimerService(store, bus), Relay(store, bus),
                     *cloud_services(store, bus)):
            tasks.append(asyncio.create_task(part.run()))
        client = ActorClient(bus, timeout=30)
        await bootstrap(store, client, password=PASSWORD)
        app = make_cloud_app(store, client, apis=cloud_apis(store, client, str(tmp / "data")))
        runner = aiohttp.web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await aiohttp.web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            async with aiohttp.ClientSession() as http:
                yield f"http://127.0.0.1:{port}", client, http
        finally:
            await runner.cleanup()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def admin_token(http: aiohttp.ClientSession, url: str) -> str:
    body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": "admin", "domain": {"name": "Default"}, "password": PASSWORD}}},
        "scope": {"project": {"name": "admin", "domain": {"name": "Default"}}}}}
    async with http.post(f"{url}/identity/v3/auth/tokens", json=body) as resp:
        assert resp.status == 201, await resp.text()
        return str(resp.headers["X-Subject-Token"])


async def post(http: aiohttp.ClientSession, url: str, token: str, body: dict[str, Any]
               ) -> dict[str, Any]:
    async with http.post(url, json=body, headers={"X-Auth-Token": token}) as resp:
        assert resp.status == 201, await resp.text()
        return dict(await resp.json())


async def end_to_end(count: int, host_ns: str, tmp: Path) -> list[float]:
    """Seconds from POST /networks to the host having the network with its DHCP."""
    net = await Pyroute2HostNetwork.open(netns=host_ns, underlay_ip=UNDERLAY,
                                         state_dir=tmp / "e2e", dhcp_netns_prefix=f"{host_ns}-d-")
    times: list[float] = []
    try:
        async with cloud(tmp) as (url, client, http):
            daemon = HostDaemon(client.bus, FakeHypervisor(), HOST, heartbeat_every=1.0,
                                reconcile_every=3600.0, network=net)
            task = asyncio.create_task(daemon.run())
            try:
                token = await admin_token(http, url)
                sync = daemon.sync
                assert sync is not None
                await sync.wait_for(lambda _desired: True)
                neutron = f"{url}/networking/v2.0"
                for i in range(count):
                    start = time.perf_counter()
                    got = await post(http, f"{neutron}/networks", token,
                                     {"network": {"name": f"bench{i}"}})
                    network_id = got["network"]["id"]
                    cidr = f"10.{i // 250}.{i % 250}.0/24"
                    await post(http, f"{neutron}/subnets", token, {"subnet": {
                        "network_id": network_id, "cidr": cidr, "ip_version": 4}})
                    port = await post(http, f"{neutron}/ports", token,
                                      {"port": {"network_id": network_id}})
                    reply = await client.call("port", port["port"]["id"], BindPort(
                        host_id=HOST, device_id=str(uuid.uuid4())))
                    assert reply.ok, reply
                    await sync.wait_for(lambda d, nid=network_id: any(
                        n.network_id == nid and n.dhcp is not None for n in d.networks))
                    times.append(time.perf_counter() - start)
                view = await net.inspect()
                running = sum(1 for d in view.dhcp.values() if d.running)
                assert running == count, f"{running} of {count} dnsmasq running"
            finally:
                daemon.shutdown()
                await asyncio.wait_for(task, 30)
    finally:
        await net.close()
    return times


def make_host(name: str) -> None:
    netns.create(name)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)


async def ours(specs: list[NetworkSpec], host: str, state: Path) -> list[float]:
    """Seconds per ensure_network through the driver."""
    net = await Pyroute2HostNetwork.open(netns=host, underlay_ip=UNDERLAY, state_dir=state,
                                         dhcp_netns_prefix=f"{host}-d-")
    try:
        await net.capabilities()
        times = []
        for one in specs:
            start = time.perf_counter()
            await net.ensure_network(one)
            times.append(time.perf_counter() - start)
        for one in specs:
            await net.remove_network(one.network_id)
        return times
    finally:
        await net.close()


def raw(specs: list[NetworkSpec], host: str, state: Path) -> list[float]:
    """Seconds per network made with plain pyroute2 calls and the same dnsmasq."""
    times = []
    pids: list[Path] = []
    with IPRoute(netns=host, flags=0) as ipr:
        for i, one in enumerate(specs):
            start = time.perf_counter()
            ns = f"{host}-d-{i}"
            netns.create(ns)
            ipr.link("add", ifname=f"rb{i}", kind="bridge", br_stp_state=0)
            br = ipr.link_lookup(ifname=f"rb{i}")[0]
            ipr.link("set", index=br, state="up", mtu=one.mtu)
            ipr.link("add", ifname=f"rv{i}", kind="vxlan", vxlan_id=one.segmentation_id,
                     vxlan_local=UNDERLAY, vxlan_port=4789)
            vx = ipr.link_lookup(ifname=f"rv{i}")[0]
            ipr.link("set", index=vx, master=br, mtu=one.mtu, state="up")
            ipr.fdb("append", ifindex=vx, lladdr="00:00:00:00:00:00", dst=PEER)
            ipr.link("add", ifname=f"rd{i}", kind="veth", peer=f"rn{i}")
            ipr.link("set", index=ipr.link_lookup(ifname=f"rd{i}")[0], master=br, state="up")
            ipr.link("set", index=ipr.link_lookup(ifname=f"rn{i}")[0], net_ns_fd=ns)
            with IPRoute(netns=ns, flags=0) as inside:
                end = inside.link_lookup(ifname=f"rn{i}")[0]
                inside.link("set", index=end, address="fa:16:3e:00:00:02", state="up")
                inside.addr("add", index=end, address=one.dhcp.ips[0], prefixlen=24)
            files = state / str(i)
            files.mkdir(parents=True)
            (files / "hosts").write_text("")
            subprocess.run(["ip", "netns", "exec", ns,
                            *dnsmasq_args(one, f"rn{i}", files, "root")], check=True)
            pids.append(files / "pid")
            times.append(time.perf_counter() - start)
    for pid in pids:
        subprocess.run(["kill", pid.read_text().strip()], check=False)
    return times


def remove_namespaces(prefix: str) -> None:
    for name in netns.listnetns():
        if name.startswith(prefix):
            netns.remove(name)


def stop_dnsmasqs(state: Path) -> None:
    """Kill every dnsmasq whose pid file lies under ``state``."""
    for pid_file in state.glob("**/pid"):
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


def figures(label: str, times: list[float]) -> tuple[float, float]:
    p50, p99 = percentile(times, 50) * 1000, percentile(times, 99) * 1000
    print(f"{label:34s} p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  ({len(times)} networks)")
    return p50, p99


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--networks", type=int, default=50)
    ap.add_argument("--no-uvloop", action="store_true")
    args = ap.parse_args()
    prefix = f"obench{uuid.uuid4().hex[:6]}"
    specs = [spec(i) for i in range(args.networks)]
    with tempfile.TemporaryDirectory() as tmp:
        try:
            make_host(prefix + "e")
            e2e = await end_to_end(args.networks, prefix + "e", Path(tmp))
            make_host(prefix + "o")
            mine = await ours(specs, prefix + "o", Path(tmp) / "ours")
            make_host(prefix + "r")
            ceiling = await asyncio.to_thread(raw, specs, prefix + "r", Path(tmp) / "raw")
        finally:
            stop_dnsmasqs(Path(tmp))
            remove_namespaces(prefix)
    print(f"loop {loop_name()}: network create -> bridge + vxlan + dnsmasq bound on a host")
    p50, p99 = figures("end to end (API -> log -> hostd)", e2e)
    figures("driver alone (ensure_network)", mine)
    raw50, _ = figures("ceiling (plain pyroute2 + dnsmasq)", ceiling)
    print(result_line({"p50_ms": p50, "p99_ms": p99}, raw50, raw50 / p50 if p50 else 0.0))


if __name__ == "__main__":
    run(main())
