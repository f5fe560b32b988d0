"""The scheduler's Place effect on the in-process bus: where its claims go."""

from __future__ import annotations

import asyncio
import datetime as dt

import msgspec

from actors.client import command_envelope
from actors.host import AllocationRatios, Resources
from actors.host_views import HostView
from actors.instance import Place, StopInstance
from actors.runtime import Origin
from actors.scheduler import Placement
from bus.memory import MemoryBus
from bus.protocol import Delivery
from bus.routing import Names
from schemas import COMMAND_DECODER
from schemas.envelope import REPLY_DECODER
from schemas.hostd import Capacity
from tests.support.backends import eventually


def _host(name: str) -> HostView:
    return HostView(id=name, state="up", capacity=Capacity(vcpus=16, ram_mb=8192, disk_gb=100),
                    used=Resources(), instances=0, last_heartbeat=dt.datetime.now(dt.UTC),
                    ratios=AllocationRatios())


async def test_placements_at_the_same_moment_spread_and_none_fit_answers_the_instance(
        bus_names: Names) -> None:
    """With a hosts view that does not move, eight placements alternate between two equal
    hosts (recent claims count when weighing); with no room, the instance itself gets a
    no_valid_host answer with the reasons."""
    bus = MemoryBus(bus_names)
    claims: list[str] = []
    answers: list[bytes] = []

    async def on_host(d: Delivery) -> None:
        claims.append(COMMAND_DECODER.decode(d.body).actor_id)

    async def on_instance(d: Delivery) -> None:
        answers.append(d.body)

    hosts = [_host("h1"), _host("h2")]

    async def read() -> list[HostView]:
        return hosts

    try:
        await bus.consume_commands("host", on_host)
        await bus.consume_commands("instance", on_instance)
        placement = Placement(bus, read)
        origin = Origin("instance", "i0", command_envelope("instance", "i0", StopInstance()))
        for i in range(8):
            await placement(origin, Place(instance_id=f"i{i}", request=f"r{i}", vcpus=1,
                                          ram_mb=512, disk_gb=1))
        await eventually(lambda: _ready(claims, 8), what="eight claims")
        assert sorted(claims) == ["h1"] * 4 + ["h2"] * 4
        await placement(origin, Place(instance_id="big", request="rb", vcpus=1,
                                      ram_mb=10**6, disk_gb=1))
        await eventually(lambda: _ready(answers, 1), what="the answer")
        env = COMMAND_DECODER.decode(answers[0])
        reply = REPLY_DECODER.decode(env.body)
        assert (env.kind, env.actor_id, env.type) == ("instance", "i0", "reply")
        assert reply.command_id == "rb@" and reply.error_type == "no_valid_host"
        assert reply.error is not None and "No valid host" in reply.error
        assert msgspec.json.decode(env.body)["ok"] is False
    finally:
        await bus.close()


async def _ready(items: list[object], n: int) -> bool:
    await asyncio.sleep(0)
    return len(items) >= n
