"""Time from a network spec given to a working data plane on a host, vs plain pyroute2.

Usage: PYTHONPATH=. .venv/bin/python bench/dataplane.py [--networks 50] [--no-uvloop]   (as root)

In a fresh network namespace standing for the host, Pyroute2HostNetwork.ensure_network
builds one VXLAN network after another (bridge, VXLAN device with a peer, DHCP namespace
and veth, dnsmasq started and bound); each call is timed until it returns. Ceiling,
measured in the same run in another fresh namespace: the same devices made with plain
synchronous pyroute2 calls and the same dnsmasq started the same way, without any of
the driver's checks. Ratio = ceiling p50 / ours p50. Everything made is removed.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from common import loop_name, percentile, result_line, run
from pyroute2 import IPRoute, netns

from hostd.dnsmasq import dnsmasq_args
from hostd.net_pyroute2 import Pyroute2HostNetwork
from schemas.hostnet import DhcpSpec, NetworkSpec, SubnetSpec

UNDERLAY, PEER = "192.0.2.1", "192.0.2.2"


def spec(i: int) -> NetworkSpec:
    """Network i: VNI 1000+i, a /24 of its own, DHCP with one static entry."""
    net = f"10.{i // 250}.{i % 250}"
    return NetworkSpec(
        network_id=str(uuid.uuid4()), type="vxlan", segmentation_id=1000 + i, mtu=1450,
        peers=(PEER,), subnets=(SubnetSpec(subnet_id="s", cidr=f"{net}.0/24",
                                           gateway_ip=f"{net}.1"),),
        dhcp=DhcpSpec(mac="fa:16:3e:00:00:02", ips=(f"{net}.2",)))


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
            make_host(prefix + "o")
            mine = await ours(specs, prefix + "o", Path(tmp) / "ours")
            make_host(prefix + "r")
            ceiling = await asyncio.to_thread(raw, specs, prefix + "r", Path(tmp) / "raw")
        finally:
            remove_namespaces(prefix)
    print(f"loop {loop_name()}: network spec -> bridge + vxlan + dnsmasq bound")
    p50, p99 = figures("ours (Pyroute2HostNetwork)", mine)
    raw50, _ = figures("ceiling (plain pyroute2 + dnsmasq)", ceiling)
    print(result_line({"p50_ms": p50, "p99_ms": p99}, raw50, raw50 / p50 if p50 else 0.0))


if __name__ == "__main__":
    run(main())
