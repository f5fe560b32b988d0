"""Records the event histories under tests/histories from a real run of the cloud.

Usage: PYTHONPATH=. .venv/bin/python tests/histories/record.py [KIND ...]

Runs the whole cloud in-process on the embedded backends (default deadlines and network
settings, as ``cloud_kinds()`` makes them), touches every resource kind through the API
(users and projects, an image, a flavor, a network with a subnet and a port, a server on
it with a volume attached and detached, stopped, started and deleted, a webhook subscription
changed and deleted), then writes, per kind, the longest stream's first events (at most
MAX_EVENTS) with the state they fold to, as the replay test expects it.
Record again only when a change to a kind is meant to change what its old events fold to.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import msgspec

from actors.codec import KindCodec
from actors.fold import Folded
from bus.routing import Names
from orrery.services import cloud_kinds
from schemas import EventEnvelope, stream_kind
from tests.integration.test_servers_networks import NetApi
from tests.support.backends import eventually
from tests.support.cloud import running_cloud

HERE = Path(__file__).parent
MAX_EVENTS = 40


async def scenario(api: NetApi) -> None:
    """Every kind gets events: identity on setup, then image, a flavor made and deleted,
    a network, a port, and a server that boots on the network, stops, starts and is
    deleted."""
    await api.req("POST", "/flavors", api.admin, status=200, json={"flavor": {
        "name": "m1.replay", "ram": 256, "vcpus": 1, "disk": 1, "id": "replay"}})
    await api.req("DELETE", "/flavors/replay", api.admin, status=202)
    net = await api.network(api.member)
    await api.neutron("POST", "/ports", api.member, 201,
                      json={"port": {"network_id": net, "name": "spare"}})
    sid = await api.boot(api.member, networks=[{"uuid": net}])
    await api.wait_status(sid, "ACTIVE")
    await attach_and_detach(api, sid)
    await api.action(sid, {"os-stop": None})
    await api.wait_status(sid, "SHUTOFF")
    await api.action(sid, {"os-start": None})
    await api.wait_status(sid, "ACTIVE")
    await api.req("DELETE", f"/servers/{sid}", api.member, status=204)
    await asyncio.sleep(1.0)  # the ports' release and the host's reaction
    await subscription(api)


async def subscription(api: NetApi) -> None:
    """A webhook subscription made, changed, disabled and deleted."""
    async def events(method: str, path: str, status: int, body: Any = None) -> Any:
        async with api.cloud.http.request(method, api.url(f"/events/v1{path}"), json=body,
                                          headers={"X-Auth-Token": api.member}) as resp:
            assert resp.status == status, f"{resp.status} {await resp.text()}"
            return await resp.json(content_type=None) if resp.status != 204 else None

    sub = (await events("POST", "/subscriptions", 201, {
        "url": "http://127.0.0.1:9/hook", "event_types": ["instance.*"],
        "description": "replay"}))
    await events("PATCH", f"/subscriptions/{sub['id']}", 200,
                 {"event_types": ["instance.*", "port.*"], "enabled": False})
    await events("DELETE", f"/subscriptions/{sub['id']}", 204)


async def attach_and_detach(api: NetApi, server_id: str) -> None:
    """A volume made on the storage host, extended, attached to the server and detached."""
    http, url = api.cloud.http, api.cloud.url
    headers = {"X-Auth-Token": api.member}

    async def volume() -> dict[str, Any]:
        async with http.get(f"{url}/volume/v3/volumes/{vid}", headers=headers) as resp:
            return dict((await resp.json())["volume"])

    async def until(status: str) -> None:
        async def reached() -> bool:
            return (await volume())["status"] == status
        await eventually(reached, what=f"volume {status}")

    async with http.post(f"{url}/volume/v3/volumes", headers=headers,
                         json={"volume": {"size": 1, "name": "replay"}}) as resp:
        vid = (await resp.json())["volume"]["id"]
    await until("available")
    async with http.post(f"{url}/volume/v3/volumes/{vid}/action", headers=headers,
                         json={"os-extend": {"new_size": 2}}) as resp:
        assert resp.status == 202, await resp.text()
    async def grown() -> bool:
        return (await volume())["size"] == 2
    await eventually(grown, what="volume extended")
    attachments = f"{url}/compute/v2.1/servers/{server_id}/os-volume_attachments"
    async with http.post(attachments, headers=headers,
                         json={"volumeAttachment": {"volumeId": vid}}) as resp:
        assert resp.status == 200, await resp.text()
    await until("in-use")
    async with http.delete(f"{attachments}/{vid}", headers=headers) as resp:
        assert resp.status == 202, await resp.text()
    await until("available")


def history(codec: KindCodec, events: list[EventEnvelope]) -> dict[str, Any]:
    actor_id = events[0].stream.partition(":")[2]
    fold = Folded(codec, actor_id).apply_all(events)
    return {"kind": codec.kind.name, "recorded": dt.date.today().isoformat(),
            "source": "tests/histories/record.py (embedded cloud, default settings)",
            "actor_id": actor_id,
            "expect": msgspec.to_builtins(fold.state),
            "events": [{"type": e.type, "data": json.loads(bytes(e.data))} for e in events]}


async def record(kinds: list[str]) -> None:
    codecs = {k.name: KindCodec(k) for k in cloud_kinds()}
    with tempfile.TemporaryDirectory() as tmp:
        async with running_cloud("embedded", Path(tmp), names=Names(prefix="rec"),
                                 hosts=1, storage_hosts=1) as cloud:
            api = await NetApi(cloud).setup()
            await scenario(api)
            streams: dict[str, list[EventEnvelope]] = {}
            for e in await cloud.store.read_all(0, 100_000):
                streams.setdefault(e.stream, []).append(e)
    for name in kinds or sorted(codecs):
        mine = [s for s in streams.values() if stream_kind(s[0].stream) == name]
        if not mine:
            raise SystemExit(f"the scenario recorded no {name} events")
        longest = max(mine, key=len)[:MAX_EVENTS]
        path = HERE / f"{name}.json"
        path.write_text(json.dumps(history(codecs[name], longest), indent=1) + "\n")
        print(f"{path.name}: {len(longest)} events of {longest[0].stream}")


if __name__ == "__main__":
    asyncio.run(record(sys.argv[1:]))
