"""Boot benchmark: servers booted through the Compute API until ACTIVE, on the fake
hypervisor; embedded (``orrery up``: SQLite, in-process bus) and real (separate
processes on PostgreSQL + RabbitMQ). Then the reads: GET one server, servers/detail.

Usage: .venv/bin/python bench/boot.py [--mode embedded|real|both] [--n 2000]
       [--clients 50] [--hosts 4] [--workers 1] [--reads 1000] [--ports] [--rate R]

Two runs of ``n`` boots each:

- throughput (closed loop): 50 clients each POST /servers, wait until the server has left
  BUILD, then the next. Boots/s is the figure; its latency is ~clients / throughput by
  Little's law, so it says little on its own.
- latency (open loop): boots sent at a fixed rate (default the issue's goal: 400/s
  embedded, 100/s real), whatever the answers, at most 50 POSTs in flight; each latency
  runs from the boot's scheduled send time to ACTIVE, so a cloud that cannot keep up with
  the rate is charged for the backlog (no coordinated omission).

One poller lists the project's BUILD servers (GET /servers?status=BUILD) with a 5 ms pause
between listings; a server whose POST had returned before a listing was sent and that is
missing from it is done at that listing. With ``--ports`` both runs are repeated with a
port per server on one tenant network, in the same deployment. At the end the ERROR
servers are counted. Real mode also shows where the paced boots' time went: each step
between two consecutive events of a boot (same correlation id, log order), p50 and p90.

Broker messages per boot: the sum of ``orrery_bus_published_total`` over every process's
/metrics (embedded: the in-process bus's count). Events per boot: rows added to the log.

CPU per boot: the CPU time every process of the deployment spent during the throughput
run (PostgreSQL backends of its database and the broker included), divided by the boots.

Ceiling (same run, same client, same machine): a plain aiohttp server answering a trivial
JSON handler (as the raw http ceiling script does), loaded by the same number of
clients; and for reads, the same plain server's GET latency with one client.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(1, str(Path(__file__).resolve().parent))

from common import (
    CpuMeter,
    fresh_database,
    percentile,
    result_line,
    run,
)

from tests.support.broker import delete_amqp_prefix

ROOT = Path(__file__).resolve().parents[1]
ORRERY = str(ROOT / ".venv" / "bin" / "orrery")
AMQP = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
PASSWORD = "bench-secret"
NOVA = {"X-OpenStack-Nova-API-Version": "2.1"}
#: the boot throughput each mode must reach (issue 3); the paced run offers this load
GOAL_RATE = {"embedded": 400.0, "real": 100.0}
#: pause between two listings of the poller, so that watching the boots does not load the
#: cloud it measures (a back-to-back poller took a quarter of the API's time); it adds at
#: most this much to a measured latency
POLL_GAP = 0.005
_DELAY = re.compile(r'^orrery_projection_delay_seconds_bucket\{le="([^"]+)",'
                    r'projection="instances_v3"\} ([0-9.e+]+)$', re.M)
_PUBLISHED = re.compile(r'^orrery_bus_published_total\{kind="(\w+)"\} ([0-9.e+]+)$', re.M)


#: the ceiling's server: a trivial msgspec JSON handler on aiohttp + uvloop, access log off
RAW_SERVER = """
import sys, msgspec, uvloop
from aiohttp import web
BODY = msgspec.json.encode({"server": {"id": "a1b2c3d4-0000-4000-8000-000000000001",
                            "status": "ACTIVE", "name": "vm-1"}})
async def handle(request):
    return web.Response(body=BODY, content_type="application/json")
app = web.Application()
app.router.add_get("/msgspec", handle)
uvloop.install()
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


#: the last $1 boots (by their request), each step between two of a boot's events (in
#: log order, same correlation id) with its p50 and p90 in ms; the slowest first
STEPS_SQL = """
WITH boots AS (
    SELECT correlation_id FROM events WHERE type = 'instance.created'
    ORDER BY position DESC LIMIT $1),
gaps AS (
    SELECT lag(e.type) OVER w || ' -> ' || e.type AS step,
           extract(epoch FROM e.occurred_at - lag(e.occurred_at) OVER w) * 1000 AS ms
    FROM events e JOIN boots USING (correlation_id)
    WINDOW w AS (PARTITION BY e.correlation_id ORDER BY e.position))
SELECT step, percentile_cont(0.5) WITHIN GROUP (ORDER BY ms),
       percentile_cont(0.9) WITHIN GROUP (ORDER BY ms)
FROM gaps WHERE step IS NOT NULL GROUP BY step ORDER BY 2 DESC"""

#: per stream: when the instance was created and when it spawned (epoch seconds)
STAMPS_SQL = """
SELECT stream, extract(epoch FROM min(occurred_at) FILTER (WHERE type = 'instance.created')),
       extract(epoch FROM min(occurred_at) FILTER (WHERE type = 'instance.spawned'))
FROM events WHERE stream = ANY($1::text[]) AND type IN ('instance.created', 'instance.spawned')
GROUP BY stream HAVING count(*) FILTER (WHERE type = 'instance.spawned') > 0"""


@dataclass
class Deployment:
    """A running cloud: its API, the /metrics of every process, how to count events."""

    url: str
    metrics: list[str]
    count_events: Callable[[], Awaitable[int]]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    #: the processes whose CPU a boot costs, by role (pids, or command-line markers)
    cpu: dict[str, list[str | int]] = field(default_factory=dict)
    #: where the last ``n`` boots' time went, step by step (PostgreSQL only)
    steps: Callable[[int], Awaitable[list[tuple[str, float, float]]]] | None = None
    #: when each of these servers was created and spawned in the log (epoch seconds)
    stamps: Callable[[list[str]], Awaitable[dict[str, tuple[float, float]]]] | None = None

    async def published(self, http: aiohttp.ClientSession) -> float:
        total = 0.0
        for url in self.metrics:
            async with http.get(url) as resp:
                text = await resp.text()
            total += sum(float(v) for _, v in _PUBLISHED.findall(text))
        return total

    async def delays(self, http: aiohttp.ClientSession) -> dict[float, float]:
        """The instances projection's delay histogram, summed over the processes: upper
        bound (s) -> batches committed at most that long after their first event."""
        buckets: dict[float, float] = {}
        for url in self.metrics:
            async with http.get(url) as resp:
                text = await resp.text()
            for le, count in _DELAY.findall(text):
                buckets[float(le)] = buckets.get(float(le), 0.0) + float(count)
        return dict(buckets)


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    out = log.open("wb")
    return subprocess.Popen([ORRERY, *args], env=env, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)


def _base_env(data_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(ORRERY_ADMIN_PASSWORD=PASSWORD, ORRERY_DATA_DIR=str(data_dir),
               ORRERY_LOG_LEVEL="warning",
               ORRERY_FAKE_HOST_CAPACITY="4096,16777216,100000")
    return env


def _count_sqlite(directory: Path) -> int:
    db = sqlite3.connect(next(directory.glob("*.sqlite")))
    try:
        return int(db.execute("SELECT count(*) FROM events").fetchone()[0])
    finally:
        db.close()


def _raw_server(port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", RAW_SERVER, str(port)],
                            start_new_session=True)


@contextlib.asynccontextmanager
async def embedded(tmp: Path, hosts: int) -> AsyncIterator[Deployment]:
    port = free_port()
    env = _base_env(tmp)
    proc = _spawn(["up", "--port", str(port), "--data-dir", str(tmp), "--hosts", str(hosts),
                   "--hypervisor", "fake"], env, tmp / "up.log")

    async def count() -> int:
        return await asyncio.to_thread(_count_sqlite, tmp)

    try:
        yield Deployment(url=f"http://127.0.0.1:{port}", metrics=[
            f"http://127.0.0.1:{port}/metrics"], count_events=count, procs=[proc],
            cpu={"up": [proc.pid]})
    finally:
        _stop([proc])


@contextlib.asynccontextmanager
async def real(tmp: Path, hosts: int, workers: int) -> AsyncIterator[Deployment]:
    async with fresh_database("boot") as dsn:
        env = _base_env(tmp)
        env.update(ORRERY_DATABASE_URL=dsn, ORRERY_AMQP_URL=AMQP,
                   ORRERY_BUS_PREFIX=f"bench{os.getpid()}")
        procs: list[subprocess.Popen[bytes]] = []
        metrics: list[str] = []
        cpu: dict[str, list[str | int]] = {"postgres": [dsn.rsplit("/", 1)[1]],
                                           "rabbitmq": ["beam.smp"]}

        def start(name: str, args: list[str]) -> None:
            port = free_port()
            metrics.append(f"http://127.0.0.1:{port}/metrics")
            procs.append(_spawn(args, {**env, "ORRERY_METRICS_PORT": str(port)},
                                tmp / f"{name}.log"))
            cpu.setdefault(name.rstrip("0123456789"), []).append(procs[-1].pid)

        api_port = free_port()
        try:
            start("relay", ["relay"])
            for i in range(workers):
                start(f"worker{i}", ["worker"])
            for i in range(hosts):
                start(f"hostd{i}", ["hostd", "--host", f"host-{i + 1}", "--hypervisor", "fake"])
            procs.append(_spawn(["api"], {**env, "ORRERY_API_PORT": str(api_port)},
                                tmp / "api.log"))
            cpu["api"] = [procs[-1].pid]
            metrics.append(f"http://127.0.0.1:{api_port}/metrics")
            conn = await asyncpg.connect(dsn)

            async def count() -> int:
                return int(await conn.fetchval("SELECT count(*) FROM events"))

            async def steps(n: int) -> list[tuple[str, float, float]]:
                rows = await conn.fetch(STEPS_SQL, n)
                return [(r[0], float(r[1]), float(r[2])) for r in rows]

            async def stamps(ids: list[str]) -> dict[str, tuple[float, float]]:
                rows = await conn.fetch(STAMPS_SQL, [f"instance:{i}" for i in ids])
                return {r[0].split(":", 1)[1]: (float(r[1]), float(r[2])) for r in rows}

            try:
                yield Deployment(url=f"http://127.0.0.1:{api_port}", metrics=metrics,
                                 count_events=count, procs=procs, cpu=cpu, steps=steps,
                                 stamps=stamps)
            finally:
                await conn.close()
        finally:
            _stop(procs)
            await delete_amqp_prefix(env["ORRERY_BUS_PREFIX"], AMQP)


class Api:
    """The few calls the benchmark makes, as the admin of project ``admin``."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http, self.url, self.token = http, url, ""

    @property
    def headers(self) -> dict[str, str]:
        return {"X-Auth-Token": self.token, **NOVA}

    async def login(self, deadline: float = 60.0) -> None:
        auth = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
            "name": "admin", "domain": {"name": "Default"}, "password": PASSWORD}}},
            "scope": {"project": {"name": "admin", "domain": {"name": "Default"}}}}}
        stop = time.monotonic() + deadline
        while True:
            try:
                async with self.http.post(f"{self.url}/identity/v3/auth/tokens",
                                          json=auth) as resp:
                    if resp.status == 201:
                        self.token = resp.headers["X-Subject-Token"]
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > stop:
                raise RuntimeError("the cloud did not come up")
            await asyncio.sleep(0.3)

    async def json(self, method: str, path: str, body: Any = None, ok: int = 200) -> Any:
        async with self.http.request(method, f"{self.url}{path}", json=body,
                                     headers=self.headers) as resp:
            if resp.status != ok:
                raise RuntimeError(f"{method} {path}: {resp.status} {await resp.text()}")
            return await resp.json() if resp.content_length != 0 else None

    async def raw(self, method: str, path: str) -> bytes:
        """The whole body of a 200 answer, undecoded."""
        async with self.http.request(method, f"{self.url}{path}",
                                     headers=self.headers) as resp:
            body = await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"{method} {path}: {resp.status} {body!r}")
            return body

    async def network(self) -> str:
        """A tenant network with a /16 subnet (room for every boot's port); its id."""
        async with self.http.post(f"{self.url}/networking/v2.0/networks", headers=self.headers,
                                  json={"network": {"name": "bench-net"}}) as resp:
            assert resp.status == 201, await resp.text()
            net = str((await resp.json())["network"]["id"])
        async with self.http.post(f"{self.url}/networking/v2.0/subnets", headers=self.headers,
                                  json={"subnet": {"network_id": net, "ip_version": 4,
                                                   "cidr": "10.128.0.0/16"}}) as resp:
            assert resp.status == 201, await resp.text()
        return net

    async def setup(self, hosts: int) -> tuple[str, str]:
        """A tiny flavor and image; waits for every host to be up. (flavor id, image id)"""
        while True:
            found = (await self.json("GET", "/compute/v2.1/os-hypervisors"))["hypervisors"]
            if sum(h["state"] == "up" for h in found) >= hosts:
                break
            await asyncio.sleep(0.3)
        flavor = await self.json("POST", "/compute/v2.1/flavors", {"flavor": {
            "name": "bench.nano", "vcpus": 1, "ram": 1, "disk": 0}})
        image = await self.json("POST", "/image/v2/images", {
            "name": "bench", "disk_format": "raw", "container_format": "bare"}, ok=201)
        async with self.http.put(f"{self.url}/image/v2/images/{image['id']}/file",
                                 data=b"\0" * 4096, headers={
                                     "X-Auth-Token": self.token,
                                     "Content-Type": "application/octet-stream"}) as resp:
            assert resp.status == 204, await resp.text()
        return str(flavor["flavor"]["id"]), str(image["id"])


class Watcher:
    """Tells when servers leave BUILD: one poller lists the project's BUILD servers, a
    pause of POLL_GAP between listings; a server whose POST had been answered before a
    listing was sent and that the listing no longer shows is done at that listing."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self._answered: dict[str, float] = {}  # id -> POST answered (perf_counter)
        self._done: dict[str, asyncio.Future[float]] = {}

    def watch(self, server_id: str) -> asyncio.Future[float]:
        """A future of the perf_counter time the server was first seen out of BUILD."""
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._answered[server_id] = time.perf_counter()
        self._done[server_id] = fut
        return fut

    async def run(self, finished: asyncio.Event) -> None:
        while not finished.is_set():
            await asyncio.sleep(POLL_GAP)
            sent = time.perf_counter()
            listing = await self.api.json("GET",
                                          "/compute/v2.1/servers?status=BUILD&limit=1000")
            seen = time.perf_counter()
            building = {s["id"] for s in listing["servers"]}
            for sid, fut in list(self._done.items()):
                if self._answered[sid] < sent and sid not in building:
                    fut.set_result(seen)
                    del self._done[sid], self._answered[sid]


class Boots:
    """Boots servers through the API with a flavor, an image and (optionally) a network."""

    def __init__(self, api: Api, flavor: str, image: str, network: str | None) -> None:
        self.api = api
        self.body = {"server": {"name": "b", "imageRef": image, "flavorRef": flavor,
                                "networks": "none" if network is None else
                                [{"uuid": network}]}}
        #: the paced boots: server id -> (scheduled send, seen out of BUILD), epoch s
        self.marks: dict[str, tuple[float, float]] = {}

    async def post(self) -> str:
        body = await self.api.json("POST", "/compute/v2.1/servers", self.body, ok=202)
        return str(body["server"]["id"])

    async def closed_loop(self, n: int, clients: int) -> tuple[float, list[float], list[str]]:
        """``clients`` clients each POST a server and wait until it is out of BUILD, then
        the next: the throughput figure. (boots/s, latencies, ids)"""
        watcher, finished = Watcher(self.api), asyncio.Event()
        latencies: list[float] = []
        ids: list[str] = []

        async def client(count: int) -> None:
            for _ in range(count):
                t0 = time.perf_counter()
                sid = await self.post()
                ids.append(sid)
                latencies.append(await watcher.watch(sid) - t0)

        async with asyncio.TaskGroup() as tg:
            tg.create_task(watcher.run(finished))
            t = time.perf_counter()
            share = [n // clients + (1 if i < n % clients else 0) for i in range(clients)]
            await asyncio.gather(*(client(c) for c in share))
            elapsed = time.perf_counter() - t
            finished.set()
        return n / elapsed, latencies, ids

    async def paced(self, n: int, rate: float, clients: int
                    ) -> tuple[float, list[float], list[float]]:
        """``n`` boots sent at ``rate`` per second whatever the answers (an open loop, at
        most ``clients`` POSTs in flight): the latency figure at that load. Each latency
        runs from the boot's scheduled send time, so a cloud that falls behind is charged
        for the wait. (achieved boots/s, latencies, the POSTs' answer times likewise)"""
        watcher, finished = Watcher(self.api), asyncio.Event()
        slots = asyncio.Semaphore(clients)
        latencies: list[float] = []
        answered: list[float] = []
        wall = time.time() - time.perf_counter()

        async def one(at: float) -> None:
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            async with slots:
                sid = await self.post()
            answered.append(time.perf_counter() - at)
            seen = await watcher.watch(sid)
            latencies.append(seen - at)
            self.marks[sid] = (at + wall, seen + wall)

        async with asyncio.TaskGroup() as tg:
            tg.create_task(watcher.run(finished))
            t = time.perf_counter()
            await asyncio.gather(*(one(t + i / rate) for i in range(n)))
            elapsed = time.perf_counter() - t
            finished.set()
        return n / elapsed, latencies, answered


async def read_figures(api: Api, ids: list[str], reads: int) -> tuple[float, float]:
    """(GET one server p99 ms, servers/detail of 1000 servers p99 ms), one client. Each
    read is timed until its whole body has arrived; the client decodes it afterwards
    (decoding 1.5 MB of JSON in the client is the client's time, not the cloud's)."""
    one: list[float] = []
    for i in range(reads):
        t = time.perf_counter()
        await api.raw("GET", f"/compute/v2.1/servers/{ids[i % len(ids)]}")
        one.append(time.perf_counter() - t)
    detail: list[float] = []
    for _ in range(max(20, reads // 20)):
        t = time.perf_counter()
        raw = await api.raw("GET", "/compute/v2.1/servers/detail?limit=1000")
        detail.append(time.perf_counter() - t)
    body = json.loads(raw)
    assert len(body["servers"]) >= min(1000, len(ids)), len(body["servers"])
    return percentile(one, 99) * 1000, percentile(detail, 99) * 1000


async def ceiling(http: aiohttp.ClientSession, clients: int, seconds: float = 3.0
                  ) -> tuple[float, float]:
    """A plain aiohttp JSON handler in a subprocess: (req/s with ``clients``, p99 ms of
    one client's GETs)."""
    port = free_port()
    proc = _raw_server(port)
    url = f"http://127.0.0.1:{port}/msgspec"
    try:
        for _ in range(100):
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(url) as resp:
                    await resp.read()
                break
            await asyncio.sleep(0.1)
        stop, count = time.perf_counter() + seconds, 0

        async def loop() -> None:
            nonlocal count
            while time.perf_counter() < stop:
                async with http.get(url) as resp:
                    await resp.read()
                count += 1

        t = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(clients)))
        rate = count / (time.perf_counter() - t)
        lat = []
        for _ in range(1000):
            t = time.perf_counter()
            async with http.get(url) as resp:
                await resp.read()
            lat.append(time.perf_counter() - t)
        return rate, percentile(lat, 99) * 1000
    finally:
        _stop([proc])


def bucket_percentile(buckets: dict[float, float], q: float) -> float:
    """The ``q``th percentile of a Prometheus histogram's cumulative buckets, linear
    within the bucket it falls in (as histogram_quantile does)."""
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total <= 0:
        return 0.0
    rank, lower, below = total * q / 100, 0.0, 0.0
    for upper in bounds:
        if buckets[upper] >= rank:
            if upper == float("inf"):
                return lower
            return lower + (upper - lower) * (rank - below) / max(buckets[upper] - below, 1e-9)
        lower, below = upper, buckets[upper]
    return lower


@dataclass
class Figures:
    """One boot variant's figures."""

    label: str
    rate: float
    latencies: list[float]
    paced_rate: float
    paced: list[float]
    cpu: dict[str, float]
    msgs: float
    events: float
    ids: list[str]
    #: the paced run's steps (step, p50 ms, p90 ms), where the deployment can tell
    steps: list[tuple[str, float, float]] = field(default_factory=list)
    #: the paced run's POSTs: from the scheduled send to the 202
    answered: list[float] = field(default_factory=list)

    def line(self, n: int, clients: int) -> str:
        return (f"{self.label}: {n} boots, {clients} clients: {self.rate:.0f} boots/s,"
                f" POST->ACTIVE p50 {percentile(self.latencies, 50) * 1000:.1f} ms,"
                f" p99 {percentile(self.latencies, 99) * 1000:.1f} ms; paced at"
                f" {self.paced_rate:.0f} boots/s: p50 {percentile(self.paced, 50) * 1000:.1f}"
                f" ms, p99 {percentile(self.paced, 99) * 1000:.1f} ms (POST answered p50"
                f" {percentile(self.answered, 50) * 1000:.1f} ms); {self.msgs:.2f} broker"
                f" messages and {self.events:.2f} events per boot; CPU ms per boot"
                f" {sum(self.cpu.values()):.1f} ("
                + ", ".join(f"{role} {ms:.2f}" for role, ms in self.cpu.items()) + ")")

    def results(self) -> dict[str, float]:
        k = self.label
        return {f"{k}_boots_per_s": self.rate,
                f"{k}_p50_ms": percentile(self.latencies, 50) * 1000,
                f"{k}_p99_ms": percentile(self.latencies, 99) * 1000,
                f"{k}_paced_per_s": self.paced_rate,
                f"{k}_paced_p50_ms": percentile(self.paced, 50) * 1000,
                f"{k}_paced_p99_ms": percentile(self.paced, 99) * 1000,
                f"{k}_msgs_per_boot": self.msgs, f"{k}_events_per_boot": self.events,
                f"{k}_cpu_ms_per_boot": sum(self.cpu.values())}


async def variant(label: str, cloud: Deployment, http: aiohttp.ClientSession, boots: Boots,
                  args: argparse.Namespace, pace: float) -> Figures:
    """The throughput run (closed loop), then the latency run (paced), of one variant."""
    await boots.closed_loop(min(50, args.n), args.clients)  # warm-up
    events0, msgs0 = await cloud.count_events(), await cloud.published(http)
    meter = CpuMeter({**cloud.cpu, "client": [os.getpid()]})
    meter.start()
    rate, lat, ids = await boots.closed_loop(args.n, args.clients)
    cpu = {role: seconds * 1000 / args.n for role, seconds in meter.stop().items()}
    events = (await cloud.count_events() - events0) / args.n
    msgs = (await cloud.published(http) - msgs0) / args.n
    delays0 = await cloud.delays(http)
    paced_rate, paced, answered = await boots.paced(args.n, pace, args.clients)
    delays = {le: n - delays0.get(le, 0.0) for le, n in (await cloud.delays(http)).items()}
    steps = await cloud.steps(args.n) if cloud.steps is not None else []
    if delays:
        steps.append(("instances projection, batch recorded -> folded (histogram)",
                      bucket_percentile(delays, 50) * 1000, bucket_percentile(delays, 90) * 1000))
    if cloud.stamps is not None:
        stamps = await cloud.stamps(list(boots.marks))
        ends = [(sent, seen, *stamps[sid]) for sid, (sent, seen) in boots.marks.items()
                if sid in stamps]
        for step, values in (("POST sent -> instance.created", [c - s for s, _, c, _ in ends]),
                             ("instance.spawned -> seen by the client",
                              [v - p for _, v, _, p in ends])):
            steps.append((step, percentile(values, 50) * 1000, percentile(values, 90) * 1000))
    return Figures(label, rate, lat, paced_rate, paced, cpu, msgs, events, ids, steps,
                   answered)


async def measure(mode: str, args: argparse.Namespace) -> None:
    pace = args.rate or GOAL_RATE[mode]
    with tempfile.TemporaryDirectory(prefix=f"orrery-bench-{mode}-") as tmpdir:
        tmp = Path(tmpdir)
        deploy = embedded(tmp, args.hosts) if mode == "embedded" else \
            real(tmp, args.hosts, args.workers)
        connector = aiohttp.TCPConnector(limit=args.clients + 8)
        async with deploy as cloud, aiohttp.ClientSession(connector=connector) as http:
            api = Api(http, cloud.url)
            await api.login()
            flavor, image = await api.setup(args.hosts)
            runs = [await variant(mode, cloud, http, Boots(api, flavor, image, None), args,
                                  pace)]
            if args.ports:
                network = await api.network()
                runs.append(await variant(f"{mode}+port", cloud, http,
                                          Boots(api, flavor, image, network), args, pace))
            listing = await api.json("GET", "/compute/v2.1/servers/detail?limit=1000"
                                            "&status=ERROR")
            errors = len(listing["servers"])
            faults = collections.Counter(
                (s.get("fault") or {}).get("message", "no fault") for s in listing["servers"])
            get_p99, detail_p99 = await read_figures(api, runs[0].ids, args.reads)
            raw_rate, raw_p99 = await ceiling(http, args.clients)
        for run in runs:
            print(run.line(args.n, args.clients))
            for step, p50, p90 in run.steps:
                print(f"  {run.label} paced, step {step}: p50 {p50:.1f} ms, p90 {p90:.1f} ms")
        shape = f"{args.hosts} hosts" + (f", {args.workers} worker(s)" if mode == "real" else "")
        print(f"{mode}: {shape}, errors {errors}; GET server p99 {get_p99:.2f} ms,"
              f" servers/detail (1000) p99 {detail_p99:.1f} ms; raw aiohttp"
              f" {raw_rate:.0f} req/s, GET p99 {raw_p99:.2f} ms")
        for message, count in faults.most_common(5):
            print(f"{mode}: {count} in ERROR with fault {message!r}")
        figures = {k: v for run in runs for k, v in run.results().items()}
        figures.update({f"{mode}_get_p99_ms": get_p99, f"{mode}_detail_p99_ms": detail_p99,
                        f"{mode}_errors": errors})
        print(result_line(figures, raw_rate, runs[0].rate / raw_rate if raw_rate else 0.0),
              flush=True)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("embedded", "real", "both"), default="both")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--hosts", type=int, default=4)
    # one worker on this 2-core machine: a second adds no CPU, only hops between processes
    # (at 100 boots/s, paced p50 73-87 ms with one, 89-108 ms with two, same hour)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--reads", type=int, default=1000)
    parser.add_argument("--no-uvloop", action="store_true")
    parser.add_argument("--ports", action="store_true",
                        help="also boot servers with a port each on one tenant network (the"
                             " networking issue's figure), beside the no-network ones, in the"
                             " same deployment")
    parser.add_argument("--rate", type=float,
                        help="boots/s of the paced latency run (default: the issue's goal,"
                             " 400 embedded, 100 real)")
    args = parser.parse_args()
    for mode in ("embedded", "real") if args.mode == "both" else (args.mode,):
        await measure(mode, args)


if __name__ == "__main__":
    run(main())
