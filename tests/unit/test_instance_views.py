"""The instances projection folds an instance's events into ``servers`` and
``instance_actions`` (on a SQLite log): states, times, fault, actions by request id."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from actors.instance import (
    INSTANCE_EVENTS,
    Fault,
    FlavorInfo,
    ImageInfo,
    InstanceActionDone,
    InstanceActionFailed,
    InstanceActionStarted,
    InstanceCreated,
    InstanceDeleted,
    InstanceDeleting,
    InstanceFailed,
    InstanceScheduled,
    InstanceSpawned,
)
from actors.instance_views import (
    InstancesProjection,
    ServerFilter,
    read_action,
    read_actions,
    read_server,
    read_servers,
)
from schemas import SYSTEM_EVENTS
from store.projections import ProjectionRunner
from store.registry import EventTypes
from store.sqlite import SqliteEventStore
from tests.support.events import new_event

T0 = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)


def at(seconds: int) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def created(name: str, project: str = "p1", seconds: int = 0) -> InstanceCreated:
    return InstanceCreated(
        instance_id="x", name=name, project_id=project, user_id="u1",
        flavor=FlavorInfo(id="1", name="m1.tiny", vcpus=1, ram=512, disk=1),
        image=ImageInfo(id="img", size=10), metadata={"k": "v"}, request="r0", at=at(seconds))


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Any]:
    types = EventTypes([*INSTANCE_EVENTS, *SYSTEM_EVENTS])
    log = await SqliteEventStore.open(tmp_path / "log.sqlite", types)
    await log.run_ddl(InstancesProjection.ddl)
    try:
        yield log
    finally:
        await log.close()


async def fold(store: Any, server_id: str, *events: tuple[str, msgspec.Struct]) -> None:
    """Append (correlation id, event) pairs to the server's stream and fold them."""
    version = await store.stream_version(f"instance:{server_id}")
    await store.append(f"instance:{server_id}",
                       [new_event(e, correlation_id=c) for c, e in events], version)
    async with ProjectionRunner(store, InstancesProjection()) as runner:
        assert await runner.wait_until(await store.head(), 5.0)


async def test_a_lifecycle_folds_into_states_times_and_actions(store: Any) -> None:
    """Create -> scheduled -> spawned is ACTIVE on its host with launched_at; a stop is
    SHUTOFF; each user action is a row under its request id, finished with its result;
    delete hides the server and keeps its actions."""
    await fold(store, "s1", ("req-a", created("vm1")),
               ("req-a", InstanceScheduled(host="h1", request="r1", at=at(1))))
    building = await read_server(store, "s1")
    assert building is not None and (building.status, building.task_state) == (
        "BUILD", "spawning")
    await fold(store, "s1", ("req-a", InstanceSpawned(host="h1", power_state=1, at=at(2))),
               ("req-b", InstanceActionStarted(action="stop", task="powering-off",
                                               request="r2", at=at(3))))
    stopping = await read_server(store, "s1")
    assert stopping is not None and stopping.launched_at == "2026-01-01T12:00:02.000000"
    assert stopping.task_state == "powering-off" and stopping.host == "h1"
    await fold(store, "s1", ("req-b", InstanceActionDone(action="stop", vm_state="stopped",
                                                         power_state=4, at=at(4))),
               ("req-c", InstanceActionStarted(action="start", task="powering-on",
                                               request="r3", at=at(5))),
               ("req-c", InstanceActionFailed(action="start", message="boom", at=at(6))))
    stopped = await read_server(store, "s1")
    assert stopped is not None and stopped.status == "SHUTOFF" and stopped.power_state == 4
    actions = await read_actions(store, "s1")
    assert [(a.action, a.request_id, a.result) for a in actions] == [
        ("start", "req-c", "Error"), ("stop", "req-b", "Success"),
        ("create", "req-a", "Success")]
    assert actions[0].message == "boom" and actions[2].host == "h1"
    await fold(store, "s1", ("req-d", InstanceDeleting(request="r4", at=at(7))),
               ("req-d", InstanceDeleted(instance_id="s1", host="h1", at=at(8))))
    assert await read_server(store, "s1") is None
    gone = await read_server(store, "s1", include_deleted=True)
    assert gone is not None and gone.terminated_at == "2026-01-01T12:00:08.000000"
    delete = await read_action(store, "s1", "req-d")
    assert delete is not None and delete.result == "Success" and delete.finish_time


async def test_a_failed_boot_keeps_its_fault_and_the_lists_filter(store: Any) -> None:
    """A failed boot is ERROR with its fault and no host; lists are newest first, filtered
    by project, name regex and status."""
    fault = Fault(code=500, message="No valid host was found.", created=at(2))
    await fold(store, "s1", ("req-a", created("web-1", seconds=0)),
               ("req-a", InstanceFailed(instance_id="s1", host=None, task="scheduling",
                                        fault=fault, at=at(2))))
    await fold(store, "s2", ("req-b", created("web-2", seconds=1)))
    await fold(store, "s3", ("req-c", created("db-1", project="p2", seconds=2)))
    failed = await read_server(store, "s1")
    assert failed is not None and failed.status == "ERROR" and failed.fault == fault
    create = await read_action(store, "s1", "req-a")
    assert create is not None and create.result == "Error"
    mine = await read_servers(store, ServerFilter(project_id="p1"))
    assert [s.id for s in mine] == ["s2", "s1"]
    every = await read_servers(store, ServerFilter())
    assert [s.id for s in every] == ["s3", "s2", "s1"]
    web = await read_servers(store, ServerFilter(name="^web-[1]"))
    assert [s.id for s in web] == ["s1"]
    errors = await read_servers(store, ServerFilter(status="error"))
    assert [s.id for s in errors] == ["s1"]
