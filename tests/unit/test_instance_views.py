"""The instances projection folds an instance's events into ``servers_v2`` and
``instance_actions_v2`` (on a SQLite log and on PostgreSQL): states, times, fault, actions
by request id, and the lists filtered, ordered and paged in SQL."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from actors.instance import (
    INSTANCE_EVENTS,
    REBOOTING,
    REBOOTING_HARD,
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
    InstancePowerSynced,
    InstanceScheduled,
    InstanceSpawned,
    status,
)
from actors.instance_views import (
    InstancesProjection,
    MarkerNotFound,
    ServerFilter,
    _when,
    read_action,
    read_actions,
    read_server,
    read_server_refs,
    read_servers,
    stamp,
)
from schemas import SYSTEM_EVENTS
from store.projections import ProjectionRunner
from store.registry import EventTypes
from tests.support.events import new_event
from tests.support.logs import backend, open_store

__all__ = ["backend"]  # the fixture this module's tests run on

T0 = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)


def at(seconds: int) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def created(name: str, project: str = "p1", seconds: int = 0, flavor: str = "1",
            image: str = "img") -> InstanceCreated:
    return InstanceCreated(
        instance_id="x", name=name, project_id=project, user_id="u1",
        flavor=FlavorInfo(id=flavor, name="m1.tiny", vcpus=1, ram=512, disk=1),
        image=ImageInfo(id=image, size=10), metadata={"k": "v"}, request="r0", at=at(seconds))


@pytest.fixture
async def store(backend: tuple[str, str]) -> AsyncIterator[Any]:
    """An empty log with the projection's tables, on SQLite and on PostgreSQL."""
    log: Any = await open_store(backend, EventTypes([*INSTANCE_EVENTS, *SYSTEM_EVENTS]))
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


@pytest.mark.parametrize("text", [
    "2026-12-07T12:39:08.120160Z",          # as msgspec writes a UTC time: the fast path
    "2026-12-07T12:39:08.000001Z",
    "2026-12-07T12:39:08Z",                 # no microseconds
    "2026-12-07T14:39:08.120160+02:00",     # another offset
    "2026-12-07T12:39:08.5+00:00",
])
def test_an_events_time_is_stored_as_its_datetime_would_be(text: str) -> None:
    """The fold reads an event's time as its JSON text; what it stores is what `stamp`
    makes of the time that text decodes to."""
    when = msgspec.json.decode(msgspec.json.encode(text), type=dt.datetime)
    assert _when(text) == stamp(when)


async def test_the_flavor_image_and_metadata_are_stored_as_the_event_has_them(
    store: Any,
) -> None:
    event = created("vm1")
    await fold(store, "s1", ("req-a", event))
    [(flavor_id, image_id, flavor, image)] = await store.query(
        "SELECT flavor_id, image_id, flavor, image FROM servers_v3")
    assert (flavor_id, image_id) == ("1", "img")
    assert msgspec.json.decode(flavor, type=FlavorInfo) == event.flavor
    assert msgspec.json.decode(image, type=ImageInfo) == event.image
    server = await read_server(store, "s1")
    assert server is not None and server.metadata == {"k": "v"}


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


async def append(store: Any, server_id: str, *events: msgspec.Struct) -> None:
    version = await store.stream_version(f"instance:{server_id}")
    await store.append(f"instance:{server_id}",
                       [new_event(e, correlation_id=f"req-{server_id}") for e in events],
                       version)


async def project(store: Any) -> None:
    async with ProjectionRunner(store, InstancesProjection()) as runner:
        assert await runner.wait_until(await store.head(), 5.0)


async def test_the_status_column_follows_novas_status_of_every_state(store: Any) -> None:
    """The status column is actors.instance.status of the server's states, through every
    state a lifecycle passes (and an unknown vm_state, as a power sync could bring, is
    UNKNOWN)."""
    await fold(store, "s1", ("req-a", created("vm1")))
    seen = []
    for i, event in enumerate([
            InstanceScheduled(host="h1", request="r1", at=at(1)),
            InstanceSpawned(host="h1", power_state=1, at=at(2)),
            InstanceActionStarted(action="reboot", task=REBOOTING, request="r2", at=at(3)),
            InstanceActionDone(action="reboot", vm_state="active", power_state=1, at=at(4)),
            InstanceActionStarted(action="reboot", task=REBOOTING_HARD, request="r3",
                                  at=at(5)),
            InstanceActionDone(action="reboot", vm_state="active", power_state=1, at=at(6)),
            InstanceActionStarted(action="stop", task="powering-off", request="r4", at=at(7)),
            InstanceActionDone(action="stop", vm_state="stopped", power_state=4, at=at(8)),
            InstancePowerSynced(vm_state="shelved", power_state=4, reason="odd",
                                at=at(9)),
            InstanceDeleting(request="r5", at=at(10))]):
        await fold(store, "s1", (f"req-{i}", event))
        row = await read_server(store, "s1")
        assert row is not None and row.status == status(row.vm_state, row.task_state)
        seen.append(row.status)
    assert seen == ["BUILD", "ACTIVE", "REBOOT", "ACTIVE", "HARD_REBOOT", "ACTIVE", "ACTIVE",
                    "SHUTOFF", "UNKNOWN", "UNKNOWN"]


#: servers and actions as the tables hold them, every column
_EVERY_SERVER = "SELECT * FROM servers_v3 ORDER BY id"
_EVERY_ACTION = "SELECT * FROM instance_actions_v3 ORDER BY instance_id, request_id, action"


async def test_a_batch_folds_to_the_same_rows_as_its_events_one_by_one(store: Any) -> None:
    """Lifecycles of several servers, their events interleaved in the log, rebuilt one
    event a batch and then all in one batch: the same rows, column for column."""
    fault = Fault(code=500, message="No valid host was found.", created=at(2))
    lives: dict[str, list[msgspec.Struct]] = {
        "s1": [created("one"), InstanceScheduled(host="h1", request="r1", at=at(1)),
               InstanceSpawned(host="h1", power_state=1, at=at(2)),
               InstanceActionStarted(action="stop", task="powering-off", request="r2",
                                     at=at(3)),
               InstanceActionDone(action="stop", vm_state="stopped", power_state=4, at=at(4)),
               InstanceActionStarted(action="start", task="powering-on", request="r3",
                                     at=at(5)),
               InstanceActionFailed(action="start", message="boom", at=at(6)),
               InstancePowerSynced(vm_state="active", power_state=1, reason="on",
                                   at=at(7)),
               InstanceDeleting(request="r4", at=at(8)),
               InstanceDeleted(instance_id="s1", host="h1", note="late", at=at(9))],
        "s2": [created("two", seconds=1), InstanceScheduled(host="h2", request="r1", at=at(2)),
               InstanceFailed(instance_id="s2", host="h2", task="spawning", fault=fault,
                              at=at(3))],
        "s3": [created("three", seconds=2),
               InstanceDeleted(instance_id="s3", host=None, note="never placed", at=at(4))],
        "s4": [created("four", seconds=3), InstanceScheduled(host="h1", request="r1", at=at(4)),
               InstanceSpawned(host="h1", power_state=1, at=at(5)),
               InstanceDeleting(request="r2", at=at(6)),
               InstanceDeleted(instance_id="s4", host="h1", at=at(7))],
    }
    versions = dict.fromkeys(lives, 0)
    for step in range(max(len(v) for v in lives.values())):
        for sid, life in lives.items():
            if step < len(life):
                await store.append(f"instance:{sid}", [new_event(
                    life[step], correlation_id=f"req-{sid}-{step // 2}",
                    user_id=f"u{step % 2}")], versions[sid])
                versions[sid] += 1
    tables = []
    for batch in (1, 1000):
        runner = ProjectionRunner(store, InstancesProjection(), batch=batch)
        await runner.rebuild()
        tables.append((await store.query(_EVERY_SERVER), await store.query(_EVERY_ACTION)))
    assert tables[0] == tables[1]
    servers, actions = tables[1]
    assert [r[0] for r in servers] == ["s1", "s2", "s3", "s4"]
    assert [(r[0], r[2], r[7], r[8]) for r in actions] == [
        ("s1", "create", "Success", None), ("s1", "stop", "Success", None),
        ("s1", "start", "Error", "boom"), ("s1", "delete", "Success", "late"),
        ("s2", "create", "Error", "No valid host was found."),
        ("s3", "create", None, None), ("s3", "delete", "Success", "never placed"),
        ("s4", "create", "Success", None), ("s4", "delete", "Success", None)]


async def test_lists_filter_order_and_page_in_sql(store: Any) -> None:
    """Status, image, flavor and host filter; newest first with ties by id descending; a
    marker pages on from that server (400-worthy MarkerNotFound when it is not the
    project's); a name regex with a limit fetches on until the page is full; /servers
    refs are the same servers; deleted servers are never listed."""
    for i, sid in enumerate(("a1", "a2", "a3", "a4", "a5", "a6")):
        await append(store, sid, created(f"{'web' if i % 2 else 'db'}-{i}", seconds=i // 2 * 10,
                                         flavor="2" if sid == "a3" else "1",
                                         image="other" if sid == "a4" else "img"))
    for sid in ("a2", "a5"):
        await append(store, sid, InstanceScheduled(host="h2", request="r1", at=at(30)),
                     InstanceSpawned(host="h2", power_state=1, at=at(31)))
    await append(store, "a7", created("web-7", seconds=60))
    await append(store, "a7", InstanceDeleted(instance_id="a7", host=None, at=at(61)))
    await append(store, "b1", created("web-b", project="p2", seconds=70))
    await project(store)
    p1 = ServerFilter(project_id="p1")
    newest = ["a6", "a5", "a4", "a3", "a2", "a1"]  # created_at desc, then id desc
    assert [s.id for s in await read_servers(store, p1)] == newest
    assert [s.id for s in await read_server_refs(store, p1)] == newest
    assert [(s.id, s.status) for s in await read_servers(
        store, ServerFilter(project_id="p1", status="active"))] == [("a5", "ACTIVE"),
                                                                    ("a2", "ACTIVE")]
    building = await read_server_refs(store, ServerFilter(project_id="p1", status="BUILD"))
    assert [s.id for s in building] == ["a6", "a4", "a3", "a1"]
    assert [s.id for s in await read_servers(store, ServerFilter(image="other"))] == ["a4"]
    assert [s.id for s in await read_servers(store, ServerFilter(flavor="2"))] == ["a3"]
    assert [s.id for s in await read_servers(store, ServerFilter(host="h2"))] == ["a5", "a2"]
    paged: list[str] = []
    marker = None
    while True:
        page = await read_servers(store, p1, limit=2, marker=marker)
        paged += [s.id for s in page]
        if len(page) < 2:
            break
        marker = page[-1].id
    assert paged == newest
    after = await read_server_refs(store, ServerFilter(project_id="p1", status="BUILD"),
                                   limit=2, marker="a5")
    assert [s.id for s in after] == ["a4", "a3"]
    for bad in ("nope", "b1"):
        with pytest.raises(MarkerNotFound):
            await read_servers(store, p1, marker=bad)
    web = ServerFilter(project_id="p1", name="^web-")
    assert [s.id for s in await read_servers(store, web, limit=2, chunk=1)] == ["a6", "a4"]
    assert [s.id for s in await read_server_refs(store, web, limit=5, chunk=2,
                                                 marker="a6")] == ["a4", "a2"]
    assert await read_servers(store, p1, limit=0) == []
    every = await read_servers(store, ServerFilter())
    assert [s.id for s in every] == ["b1", *newest]
