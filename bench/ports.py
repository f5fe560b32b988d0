"""Port benchmark: 1,000 port creates on one /24, 50 at a time, through the Networking
API; embedded (``orrery up``) and real (separate processes on PostgreSQL + RabbitMQ).

Usage: .venv/bin/python bench/ports.py [--mode embedded|real|both] [--n 1000]
       [--clients 50] [--workers 2]

Each run makes a fresh network and /24 subnet (the DHCP port takes one address), fires
``n`` POST /ports with ``clients`` in flight, and reports creates answered per second
(201s and 409s both count: each is a full decision by the subnet's pool), the 201
latency p50/p99, and checks that at most 253 succeeded with no address twice. The
ceiling is boot.py's: a plain aiohttp JSON handler loaded by the same clients.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(1, str(Path(__file__).resolve().parent))

from boot import Api, ceiling, embedded, real
from common import percentile, result_line, run


async def create_all(api: Api, network_id: str, n: int, clients: int
                     ) -> tuple[float, list[float], list[str], int]:
    """(answers/s, latencies of the 201s, their addresses, how many were 409)."""
    gate = asyncio.Semaphore(clients)
    lat: list[float] = []
    addresses: list[str] = []
    refused = 0

    async def one() -> None:
        nonlocal refused
        async with gate:
            t = time.perf_counter()
            async with api.http.post(f"{api.url}/networking/v2.0/ports", headers=api.headers,
                                     json={"port": {"network_id": network_id}}) as resp:
                body = await resp.json()
                if resp.status == 201:
                    lat.append(time.perf_counter() - t)
                    addresses.append(body["port"]["fixed_ips"][0]["ip_address"])
                elif resp.status == 409:
                    refused += 1
                else:
                    raise RuntimeError(f"POST /ports: {resp.status} {body}")

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    return n / (time.perf_counter() - started), lat, addresses, refused


async def fresh_subnet(api: Api, name: str) -> str:
    net = await api.json("POST", "/networking/v2.0/networks",
                         {"network": {"name": name}}, ok=201)
    await api.json("POST", "/networking/v2.0/subnets", {"subnet": {
        "network_id": net["network"]["id"], "cidr": "10.0.0.0/24", "ip_version": 4}}, ok=201)
    return str(net["network"]["id"])


async def measure(mode: str, args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix=f"orrery-bench-ports-{mode}-") as tmpdir:
        tmp = Path(tmpdir)
        deploy = embedded(tmp, 0) if mode == "embedded" else real(tmp, 0, args.workers)
        connector = aiohttp.TCPConnector(limit=args.clients + 8)
        async with deploy as cloud, aiohttp.ClientSession(connector=connector) as http:
            api = Api(http, cloud.url)
            await api.login()
            await create_all(api, await fresh_subnet(api, "warm-up"), 100, args.clients)
            rate, lat, addresses, refused = await create_all(
                api, await fresh_subnet(api, "bench"), args.n, args.clients)
            raw_rate, _ = await ceiling(http, args.clients)
        assert len(addresses) <= 253 and len(set(addresses)) == len(addresses), addresses
        print(f"{mode}: {args.n} port creates on a /24, {args.clients} at a time:"
              f" {rate:.0f} answers/s, {len(addresses)} created, {refused} refused 409,"
              f" created p50 {percentile(lat, 50) * 1000:.1f} ms,"
              f" p99 {percentile(lat, 99) * 1000:.1f} ms; raw aiohttp {raw_rate:.0f} req/s")
        print(result_line({f"{mode}_ports_per_s": rate,
                           f"{mode}_p50_ms": percentile(lat, 50) * 1000,
                           f"{mode}_p99_ms": percentile(lat, 99) * 1000,
                           f"{mode}_created": len(addresses)},
                          raw_rate, rate / raw_rate if raw_rate else 0.0), flush=True)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("embedded", "real", "both"), default="both")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-uvloop", action="store_true")
    args = parser.parse_args()
    for mode in ("embedded", "real") if args.mode == "both" else (args.mode,):
        await measure(mode, args)


if __name__ == "__main__":
    run(main())
