"""Volume benchmark: volume create -> available on the qemu-img backend, and attach ->
in-use, through the Block Storage and Compute APIs; embedded (``orrery up``) and real
(separate processes on PostgreSQL + RabbitMQ: relay, worker, hostd on libvirt
test:///default, ``orrery storaged`` on qemu-img, api).

Usage: .venv/bin/python bench/volumes.py [--mode embedded|real|both] [--n 200]
       [--clients 20] [--attach 50] [--format raw|qcow2] [--workers 1]

Creates: ``n`` POST /volumes of 1 GiB, ``clients`` in flight (each waits for its volume
to be available before the next); a latency runs from the POST to the listing that first
shows the volume available (one poller lists the volumes with a 5 ms pause between
listings); volumes/s is ``n`` over the whole run. Attaches: ``attach`` servers booted and
as many volumes made first, then each volume attached to its own server, ``clients`` in
flight; a latency runs from the POST os-volume_attachments to the listing that first
shows the volume in-use.

Ceilings from the same run on the same machine: for creates, plain ``qemu-img create`` of
the same format and size in the same kind of directory, ``clients`` at a time (creates/s,
p50/p99); for attaches, plain libvirt on test:///default updating a running domain with
one more disk, one call after another (the test driver implements no attachDeviceFlags,
so the ceiling is what the driver falls back to: XMLDesc + defineXML; if a libvirt that
can attach is found, attachDeviceFlags itself is timed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(1, str(Path(__file__).resolve().parent))

from boot import AMQP, POLL_GAP, Api, Deployment, _base_env, _spawn, _stop, free_port
from common import fresh_database, percentile, result_line, run

from tests.support.broker import delete_amqp_prefix

CINDER = "/volume/v3/volumes"
#: the files are sparse: offer far more than any run claims, whatever the disk's size
CAPACITY_GB = "1000000"


def _env(tmp: Path, fmt: str) -> dict[str, str]:
    return {**_base_env(tmp), "ORRERY_VOLUME_FORMAT": fmt}


@contextlib.asynccontextmanager
async def embedded(tmp: Path, fmt: str) -> AsyncIterator[Deployment]:
    port = free_port()
    proc = _spawn(["up", "--port", str(port), "--data-dir", str(tmp), "--hosts", "1",
                   "--hypervisor", "libvirt", "--storage-hosts", "1", "--storage",
                   "qemu-img", "--storage-capacity-gb", CAPACITY_GB], _env(tmp, fmt),
                  tmp / "up.log")

    async def count() -> int:
        return 0

    try:
        yield Deployment(url=f"http://127.0.0.1:{port}", metrics=[], count_events=count,
                         procs=[proc])
    finally:
        _stop([proc])


@contextlib.asynccontextmanager
async def real(tmp: Path, fmt: str, workers: int) -> AsyncIterator[Deployment]:
    async with fresh_database("volumes") as dsn:
        env = {**_env(tmp, fmt), "ORRERY_DATABASE_URL": dsn, "ORRERY_AMQP_URL": AMQP,
               "ORRERY_BUS_PREFIX": f"benchvol{os.getpid()}"}
        procs: list[subprocess.Popen[bytes]] = []

        def start(name: str, args: list[str], **extra: str) -> None:
            procs.append(_spawn(args, {**env, "ORRERY_METRICS_PORT": str(free_port()),
                                       **extra}, tmp / f"{name}.log"))

        api_port = free_port()
        try:
            start("relay", ["relay"])
            for i in range(workers):
                start(f"worker{i}", ["worker"])
            start("hostd", ["hostd", "--host", "host-1", "--hypervisor", "libvirt",
                            "--libvirt-uri", "test:///default",
                            "--images-from", str(tmp / "images")])
            start("storaged", ["storaged", "--host", "storage-1", "--storage-dir",
                               str(tmp / "volumes"), "--images-from", str(tmp / "images"),
                               "--capacity-gb", CAPACITY_GB])
            start("api", ["api"], ORRERY_API_PORT=str(api_port))
            conn = await asyncpg.connect(dsn)

            async def count() -> int:
                return int(await conn.fetchval("SELECT count(*) FROM events"))

            try:
                yield Deployment(url=f"http://127.0.0.1:{api_port}", metrics=[],
                                 count_events=count, procs=procs)
            finally:
                await conn.close()
        finally:
            _stop(procs)
            await delete_amqp_prefix(env["ORRERY_BUS_PREFIX"], AMQP)


class Watcher:
    """Tells when volumes reach a status: one poller lists the project's volumes in that
    status, a pause of POLL_GAP between listings."""

    def __init__(self, api: Api, status: str) -> None:
        self.api, self.status = api, status
        self._done: dict[str, asyncio.Future[float]] = {}

    def watch(self, volume_id: str) -> asyncio.Future[float]:
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._done[volume_id] = fut
        return fut

    async def run(self, finished: asyncio.Event) -> None:
        while not finished.is_set():
            await asyncio.sleep(POLL_GAP)
            listing = await self.api.json(
                "GET", f"{CINDER}?status={self.status}&limit=1000")
            seen = time.perf_counter()
            for v in listing["volumes"]:
                fut = self._done.pop(v["id"], None)
                if fut is not None and not fut.done():
                    fut.set_result(seen)
            failed = await self.api.json("GET", f"{CINDER}?status=error&limit=1000")
            for v in failed["volumes"]:
                fut = self._done.pop(v["id"], None)
                if fut is not None and not fut.done():
                    fut.set_exception(RuntimeError(f"volume {v['id']} went to error"))


async def _closed_loop(n: int, clients: int, one: Callable[[int], Awaitable[float]]
                       ) -> tuple[float, list[float]]:
    """``n`` operations, ``clients`` in flight: (operations/s, latencies in s)."""
    gate = asyncio.Semaphore(clients)
    lat: list[float] = []

    async def guarded(i: int) -> None:
        async with gate:
            lat.append(await one(i))

    started = time.perf_counter()
    await asyncio.gather(*(guarded(i) for i in range(n)))
    return n / (time.perf_counter() - started), lat


async def creates(api: Api, n: int, clients: int) -> tuple[float, list[float], list[str]]:
    watcher, finished = Watcher(api, "available"), asyncio.Event()
    poller = asyncio.create_task(watcher.run(finished))
    made: list[str] = []

    async def one(_i: int) -> float:
        sent = time.perf_counter()
        body = await api.json("POST", CINDER, {"volume": {"size": 1}}, ok=202)
        made.append(body["volume"]["id"])
        return await watcher.watch(body["volume"]["id"]) - sent

    try:
        rate, lat = await _closed_loop(n, clients, one)
    finally:
        finished.set()
        await poller
    return rate, lat, made


async def attaches(api: Api, servers: list[str], volumes: list[str],
                   clients: int) -> tuple[float, list[float]]:
    watcher, finished = Watcher(api, "in-use"), asyncio.Event()
    poller = asyncio.create_task(watcher.run(finished))

    async def one(i: int) -> float:
        sent = time.perf_counter()
        done = watcher.watch(volumes[i])
        await api.json("POST", f"/compute/v2.1/servers/{servers[i]}/os-volume_attachments",
                       {"volumeAttachment": {"volumeId": volumes[i]}})
        return await done - sent

    try:
        return await _closed_loop(len(servers), clients, one)
    finally:
        finished.set()
        await poller


async def boot_servers(api: Api, n: int) -> list[str]:
    flavor, image = await api.setup(1)
    ids = []
    for _ in range(n):
        body = await api.json("POST", "/compute/v2.1/servers", {"server": {
            "name": "b", "imageRef": image, "flavorRef": flavor, "networks": "none"}}, ok=202)
        ids.append(str(body["server"]["id"]))
    while True:
        listing = await api.json("GET", "/compute/v2.1/servers/detail?limit=1000")
        states = {s["id"]: s["status"] for s in listing["servers"]}
        if all(states.get(i) == "ACTIVE" for i in ids):
            return ids
        if any(states.get(i) == "ERROR" for i in ids):
            raise RuntimeError("a benchmark server went to ERROR")
        await asyncio.sleep(0.2)


async def wait_storage(api: Api) -> None:
    while True:
        found = (await api.json("GET", "/volume/v3/os-services"))["services"]
        if any(s["state"] == "up" for s in found):
            return
        await asyncio.sleep(0.3)


# -- the raw ceilings ----------------------------------------------------------------------


async def raw_creates(directory: Path, n: int, clients: int, fmt: str
                      ) -> tuple[float, list[float]]:
    """Plain ``qemu-img create -f fmt <file> 1G``, ``clients`` at a time."""
    await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)

    async def one(i: int) -> float:
        t = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            "qemu-img", "create", "-q", "-f", fmt, str(directory / f"raw-{i}"), "1G")
        if await proc.wait() != 0:
            raise RuntimeError("qemu-img create failed")
        return time.perf_counter() - t

    return await _closed_loop(n, clients, one)


def raw_attaches(n: int) -> tuple[str, float, list[float]]:
    """Plain libvirt on test:///default: a running domain given one more disk ``n`` times
    (attachDeviceFlags, or where the driver has none its XMLDesc + defineXML fallback):
    (what was timed, ops/s, latencies)."""
    import libvirt  # type: ignore[import-untyped]

    from hostd.domain_xml import volume_disk_xml, with_disk
    from schemas.hostd import DomainSpec, VolumeDisk

    libvirt.registerErrorHandler(lambda _c, _e: None, None)
    conn = libvirt.open("test:///default")
    uid = str(uuid.uuid4())
    from hostd.domain_xml import build_domain_xml

    spec = DomainSpec(uuid=uid, name="raw", vcpus=1, ram_mb=64, disk_gb=1,
                      image_path="/tmp/raw-root")
    dom = conn.defineXML(build_domain_xml(spec, "test"))
    dom.create()
    lat: list[float] = []
    how = "attachDeviceFlags"
    flags = libvirt.VIR_DOMAIN_AFFECT_LIVE | libvirt.VIR_DOMAIN_AFFECT_CONFIG
    try:
        started = time.perf_counter()
        for i in range(n):
            disk = VolumeDisk(device=f"vd{chr(ord('b') + i % 24)}{i // 24 or ''}",
                              path=f"/raw/volume-{i}", serial=str(i))
            t = time.perf_counter()
            try:
                if how == "attachDeviceFlags":
                    dom.attachDeviceFlags(volume_disk_xml(disk), flags)
                else:
                    conn.defineXML(with_disk(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE),
                                             disk))
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT:
                    raise
                how = "XMLDesc+defineXML"
                conn.defineXML(with_disk(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE), disk))
            lat.append(time.perf_counter() - t)
        return how, n / (time.perf_counter() - started), lat
    finally:
        dom.destroy()
        dom.undefine()
        conn.close()


def _ms(values: list[float], p: float) -> float:
    return percentile(values, p) * 1000


async def measure(mode: str, args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix=f"orrery-bench-volumes-{mode}-",
                                     dir=args.tmp) as tmpdir:
        tmp = Path(tmpdir)
        deploy: Any = embedded(tmp, args.format) if mode == "embedded" else \
            real(tmp, args.format, args.workers)
        connector = aiohttp.TCPConnector(limit=args.clients + 8)
        async with deploy as cloud, aiohttp.ClientSession(connector=connector) as http:
            api = Api(http, cloud.url)
            await api.login()
            await wait_storage(api)
            await creates(api, min(20, args.n), args.clients)  # warm-up
            rate, lat, _ = await creates(api, args.n, args.clients)
            servers = await boot_servers(api, args.attach)
            _, _, fresh = await creates(api, args.attach, args.clients)
            attach_rate, attach_lat = await attaches(api, servers, fresh, args.clients)
        raw_rate, raw_lat = await raw_creates(tmp / "raw", args.n, args.clients, args.format)
        how, raw_attach_rate, raw_attach_lat = await asyncio.to_thread(
            raw_attaches, args.attach)
    print(f"{mode}: {args.n} volume creates ({args.format}, 1 GiB), {args.clients} at a time:"
          f" {rate:.1f} volumes/s, create->available p50 {_ms(lat, 50):.1f} ms,"
          f" p99 {_ms(lat, 99):.1f} ms; raw qemu-img create {raw_rate:.1f}/s,"
          f" p50 {_ms(raw_lat, 50):.1f} ms, p99 {_ms(raw_lat, 99):.1f} ms")
    print(f"{mode}: {args.attach} attaches, {args.clients} at a time: {attach_rate:.1f}/s,"
          f" attach->in-use p50 {_ms(attach_lat, 50):.1f} ms, p99"
          f" {_ms(attach_lat, 99):.1f} ms; raw libvirt test:///default ({how})"
          f" {raw_attach_rate:.0f}/s, p50 {_ms(raw_attach_lat, 50):.2f} ms,"
          f" p99 {_ms(raw_attach_lat, 99):.2f} ms")
    print(result_line({f"{mode}_volumes_per_s": rate,
                       f"{mode}_create_p50_ms": _ms(lat, 50),
                       f"{mode}_create_p99_ms": _ms(lat, 99),
                       f"{mode}_attach_p50_ms": _ms(attach_lat, 50),
                       f"{mode}_attach_p99_ms": _ms(attach_lat, 99),
                       "raw_attach_p50_ms": _ms(raw_attach_lat, 50),
                       "raw_attach_p99_ms": _ms(raw_attach_lat, 99)},
                      raw_rate, rate / raw_rate if raw_rate else 0.0), flush=True)


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--mode", choices=("embedded", "real", "both"), default="both")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--attach", type=int, default=50)
    parser.add_argument("--format", choices=("raw", "qcow2"), default="raw")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--tmp", help="where the volume files go (default: the system's)")
    parser.add_argument("--no-uvloop", action="store_true")
    args = parser.parse_args()
    for mode in ("embedded", "real") if args.mode == "both" else (args.mode,):
        await measure(mode, args)


if __name__ == "__main__":
    run(main())
