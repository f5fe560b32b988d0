"""``orrery replay`` on the log of a whole cloud that is running, on embedded and on
PostgreSQL + RabbitMQ: the trace of a server create shows the instance, the scheduler's
host claim, the host daemon's work and the ports in causal order (text, JSON and an HTML
timeline); the log verifies clean; the server's history, state and diff read as the API
shows it; a projection rebuilt while the cloud runs still answers the API."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from bus.routing import Names
from tests.integration.test_servers_networks import DEADLINES, NetApi
from tests.support.cloud import running_cloud
from tests.support.replay_tool import database_url, replay


class Booted:
    """A running cloud with one server booted on a tenant network, and its request id."""

    def __init__(self, api: NetApi, url: str) -> None:
        self.api = api
        self.url = url
        self.request_id = self.server_id = ""

    async def boot(self) -> Booted:
        net = await self.api.network(self.api.member)
        async with self.api.cloud.http.post(
                self.api.url("/compute/v2.1/servers"), headers={"X-Auth-Token": self.api.member},
                json={"server": {"name": "traced", "imageRef": self.api.image, "flavorRef": "1",
                                 "networks": [{"uuid": net}]}}) as resp:
            assert resp.status == 202, await resp.text()
            self.request_id = resp.headers["X-OpenStack-Request-Id"]
            self.server_id = (await resp.json())["server"]["id"]
        await self.api.wait_status(self.server_id, "ACTIVE")
        return self


@pytest.fixture
async def booted(backends: tuple[str, dict[str, Any]], bus_names: Names,
                 tmp_path: Path) -> AsyncIterator[Booted]:
    which, extra = backends
    async with running_cloud(which, tmp_path, names=bus_names, deadlines=DEADLINES,
                             **extra) as cloud:
        api = await NetApi(cloud).setup()
        url = database_url(which, tmp_path, extra.get("pg_dsn"))
        yield await Booted(api, url).boot()


def walk(nodes: list[dict[str, Any]], path: tuple[dict[str, Any], ...] = ()
         ) -> Iterator[tuple[dict[str, Any], tuple[dict[str, Any], ...]]]:
    """Every node depth first, with its ancestors."""
    for node in nodes:
        yield node, path
        yield from walk(node["children"], (*path, node))


def step_with(tree: dict[str, Any], event_type: str) -> tuple[dict[str, Any], tuple[Any, ...]]:
    found = [(n, p) for n, p in walk(tree["roots"]) if n["node"] == "step"
             and event_type in [e["type"] for e in n["events"]]]
    assert len(found) == 1, (event_type, found)
    return found[0]


async def test_trace_of_a_server_create_shows_its_steps_in_causal_order(
    booted: Booted, tmp_path: Path,
) -> None:
    """instance.created (the API's command) -> host.claimed on host-1 (the scheduler's
    claim) -> instance.scheduled (the claim's answer) -> the spawn answered outside the
    log by host-1's daemon -> instance.spawned; each later step hangs below the one before,
    starts no earlier, and the ports the boot bound hang from the instance."""
    ran = await replay("trace", booted.request_id, "--json", "--database-url", booted.url)
    assert ran.code == 0, ran.err
    tree = ran.json()
    created, _ = step_with(tree, "instance.created")
    claimed, above_claimed = step_with(tree, "host.claimed")
    scheduled, above_scheduled = step_with(tree, "instance.scheduled")
    spawned, above_spawned = step_with(tree, "instance.spawned")
    assert created["stream"] == f"instance:{booted.server_id}" and created["via"] == "root"
    assert claimed["stream"] == "host:host-1" and created in above_claimed
    assert claimed in above_scheduled and scheduled["via"] == "reply"
    hostd = above_spawned[-1]
    assert hostd["node"] == "request" and scheduled in above_spawned
    assert hostd["named_in"] == {"stream": created["stream"],
                                 "version": scheduled["events"][0]["version"]}
    chain = [created, claimed, scheduled, hostd, spawned]
    assert [n["offset_ms"] for n in chain] == sorted(n["offset_ms"] for n in chain)
    ports = [n for n, p in walk(tree["roots"]) if n["node"] == "step"
             and n["stream"].startswith("port:") and scheduled in p]
    assert ports, "the port bound at scheduling hangs below instance.scheduled"


async def test_trace_text_and_html_timeline(booted: Booted, tmp_path: Path) -> None:
    """The text tree lists the steps in causal order with timings; --html writes one
    self-contained page (inline SVG, no scripts, no external references)."""
    page = tmp_path / "trace.html"
    ran = await replay("trace", booted.request_id, "--html", str(page),
                       "--database-url", booted.url)
    assert ran.code == 0, ran.err
    lines = ran.out.splitlines()[1:]  # below the summary
    order = [next(i for i, line in enumerate(lines) if re.search(rf"\b{t}\b", line))
             for t in ("instance.created", "host.claimed", "instance.scheduled",
                       "answered outside the log", "instance.spawned")]
    assert order == sorted(order), ran.out
    assert all(re.search(r"\+\d+\.\d ms$", line) for line in lines[1:])
    html = page.read_text()
    assert "<script" not in html and "src=" not in html and "href=" not in html
    svg = html[html.index("<svg"):html.index("</svg>") + len("</svg>")]
    ET.fromstring(svg)  # well formed
    assert "host:host-1" in html and "instance.spawned" in html


async def test_the_running_clouds_log_verifies_clean(booted: Booted) -> None:
    """verify exits 0 and says so, every check ok."""
    ran = await replay("verify", "--fold", "--database-url", booted.url)
    assert ran.code == 0, ran.out + ran.err
    assert ran.out.rstrip().endswith("log ok")
    ran = await replay("verify", "--json", "--database-url", booted.url)
    report = ran.json()
    assert report["ok"] and report["events"] > 0 and report["breaches"] == []


async def test_history_state_and_diff_of_the_server(booted: Booted) -> None:
    """The server's history starts with instance.created at version 1 and counts up; its
    state is active on host-1 (as the API shows it), building at version 1; the diff
    from 1 to the last version says so field by field."""
    sid, url = booted.server_id, booted.url
    rows = (await replay("history", "instance", sid, "--json", "--database-url", url)).json()
    assert [r["version"] for r in rows] == list(range(1, len(rows) + 1))
    assert rows[0]["type"] == "instance.created"
    assert rows[0]["correlation_id"] == booted.request_id
    state = (await replay("state", "instance", sid, "--json", "--database-url", url)).json()
    assert (state["state"]["vm_state"], state["state"]["host"]) == ("active", "host-1")
    first = (await replay("state", "instance", sid, "--version", "1", "--json",
                          "--database-url", url)).json()
    assert first["state"]["vm_state"] == "building" and first["version"] == 1
    diff = (await replay("diff", "instance", sid, "1", str(len(rows)), "--json",
                         "--database-url", url)).json()
    changed = {c["path"]: (c["before"], c["after"]) for c in diff["changes"]}
    assert changed["vm_state"] == ("building", "active")
    assert changed["host"] == (None, "host-1")


async def test_a_projection_rebuilt_while_the_cloud_runs_still_serves_the_api(
    booted: Booted,
) -> None:
    """rebuild instances_v3 refolds the servers table from position 0 while the cloud
    runs, and then every projection at once (the per-stream ones in two worker processes,
    the others in a third); afterwards the API still shows the server ACTIVE and a new
    boot still works."""
    ran = await replay("rebuild", "instances_v3", "--database-url", booted.url)
    assert ran.code == 0, ran.err
    assert re.search(r"instances_v3: \d+ events folded up to position \d+", ran.err), ran.err
    await booted.api.wait_status(booted.server_id, "ACTIVE")
    ran = await replay("rebuild", "--workers", "2", "--json", "--database-url", booted.url)
    assert ran.code == 0, ran.err
    rebuilt = ran.json()
    assert {"instances_v3", "timers"} <= {r["projection"] for r in rebuilt}
    assert all(r["checkpoint"] > 0 for r in rebuilt)
    await booted.api.wait_status(booted.server_id, "ACTIVE")
    again = await booted.api.boot(booted.api.member, name="after-rebuild")
    await booted.api.wait_status(again, "ACTIVE")
