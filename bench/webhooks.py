"""Webhook delivery lag: events committed at a steady rate, each delivered to 10 receivers;
the time from an append's commit to the receiver getting the POST, p50/p99.

Usage: .venv/bin/python bench/webhooks.py [--mode embedded|real|both] [--rate 500]
       [--seconds 20] [--receivers 10] [--resources 500]

The dispatcher (webhooks.dispatcher, as ``orrery worker`` runs it) follows a fresh log
(SQLite, or a fresh PostgreSQL database) in this process; ``receivers`` subscriptions
(``bench.#``) each point at their own port of a receiver process (plain aiohttp on uvloop,
answering 204 and noting the arrival time of each ``webhook-id``). A producer appends
``rate`` events per second, round robin over ``resources`` streams, and notes when each
append returned (its commit). Lag = arrival - commit, over every (event, receiver).

Ceiling (same run, same receivers, same rate): a plain aiohttp client that POSTs each
event's body to the 10 receivers the moment it is "committed", with no log, no outbox,
no signature; its lag is what HTTP alone costs at that load. Goal: p99 <= 200 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(1, str(Path(__file__).resolve().parent))

from common import Payload, fresh_database, make_payload, percentile, result_line, run

from actors.client import ActorClient
from actors.subscription import SUBSCRIPTION_EVENTS, SubscriptionCreated, new_secret
from bus.memory import MemoryBus
from bus.routing import Names
from schemas import SYSTEM_EVENTS, NewEvent
from store.protocol import ANY_VERSION, NO_STREAM
from store.registry import EventTypes
from webhooks.destinations import DestinationPolicy
from webhooks.dispatcher import Dispatcher, DispatcherSettings
from webhooks.outbox import RetryPolicy

PROJECT = "bench-project"

#: the receivers: one aiohttp app on N ports; a POST notes (webhook-id, or x-id for the
#: ceiling's, arrival time) by port and path; GET /arrivals?path= answers them as JSON
RECEIVER = r"""
import json, sys, time, uvloop
from aiohttp import web
arrivals = {}
async def hook(request):
    body = await request.read()
    key = request.headers.get("webhook-id") or request.headers["x-id"]
    here = request.transport.get_extra_info("sockname")[1]
    arrivals.setdefault((here, request.path), []).append((key, time.time()))
    return web.Response(status=204)
def mine(request):
    here = request.transport.get_extra_info("sockname")[1]
    return arrivals.get((here, request.query["path"]), [])
async def dump(request):
    return web.json_response(mine(request))
async def count(request):
    return web.json_response(len(mine(request)))
async def main():
    runners = []
    for port in sys.argv[1:]:
        app = web.Application()
        app.router.add_post("/{tail:.*}", hook)
        app.router.add_get("/arrivals", dump)
        app.router.add_get("/count", count)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", int(port)).start()
        runners.append(runner)
    print("ready", flush=True)
    await asyncio.Event().wait()
import asyncio
uvloop.run(main())
"""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def receivers(count: int) -> Any:
    ports = [free_port() for _ in range(count)]
    proc = subprocess.Popen([sys.executable, "-c", RECEIVER, *map(str, ports)],
                            stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        yield ports
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@contextlib.asynccontextmanager
async def open_store(mode: str, types: EventTypes) -> AsyncIterator[Any]:
    if mode == "embedded":
        from store.sqlite import SqliteEventStore

        with tempfile.TemporaryDirectory(prefix="orrery-bench-webhooks-") as tmp:
            store = await SqliteEventStore.open(Path(tmp) / "log.sqlite", types)
            try:
                yield store
            finally:
                await store.close()
        return
    from store.postgres import PostgresEventStore

    async with fresh_database("webhooks") as dsn:
        store = await PostgresEventStore.connect(dsn, types)
        try:
            yield store
        finally:
            await store.close()


async def subscribe(store: Any, ports: list[int]) -> None:
    """One subscription per receiver, appended as its actor would record it."""
    for port in ports:
        sid = str(uuid.uuid4())
        created = SubscriptionCreated(
            subscription_id=sid, project_id=PROJECT, url=f"http://127.0.0.1:{port}/hook",
            event_types=("bench.#",), description="bench", secret=new_secret(),
            all_projects=False, at=dt.datetime.now(dt.UTC).isoformat())
        await store.append(f"subscription:{sid}", [NewEvent(
            type="subscription.created", data=msgspec.json.encode(created),
            project_id=PROJECT)], NO_STREAM)


async def paced(rate: int, seconds: float, send: Callable[[int], Awaitable[None]]) -> None:
    """Call ``send(i)`` ``rate`` times a second for ``seconds``, each on its own task."""
    total, tick = int(rate * seconds), 0.01
    per_tick = max(1, round(rate * tick))
    started, tasks, i = time.perf_counter(), [], 0
    while i < total:
        for _ in range(min(per_tick, total - i)):
            tasks.append(asyncio.create_task(send(i)))
            i += 1
        delay = started + (i / rate) - time.perf_counter()
        await asyncio.sleep(max(0.0, delay))
    await asyncio.gather(*tasks)


async def collect(http: aiohttp.ClientSession, ports: list[int], path: str, want: int,
                  timeout: float) -> dict[str, list[float]]:
    """Arrival times by id once every receiver has ``want`` (or after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        counts = [await _get(http, port, "count", path) for port in ports]
        if min(counts) >= want:
            break
        await asyncio.sleep(0.2)
    arrivals: dict[str, list[float]] = {}
    for port in ports:
        for key, at in await _get(http, port, "arrivals", path):
            arrivals.setdefault(key, []).append(at)
    return arrivals


async def _get(http: aiohttp.ClientSession, port: int, what: str, path: str) -> Any:
    async with http.get(f"http://127.0.0.1:{port}/{what}", params={"path": path}) as resp:
        return await resp.json()


def lags(commits: dict[str, float], arrivals: dict[str, list[float]]) -> list[float]:
    return [at - commits[key] for key, ats in arrivals.items() if key in commits
            for at in ats]


async def ours(store: Any, ports: list[int], args: argparse.Namespace,
               http: aiohttp.ClientSession) -> tuple[list[float], int]:
    await subscribe(store, ports)
    settings = DispatcherSettings(retry=RetryPolicy(base=0.5),
                                  destinations=DestinationPolicy(allow_loopback=True))
    client = ActorClient(MemoryBus(Names(prefix=f"bench{uuid.uuid4().hex[:6]}")))
    dispatcher = asyncio.create_task(Dispatcher(store, client, settings).run())
    commits: dict[str, float] = {}

    async def append(i: int) -> None:
        event = NewEvent(type="bench.instance_state", data=make_payload(i), project_id=PROJECT)
        await store.append(f"bench:r{i % args.resources}", [event], ANY_VERSION)
        commits[str(event.event_id)] = time.time()

    try:
        await paced(args.rate, args.seconds, append)
        arrivals = await collect(http, ports, "/hook", len(commits), 120)
    finally:
        dispatcher.cancel()
        await asyncio.gather(dispatcher, return_exceptions=True)
    return lags(commits, arrivals), sum(len(a) for a in arrivals.values())


async def raw(ports: list[int], args: argparse.Namespace,
              http: aiohttp.ClientSession) -> list[float]:
    """The ceiling: each body POSTed to every receiver at once, nothing else."""
    commits: dict[str, float] = {}
    bodies = [make_payload(i) for i in range(64)]

    async def post(i: int) -> None:
        key = str(uuid.uuid4())
        commits[key] = time.time()
        await asyncio.gather(*(_post(http, port, key, bodies[i % 64]) for port in ports))

    await paced(args.rate, args.seconds, post)
    return lags(commits, await collect(http, ports, "/raw", len(commits), 60))


async def _post(http: aiohttp.ClientSession, port: int, key: str, body: bytes) -> None:
    async with http.post(f"http://127.0.0.1:{port}/raw", data=body,
                         headers={"x-id": key, "Content-Type": "application/json"}) as resp:
        await resp.read()


async def measure(mode: str, args: argparse.Namespace) -> None:
    types = EventTypes([*SYSTEM_EVENTS, *SUBSCRIPTION_EVENTS, Payload])
    with receivers(args.receivers) as ports:
        connector = aiohttp.TCPConnector(limit=0)
        async with open_store(mode, types) as store, \
                aiohttp.ClientSession(connector=connector) as http:
            ours_lag, delivered = await ours(store, ports, args, http)
            raw_lag = await raw(ports, args, http)
    expected = int(args.rate * args.seconds) * args.receivers
    p50, p99 = percentile(ours_lag, 50) * 1000, percentile(ours_lag, 99) * 1000
    raw50, raw99 = percentile(raw_lag, 50) * 1000, percentile(raw_lag, 99) * 1000
    print(f"{mode}: {args.rate} events/s for {args.seconds:.0f} s to {args.receivers} receivers:"
          f" {delivered}/{expected} deliveries, lag p50 {p50:.1f} ms, p99 {p99:.1f} ms"
          f" (goal p99 <= 200 ms); plain aiohttp POSTs p50 {raw50:.1f} ms, p99 {raw99:.1f} ms",
          flush=True)
    print(result_line({f"{mode}_lag_p50_ms": p50, f"{mode}_lag_p99_ms": p99,
                       f"{mode}_delivered": delivered},
                      raw99, p99 / raw99 if raw99 else 0.0), flush=True)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("embedded", "real", "both"), default="both")
    parser.add_argument("--rate", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--receivers", type=int, default=10)
    parser.add_argument("--resources", type=int, default=500)
    parser.add_argument("--no-uvloop", action="store_true")
    args = parser.parse_args()
    for mode in ("embedded", "real") if args.mode == "both" else (args.mode,):
        await measure(mode, args)


if __name__ == "__main__":
    run(main())
