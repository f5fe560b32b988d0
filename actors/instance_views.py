"""The instances projection: ``servers`` and ``instance_actions`` folded from instance events.

``InstancesProjection`` keeps one ``servers`` row per instance (Nova's vm_state, task_state
and power_state, host, the flavor and image as created, metadata, fault, times; a deleted
server keeps its row with ``deleted`` 1, and the reads hide it as Nova does) and one
``instance_actions`` row per user action (create, stop, start, reboot, delete) keyed by
the request id that caused it, with its start and finish time and result.

Portable SQL (TEXT/INTEGER/BIGINT, booleans as 0/1, ``ON CONFLICT``). Times are UTC ISO
text with microseconds, so they order as text. Status filters, the name regex and the
ordering (newest first, as Nova) are applied here, not by the database, so that both
backends agree.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from functools import reduce
from operator import or_
from typing import Any, Protocol

import msgspec

from actors.instance import (
    BUILDING,
    DELETED,
    DELETING,
    ERROR,
    INSTANCE_EVENTS,
    KIND,
    NOSTATE,
    SCHEDULING,
    SPAWNING,
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
from schemas import EventEnvelope, stream_kind
from store.protocol import SqlTx

PROJECTION_NAME = "instances"

SERVER_COLUMNS = (
    "id, project_id, user_id, name, vm_state, task_state, power_state, host, flavor, image,"
    " metadata, key_name, availability_zone, description, fault, request_id, created_at,"
    " updated_at, launched_at, terminated_at, deleted")
ACTION_COLUMNS = (
    "instance_id, request_id, action, project_id, user_id, start_time, finish_time,"
    " result, message, host, updated_at")

DDL = (
    """CREATE TABLE IF NOT EXISTS servers (
        id TEXT PRIMARY KEY, project_id TEXT NOT NULL, user_id TEXT NOT NULL,
        name TEXT NOT NULL, vm_state TEXT NOT NULL, task_state TEXT,
        power_state INTEGER NOT NULL, host TEXT, flavor TEXT NOT NULL, image TEXT NOT NULL,
        metadata TEXT NOT NULL, key_name TEXT, availability_zone TEXT, description TEXT,
        fault TEXT, request_id TEXT, created_at TEXT NOT NULL, updated_at TEXT NOT NULL,
        launched_at TEXT, terminated_at TEXT, deleted INTEGER NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS servers_project ON servers (project_id, deleted)",
    """CREATE TABLE IF NOT EXISTS instance_actions (
        instance_id TEXT NOT NULL, request_id TEXT NOT NULL, action TEXT NOT NULL,
        project_id TEXT NOT NULL, user_id TEXT NOT NULL, start_time TEXT NOT NULL,
        finish_time TEXT, result TEXT, message TEXT, host TEXT, updated_at TEXT NOT NULL,
        PRIMARY KEY (instance_id, request_id, action))""",
)
DROP = ("DROP TABLE IF EXISTS servers", "DROP TABLE IF EXISTS instance_actions")

_TAGS = {t.__struct_config__.tag for t in INSTANCE_EVENTS}
_DECODER: msgspec.json.Decoder[Any] = msgspec.json.Decoder(reduce(or_, INSTANCE_EVENTS))
_JSON = msgspec.json.Encoder()
_FLAVOR = msgspec.json.Decoder(FlavorInfo)
_IMAGE = msgspec.json.Decoder(ImageInfo)
_FAULT = msgspec.json.Decoder(Fault)
_META = msgspec.json.Decoder(dict[str, str])

_INSERT = f"""
INSERT INTO servers ({SERVER_COLUMNS}) VALUES ($1, $2, $3, $4, '{BUILDING}', '{SCHEDULING}',
    {NOSTATE}, NULL, $5, $6, $7, $8, $9, $10, NULL, $11, $12, $12, NULL, NULL, 0)
ON CONFLICT (id) DO NOTHING"""
_ACTION_START = f"""
INSERT INTO instance_actions ({ACTION_COLUMNS})
VALUES ($1, $2, $3, $4, $5, $6, NULL, NULL, NULL, $7, $6)
ON CONFLICT (instance_id, request_id, action) DO NOTHING"""
_ACTION_FINISH = """
UPDATE instance_actions SET finish_time = $3, updated_at = $3, result = $4, message = $5,
    host = COALESCE(host, $6)
WHERE instance_id = $1 AND action = $2 AND finish_time IS NULL"""


def stamp(when: dt.datetime) -> str:
    """A time as the table stores it: UTC, microseconds, ordered as text."""
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")


class ServerView(msgspec.Struct, frozen=True, kw_only=True):
    """One row of ``servers``; times as `stamp` text."""

    id: str
    project_id: str
    user_id: str
    name: str
    vm_state: str
    task_state: str | None
    power_state: int
    host: str | None
    flavor: FlavorInfo
    image: ImageInfo
    metadata: dict[str, str]
    key_name: str | None
    availability_zone: str | None
    description: str | None
    fault: Fault | None
    request_id: str | None
    created_at: str
    updated_at: str
    launched_at: str | None
    terminated_at: str | None
    deleted: bool

    @property
    def status(self) -> str:
        """The API status Nova shows."""
        return status(self.vm_state, self.task_state)


class ActionView(msgspec.Struct, frozen=True, kw_only=True):
    """One row of ``instance_actions``; ``result`` is Success or Error once finished."""

    instance_id: str
    request_id: str
    action: str
    project_id: str
    user_id: str
    start_time: str
    finish_time: str | None
    result: str | None
    message: str | None
    host: str | None
    updated_at: str


class InstancesProjection:
    """Folds ``instance.*`` events into ``servers`` and ``instance_actions``."""

    name = PROJECTION_NAME
    ddl: Sequence[str] = DDL
    drop: Sequence[str] = DROP

    async def apply(self, tx: SqlTx, events: Sequence[EventEnvelope]) -> None:
        for ev in events:
            if ev.type in _TAGS and stream_kind(ev.stream) == KIND:
                await _fold(tx, ev, _DECODER.decode(bytes(ev.data)))


def _instance_id(ev: EventEnvelope) -> str:
    return ev.stream.partition(":")[2]


async def _set(tx: SqlTx, instance_id: str, at: dt.datetime, sets: str,
               *args: object) -> None:
    """UPDATE servers SET ``sets`` (placeholders from $3) and updated_at = $2."""
    await tx.execute(f"UPDATE servers SET {sets}, updated_at = $2 WHERE id = $1",
                     instance_id, stamp(at), *args)


async def _finish(tx: SqlTx, instance_id: str, action: str, at: dt.datetime, *,
                  error: str | None = None, host: str | None = None) -> None:
    await tx.execute(_ACTION_FINISH, instance_id, action, stamp(at),
                     "Error" if error is not None else "Success", error, host)


async def _fold(tx: SqlTx, ev: EventEnvelope, event: msgspec.Struct) -> None:
    iid = _instance_id(ev)
    request_id = ev.correlation_id or f"req-{ev.event_id}"
    match event:
        case InstanceCreated():
            at = stamp(event.at)
            await tx.execute(_INSERT, iid, event.project_id, event.user_id, event.name,
                             _JSON.encode(event.flavor).decode(),
                             _JSON.encode(event.image).decode(),
                             _JSON.encode(event.metadata).decode(), event.key_name,
                             event.availability_zone, event.description, request_id, at)
            await tx.execute(_ACTION_START, iid, request_id, "create", event.project_id,
                             event.user_id, at, None)
        case InstanceScheduled(host=host, at=at):
            await _set(tx, iid, at, "host = $3, task_state = $4", host, SPAWNING)
        case InstanceSpawned(host=host, power_state=power, at=at):
            await _set(tx, iid, at, "vm_state = 'active', task_state = NULL, host = $3,"
                       " power_state = $4, launched_at = $2", host, power)
            await _finish(tx, iid, "create", at, host=host)
        case InstanceFailed(fault=fault, at=at):
            await _set(tx, iid, at, f"vm_state = '{ERROR}', task_state = NULL, host = NULL,"
                       f" power_state = {NOSTATE}, fault = $3", _JSON.encode(fault).decode())
            await _finish(tx, iid, "create", at, error=fault.message)
        case InstanceActionStarted(action=action, task=task, at=at):
            await _set(tx, iid, at, "task_state = $3", task)
            await _start_action(tx, iid, request_id, action, at, ev)
        case InstanceActionDone(action=action, vm_state=vm_state, power_state=power, at=at):
            clear = ", fault = NULL" if vm_state != ERROR else ""
            await _set(tx, iid, at, f"vm_state = $3, power_state = $4, task_state = NULL{clear}",
                       vm_state, power)
            await _finish(tx, iid, action, at)
        case InstanceActionFailed(action=action, message=message, at=at):
            await _set(tx, iid, at, "task_state = NULL")
            await _finish(tx, iid, action, at, error=message)
        case InstancePowerSynced(vm_state=vm_state, power_state=power, at=at):
            await _set(tx, iid, at, "vm_state = $3, power_state = $4", vm_state, power)
        case InstanceDeleting(at=at):
            await _set(tx, iid, at, "task_state = $3", DELETING)
            await _start_action(tx, iid, request_id, "delete", at, ev)
        case InstanceDeleted(at=at, host=host, note=note):
            await _set(tx, iid, at, f"vm_state = '{DELETED}', task_state = NULL,"
                       " terminated_at = $2, deleted = 1")
            open_ = await tx.fetch("SELECT request_id FROM instance_actions WHERE"
                                   " instance_id = $1 AND action = 'delete' AND"
                                   " finish_time IS NULL", iid)
            if open_:
                request_id = str(open_[0][0])
            else:
                await _start_action(tx, iid, request_id, "delete", at, ev)
            await _finish(tx, iid, "delete", at, host=host, error=None)
            if note:
                await tx.execute("UPDATE instance_actions SET message = $3 WHERE"
                                 " instance_id = $1 AND request_id = $2 AND action = 'delete'",
                                 iid, request_id, note)


async def _start_action(tx: SqlTx, iid: str, request_id: str, action: str, at: dt.datetime,
                        ev: EventEnvelope) -> None:
    """Record an action; project and user come from the server's row."""
    rows = await tx.fetch("SELECT project_id, user_id, host FROM servers WHERE id = $1", iid)
    project_id, user_id, host = rows[0] if rows else (ev.project_id or "", ev.user_id or "",
                                                      None)
    await tx.execute(_ACTION_START, iid, request_id, action, project_id,
                     ev.user_id or user_id, stamp(at), host)


# -- reads ---------------------------------------------------------------------------------


class QueryStore(Protocol):
    """What reading the tables needs: a read-only query (both of our stores have it)."""

    async def query(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        ...


def _server(row: tuple[Any, ...]) -> ServerView:
    (sid, project_id, user_id, name, vm_state, task_state, power_state, host, flavor, image,
     metadata, key_name, zone, description, fault, request_id, created_at, updated_at,
     launched_at, terminated_at, deleted) = row
    return ServerView(
        id=sid, project_id=project_id, user_id=user_id, name=name, vm_state=vm_state,
        task_state=task_state, power_state=int(power_state), host=host,
        flavor=_FLAVOR.decode(flavor), image=_IMAGE.decode(image),
        metadata=_META.decode(metadata), key_name=key_name, availability_zone=zone,
        description=description, fault=_FAULT.decode(fault) if fault else None,
        request_id=request_id, created_at=created_at, updated_at=updated_at,
        launched_at=launched_at, terminated_at=terminated_at, deleted=bool(deleted))


async def read_server(store: QueryStore, server_id: str, *,
                      include_deleted: bool = False) -> ServerView | None:
    """One server (None when unknown, or deleted unless ``include_deleted``)."""
    rows = await store.query(f"SELECT {SERVER_COLUMNS} FROM servers WHERE id = $1", server_id)
    if not rows:
        return None
    server = _server(rows[0])
    return server if include_deleted or not server.deleted else None


class ServerFilter(msgspec.Struct, frozen=True, kw_only=True):
    """Nova's list filters: ``project_id`` None for every project (admin all_tenants),
    ``name`` a regular expression searched in the name, ``status`` an API status."""

    project_id: str | None = None
    name: str | None = None
    status: str | None = None
    host: str | None = None
    image: str | None = None
    flavor: str | None = None


async def read_servers(store: QueryStore, where: ServerFilter) -> list[ServerView]:
    """Live servers matching ``where``, newest first (created_at desc, id desc)."""
    sql = f"SELECT {SERVER_COLUMNS} FROM servers WHERE deleted = 0"
    args: list[object] = []
    if where.project_id is not None:
        args.append(where.project_id)
        sql += f" AND project_id = ${len(args)}"
    if where.host is not None:
        args.append(where.host)
        sql += f" AND host = ${len(args)}"
    servers = [_server(r) for r in await store.query(sql, *args)]
    pattern = re.compile(where.name) if where.name else None
    wanted = where.status.upper() if where.status else None
    found = [s for s in servers
             if (pattern is None or pattern.search(s.name))
             and (wanted is None or s.status == wanted)
             and (where.image is None or s.image.id == where.image)
             and (where.flavor is None or s.flavor.id == where.flavor)]
    found.sort(key=lambda s: (s.created_at, s.id), reverse=True)
    return found


def _action(row: tuple[Any, ...]) -> ActionView:
    (iid, request_id, action, project_id, user_id, start, finish, result, message, host,
     updated) = row
    return ActionView(instance_id=iid, request_id=request_id, action=action,
                      project_id=project_id, user_id=user_id, start_time=start,
                      finish_time=finish, result=result, message=message, host=host,
                      updated_at=updated)


async def read_actions(store: QueryStore, instance_id: str) -> list[ActionView]:
    """The server's actions, newest first (as Nova lists them)."""
    rows = await store.query(f"SELECT {ACTION_COLUMNS} FROM instance_actions"
                             " WHERE instance_id = $1", instance_id)
    return sorted((_action(r) for r in rows), key=lambda a: (a.start_time, a.request_id),
                  reverse=True)


async def read_action(store: QueryStore, instance_id: str, request_id: str) -> ActionView | None:
    """The server's action asked as ``request_id`` (the first, if one request did two)."""
    rows = await store.query(f"SELECT {ACTION_COLUMNS} FROM instance_actions"
                             " WHERE instance_id = $1 AND request_id = $2", instance_id,
                             request_id)
    actions = sorted((_action(r) for r in rows), key=lambda a: a.start_time)
    return actions[0] if actions else None
