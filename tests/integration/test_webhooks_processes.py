"""Webhook delivery across real processes on PostgreSQL + RabbitMQ: the worker that
delivers is killed (SIGKILL) in the middle of a run, and nothing is lost."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp

from bus.routing import Names
from tests.support.deployment import Api, Deployment, deployment
from tests.support.receiver import Receiver, per_stream, receiving

WEBHOOK_ENV = {"ORRERY_WEBHOOKS_ALLOW_LOOPBACK": "1", "ORRERY_WEBHOOKS_RETRY_BASE": "0.1"}


def leader(dep: Deployment) -> Any:
    """The worker process that leads webhook delivery (it logged so)."""
    for name, proc in dep.running:
        if not name.startswith("worker-") or proc.poll() is not None:
            continue
        for line in (dep.log_dir / f"{name}.log").read_text(errors="replace").splitlines():
            if line.startswith("{") and \
                    json.loads(line).get("event") == "webhook_dispatcher_leading":
                return proc
    return None


async def wait_leader(dep: Deployment) -> Any:
    for _ in range(100):
        if (proc := leader(dep)) is not None:
            return proc
        await asyncio.sleep(0.2)
    raise AssertionError(f"no worker leads webhook delivery\n{dep.logs()}")


async def images(api: Api, prefix: str, count: int) -> list[str]:
    made = await asyncio.gather(*(api.call("POST", "/image/v2/images", {
        "name": f"{prefix}{i}", "disk_format": "raw", "container_format": "bare"},
        expect=(201,)) for i in range(count)))
    return [str(m["id"]) for m in made]


async def test_killing_the_delivering_worker_mid_run_loses_nothing(
    pg_dsn: str, amqp_url: str, amqp_cleanup: Names, tmp_path: Path,
) -> None:
    """With deliveries in flight, the leading worker is SIGKILLed and a new one started:
    every image event of the run still reaches the receiver (duplicates allowed, same
    webhook-id), each image's events in order."""
    async with receiving(Receiver(delay=0.05)) as rx:
        with deployment(pg_dsn=pg_dsn, amqp_url=amqp_url, prefix=amqp_cleanup.prefix,
                        tmp_path=tmp_path, workers=2, hosts=("h1",), hypervisor="fake",
                        extra_env=WEBHOOK_ENV) as dep:
            async with aiohttp.ClientSession() as http:
                api = Api(dep, http)
                sub = await api.call("POST", "/events/v1/subscriptions", {
                    "url": rx.url + "/p", "event_types": ["image.*"]}, expect=(201,))
                first = await wait_leader(dep)
                await images(api, "a", 40)
                await rx.wait_for("/p", 5)
                dep.kill(first)
                dep.start("worker", env=WEBHOOK_ENV)
                await images(api, "b", 20)
                feed = await api.call("GET", "/events/v1/events?type=image.*&limit=1000")
                expected = [e["id"] for e in feed["events"]]
                assert len(expected) == 60
                await rx.wait_for("/p", len(expected), timeout=60)
                docs = rx.documents("/p", sub["secret"])
    assert {d["id"] for d in docs} == set(expected)
    firsts: dict[str, dict[str, Any]] = {}
    for doc in docs:
        firsts.setdefault(doc["id"], doc)
    orders = per_stream(list(firsts.values()))
    assert all(v == sorted(v) for v in orders.values())
