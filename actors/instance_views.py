"""The instances projection: ``servers_v2`` and ``instance_actions_v2`` folded from instance events.

``InstancesProjection`` keeps one server row per instance (Nova's vm_state, task_state and
power_state, the API ``status`` derived from them, host, the flavor and image as created
and their ids, metadata, fault, times; a deleted server keeps its row with ``deleted`` 1,
and the reads hide it as Nova does) and one action row per user action (create, stop,
start, reboot, delete) keyed by the request id that caused it, with its start and finish
time and result.

Work is done on write so that lists are cheap: status, project, host, image and flavor
filter in SQL on indexed columns, newest first (``created_at`` desc, ``id`` desc) with the
marker as a keyset condition and the limit in SQL; only the name regex runs here, over
rows fetched a chunk at a time. Metadata and fault are stored as JSON, so a
representation can embed them without decoding.

Changing the columns is a new generation: the tables and the projection name take a new
suffix, so an existing database refolds the log into the new tables (a projection's DDL
is only ``CREATE … IF NOT EXISTS``); ``drop`` also removes the previous generation.

Portable SQL (TEXT/INTEGER/BIGINT, booleans as 0/1, ``ON CONFLICT``, row values). Times
are UTC ISO text with microseconds, so they order as text.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from collections.abc import Sequence
from functools import cache, reduce
from operator import or_
from typing import Any, Protocol

import msgspec

from actors.instance import (
    ACTIVE,
    BUILDING,
    DELETED,
    DELETING,
    ERROR,
    INSTANCE_EVENTS,
    KIND,
    NOSTATE,
    POWERING_OFF,
    POWERING_ON,
    REBOOTING,
    REBOOTING_HARD,
    SCHEDULING,
    SPAWNING,
    STOPPED,
    Fault,
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
    NicInfo,
    status,
)
from schemas import EventEnvelope, stream_kind
from store.protocol import SqlTx

PROJECTION_NAME = "instances_v3"
SERVERS = "servers_v3"
ACTIONS = "instance_actions_v3"

SERVER_COLUMNS = (
    "id, project_id, user_id, name, status, vm_state, task_state, power_state, host,"
    " flavor_id, image_id, flavor, image, metadata, key_name, availability_zone, description,"
    " fault, request_id, created_at, updated_at, launched_at, terminated_at, deleted,"
    " addresses")
#: what `ServerView` holds, in its field order
VIEW_COLUMNS = (
    "id, project_id, user_id, name, status, vm_state, task_state, power_state, host,"
    " flavor_id, image_id, metadata, key_name, availability_zone, fault, created_at,"
    " updated_at, launched_at, terminated_at, deleted, description, addresses")
ACTION_COLUMNS = (
    "instance_id, request_id, action, project_id, user_id, start_time, finish_time,"
    " result, message, host, updated_at")

DDL = (
    f"""CREATE TABLE IF NOT EXISTS {SERVERS} (
        id TEXT PRIMARY KEY, project_id TEXT NOT NULL, user_id TEXT NOT NULL,
        name TEXT NOT NULL, status TEXT NOT NULL, vm_state TEXT NOT NULL, task_state TEXT,
        power_state INTEGER NOT NULL, host TEXT, flavor_id TEXT NOT NULL,
        image_id TEXT NOT NULL, flavor TEXT NOT NULL, image TEXT NOT NULL,
        metadata TEXT NOT NULL, key_name TEXT, availability_zone TEXT, description TEXT,
        fault TEXT, request_id TEXT, created_at TEXT NOT NULL, updated_at TEXT NOT NULL,
        launched_at TEXT, terminated_at TEXT, deleted INTEGER NOT NULL,
        addresses TEXT NOT NULL)""",
    f"CREATE INDEX IF NOT EXISTS {SERVERS}_project ON {SERVERS}"
    " (project_id, deleted, created_at, id)",
    f"CREATE INDEX IF NOT EXISTS {SERVERS}_status ON {SERVERS}"
    " (status, project_id, created_at, id)",
    f"CREATE INDEX IF NOT EXISTS {SERVERS}_created ON {SERVERS} (deleted, created_at, id)",
    f"""CREATE TABLE IF NOT EXISTS {ACTIONS} (
        instance_id TEXT NOT NULL, request_id TEXT NOT NULL, action TEXT NOT NULL,
        project_id TEXT NOT NULL, user_id TEXT NOT NULL, start_time TEXT NOT NULL,
        finish_time TEXT, result TEXT, message TEXT, host TEXT, updated_at TEXT NOT NULL,
        PRIMARY KEY (instance_id, request_id, action))""",
)
#: this generation's tables and the earlier ones' (``servers``, ``servers_v2`` …)
DROP = (f"DROP TABLE IF EXISTS {SERVERS}", f"DROP TABLE IF EXISTS {ACTIONS}",
        "DROP TABLE IF EXISTS servers_v2", "DROP TABLE IF EXISTS instance_actions_v2",
        "DROP TABLE IF EXISTS servers", "DROP TABLE IF EXISTS instance_actions")

_TAGS = {t.__struct_config__.tag for t in INSTANCE_EVENTS}
_DECODER: msgspec.json.Decoder[Any] = msgspec.json.Decoder(reduce(or_, INSTANCE_EVENTS))
_JSON = msgspec.json.Encoder()
_FAULT = msgspec.json.Decoder(Fault)
_META = msgspec.json.Decoder(dict[str, str])
_VM_STATES = (BUILDING, ACTIVE, STOPPED, ERROR, DELETED)
_TASK_STATES = (SCHEDULING, SPAWNING, POWERING_OFF, POWERING_ON, REBOOTING, REBOOTING_HARD,
                DELETING)


@cache
def status_sql(vm: str, task: str) -> str:
    """SQL for `actors.instance.status` of two SQL expressions (a column, ``$n``, a literal)."""
    whens = []
    for vm_state in _VM_STATES:
        plain = status(vm_state, None)
        whens += [f"WHEN {vm} = '{vm_state}' AND {task} = '{task_state}'"
                  f" THEN '{status(vm_state, task_state)}'"
                  for task_state in _TASK_STATES if status(vm_state, task_state) != plain]
        whens.append(f"WHEN {vm} = '{vm_state}' THEN '{plain}'")
    return f"CASE {' '.join(whens)} ELSE '{status('', None)}' END"


_INSERT = f"""
INSERT INTO {SERVERS} ({SERVER_COLUMNS}) VALUES ($1, $2, $3, $4,
    '{status(BUILDING, SCHEDULING)}', '{BUILDING}', '{SCHEDULING}', {NOSTATE}, NULL, $5, $6,
    $7, $8, $9, $10, $11, $12, NULL, $13, $14, $14, NULL, NULL, 0, $15)
ON CONFLICT (id) DO NOTHING"""
_ACTION_START = f"""
INSERT INTO {ACTIONS} ({ACTION_COLUMNS})
VALUES ($1, $2, $3, $4, $5, $6, NULL, NULL, NULL, $7, $6)
ON CONFLICT (instance_id, request_id, action) DO NOTHING"""
_ACTION_FINISH = f"""
UPDATE {ACTIONS} SET finish_time = $3, updated_at = $3, result = $4, message = $5,
    host = COALESCE(host, $6)
WHERE instance_id = $1 AND action = $2 AND finish_time IS NULL"""


def addresses_json(nics: Sequence[NicInfo]) -> str:
    """Nova's ``addresses`` of a server with these NICs: per network name, each fixed
    address with its version, ``OS-EXT-IPS:type`` fixed and the port's MAC."""
    addresses: dict[str, list[dict[str, object]]] = {}
    for nic in nics:
        addresses.setdefault(nic.network_name, []).extend(
            {"version": ipaddress.ip_address(ip).version, "addr": ip,
             "OS-EXT-IPS:type": "fixed", "OS-EXT-IPS-MAC:mac_addr": nic.mac}
            for ip in nic.ips)
    return _JSON.encode(addresses).decode()


def stamp(when: dt.datetime) -> str:
    """A time as the table stores it: UTC, microseconds, ordered as text."""
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")


class ServerView(msgspec.Struct, frozen=True):
    """One server row as the representations need it (`VIEW_COLUMNS`); times as `stamp`
    text, ``metadata`` and ``fault`` as their stored JSON (embed with ``msgspec.Raw``)."""

    id: str
    project_id: str
    user_id: str
    name: str
    status: str
    vm_state: str
    task_state: str | None
    power_state: int
    host: str | None
    flavor_id: str
    image_id: str
    metadata_json: str
    key_name: str | None
    availability_zone: str | None
    fault_json: str | None
    created_at: str
    updated_at: str
    launched_at: str | None
    terminated_at: str | None
    deleted: bool
    description: str | None = None
    #: Nova's ``addresses`` as stored JSON: network name -> the server's fixed IPs on it
    addresses_json: str = "{}"

    @property
    def metadata(self) -> dict[str, str]:
        return _META.decode(self.metadata_json)

    @property
    def fault(self) -> Fault | None:
        """The fault of the last failure (None once cleared)."""
        return _FAULT.decode(self.fault_json) if self.fault_json else None


class ServerRef(msgspec.Struct, frozen=True):
    """A server as ``GET /servers`` lists it: id and name."""

    id: str
    name: str


class ActionView(msgspec.Struct, frozen=True, kw_only=True):
    """One row of ``instance_actions_v2``; ``result`` is Success or Error once finished."""

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
    """Folds ``instance.*`` events into ``servers_v2`` and ``instance_actions_v2``."""

    name = PROJECTION_NAME
    ddl: Sequence[str] = DDL
    drop: Sequence[str] = DROP

    async def apply(self, tx: SqlTx, events: Sequence[EventEnvelope]) -> None:
        for ev in events:
            if ev.type in _TAGS and stream_kind(ev.stream) == KIND:
                await _fold(tx, ev, _DECODER.decode(bytes(ev.data)))


def _instance_id(ev: EventEnvelope) -> str:
    return ev.stream.partition(":")[2]


async def _set(tx: SqlTx, instance_id: str, at: dt.datetime, sets: str, *args: object,
               vm: str = "vm_state", task: str = "task_state") -> None:
    """UPDATE the server SET ``sets`` (placeholders from $3), updated_at = $2 and the status
    of the new ``vm`` and ``task`` (SQL expressions; the columns when they do not change)."""
    await tx.execute(f"UPDATE {SERVERS} SET {sets}, status = {status_sql(vm, task)},"
                     " updated_at = $2 WHERE id = $1", instance_id, stamp(at), *args)


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
                             event.flavor.id, event.image.id,
                             _JSON.encode(event.flavor).decode(),
                             _JSON.encode(event.image).decode(),
                             _JSON.encode(event.metadata).decode(), event.key_name,
                             event.availability_zone, event.description, request_id, at,
                             addresses_json(event.nics))
            await tx.execute(_ACTION_START, iid, request_id, "create", event.project_id,
                             event.user_id, at, None)
        case InstanceScheduled(host=host, at=at):
            await _set(tx, iid, at, "host = $3, task_state = $4", host, SPAWNING, task="$4")
        case InstanceSpawned(host=host, power_state=power, at=at):
            await _set(tx, iid, at, f"vm_state = '{ACTIVE}', task_state = NULL, host = $3,"
                       " power_state = $4, launched_at = $2", host, power,
                       vm=f"'{ACTIVE}'", task="NULL")
            await _finish(tx, iid, "create", at, host=host)
        case InstanceFailed(fault=fault, at=at):
            await _set(tx, iid, at, f"vm_state = '{ERROR}', task_state = NULL, host = NULL,"
                       f" power_state = {NOSTATE}, fault = $3", _JSON.encode(fault).decode(),
                       vm=f"'{ERROR}'", task="NULL")
            await _finish(tx, iid, "create", at, error=fault.message)
        case InstanceActionStarted(action=action, task=task, at=at):
            await _set(tx, iid, at, "task_state = $3", task, task="$3")
            await _start_action(tx, iid, request_id, action, at, ev)
        case InstanceActionDone(action=action, vm_state=vm_state, power_state=power, at=at):
            clear = ", fault = NULL" if vm_state != ERROR else ""
            await _set(tx, iid, at, f"vm_state = $3, power_state = $4, task_state = NULL{clear}",
                       vm_state, power, vm="$3", task="NULL")
            await _finish(tx, iid, action, at)
        case InstanceActionFailed(action=action, message=message, at=at):
            await _set(tx, iid, at, "task_state = NULL", task="NULL")
            await _finish(tx, iid, action, at, error=message)
        case InstancePowerSynced(vm_state=vm_state, power_state=power, at=at):
            await _set(tx, iid, at, "vm_state = $3, power_state = $4", vm_state, power,
                       vm="$3")
        case InstanceDeleting(at=at):
            await _set(tx, iid, at, "task_state = $3", DELETING, task="$3")
            await _start_action(tx, iid, request_id, "delete", at, ev)
        case InstanceDeleted(at=at, host=host, note=note):
            await _set(tx, iid, at, f"vm_state = '{DELETED}', task_state = NULL,"
                       " terminated_at = $2, deleted = 1", vm=f"'{DELETED}'", task="NULL")
            open_ = await tx.fetch(f"SELECT request_id FROM {ACTIONS} WHERE"
                                   " instance_id = $1 AND action = 'delete' AND"
                                   " finish_time IS NULL", iid)
            if open_:
                request_id = str(open_[0][0])
            else:
                await _start_action(tx, iid, request_id, "delete", at, ev)
            await _finish(tx, iid, "delete", at, host=host, error=None)
            if note:
                await tx.execute(f"UPDATE {ACTIONS} SET message = $3 WHERE"
                                 " instance_id = $1 AND request_id = $2 AND action = 'delete'",
                                 iid, request_id, note)


async def _start_action(tx: SqlTx, iid: str, request_id: str, action: str, at: dt.datetime,
                        ev: EventEnvelope) -> None:
    """Record an action; project and user come from the server's row."""
    rows = await tx.fetch(f"SELECT project_id, user_id, host FROM {SERVERS} WHERE id = $1",
                          iid)
    project_id, user_id, host = rows[0] if rows else (ev.project_id or "", ev.user_id or "",
                                                      None)
    await tx.execute(_ACTION_START, iid, request_id, action, project_id,
                     ev.user_id or user_id, stamp(at), host)


# -- reads ---------------------------------------------------------------------------------


class QueryStore(Protocol):
    """What reading the tables needs: a read-only query (both of our stores have it)."""

    async def query(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        ...


class MarkerNotFound(LookupError):
    """The ``marker`` of a list is not a server of the listed project(s)."""

    def __init__(self, marker: str) -> None:
        super().__init__(f"marker [{marker}] not found")
        self.marker = marker


def _server(row: tuple[Any, ...]) -> ServerView:
    (sid, project_id, user_id, name, status_, vm_state, task_state, power_state, host,
     flavor_id, image_id, metadata, key_name, zone, fault, created_at, updated_at,
     launched_at, terminated_at, deleted, description, addresses) = row
    return ServerView(sid, project_id, user_id, name, status_, vm_state, task_state,
                      int(power_state), host, flavor_id, image_id, metadata, key_name, zone,
                      fault, created_at, updated_at, launched_at, terminated_at, bool(deleted),
                      description, addresses)


async def read_server(store: QueryStore, server_id: str, *,
                      include_deleted: bool = False) -> ServerView | None:
    """One server (None when unknown, or deleted unless ``include_deleted``)."""
    rows = await store.query(f"SELECT {VIEW_COLUMNS} FROM {SERVERS} WHERE id = $1", server_id)
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


#: rows fetched at a time while a name regex filters in Python
NAME_CHUNK = 500


async def read_servers(store: QueryStore, where: ServerFilter, *, limit: int | None = None,
                       marker: str | None = None, chunk: int = NAME_CHUNK) -> list[ServerView]:
    """Live servers matching ``where``, newest first (created_at desc, id desc): at most
    ``limit`` (all when None), after the server ``marker`` (`MarkerNotFound` if it is not
    one of the listed project's servers, live or deleted). A name regex filters rows
    fetched at least ``chunk`` at a time."""
    rows = await _page(store, VIEW_COLUMNS, 3, 15, where, limit, marker, chunk)
    return [_server(r) for r in rows]


async def read_server_refs(store: QueryStore, where: ServerFilter, *,
                           limit: int | None = None, marker: str | None = None,
                           chunk: int = NAME_CHUNK) -> list[ServerRef]:
    """As `read_servers`, only id and name (what ``GET /servers`` shows)."""
    rows = await _page(store, "id, name, created_at", 1, 2, where, limit, marker, chunk)
    return [ServerRef(r[0], r[1]) for r in rows]


def _conditions(where: ServerFilter) -> tuple[list[str], list[object]]:
    """The SQL filters of ``where`` (all but the name) with their arguments."""
    conds = ["deleted = 0"]
    args: list[object] = []
    for column, value in (("project_id", where.project_id), ("host", where.host),
                          ("image_id", where.image), ("flavor_id", where.flavor),
                          ("status", where.status.upper() if where.status else None)):
        if value is not None:
            args.append(value)
            conds.append(f"{column} = ${len(args)}")
    return conds, args


async def _marker_key(store: QueryStore, marker: str,
                      project_id: str | None) -> tuple[str, str]:
    sql = f"SELECT created_at, id FROM {SERVERS} WHERE id = $1"
    args: list[object] = [marker]
    if project_id is not None:
        sql += " AND project_id = $2"
        args.append(project_id)
    rows = await store.query(sql, *args)
    if not rows:
        raise MarkerNotFound(marker)
    return str(rows[0][0]), str(rows[0][1])


async def _page(store: QueryStore, columns: str, name_at: int, created_at: int,
                where: ServerFilter, limit: int | None, marker: str | None,
                name_chunk: int) -> list[tuple[Any, ...]]:
    """Rows of ``columns`` (``id`` first, the name and created_at at the given indexes),
    filtered and ordered in SQL, then by the name regex a chunk at a time."""
    conds, args = _conditions(where)
    after = await _marker_key(store, marker, where.project_id) if marker is not None else None
    pattern = re.compile(where.name) if where.name else None
    chunk = limit if pattern is None else max(limit or 0, name_chunk, 1)
    found: list[tuple[Any, ...]] = []
    while limit is None or len(found) < limit:
        page_conds, page_args = list(conds), list(args)
        if after is not None:
            page_args += after
            page_conds.append(f"(created_at, id) < (${len(page_args) - 1}, ${len(page_args)})")
        sql = (f"SELECT {columns} FROM {SERVERS} WHERE {' AND '.join(page_conds)}"
               " ORDER BY created_at DESC, id DESC")
        if chunk is not None:
            sql += f" LIMIT {int(chunk)}"
        rows = await store.query(sql, *page_args)
        found += rows if pattern is None else [r for r in rows if pattern.search(r[name_at])]
        if chunk is None or len(rows) < chunk:
            break
        after = (rows[-1][created_at], rows[-1][0])
    return found if limit is None else found[:limit]


def _action(row: tuple[Any, ...]) -> ActionView:
    (iid, request_id, action, project_id, user_id, start, finish, result, message, host,
     updated) = row
    return ActionView(instance_id=iid, request_id=request_id, action=action,
                      project_id=project_id, user_id=user_id, start_time=start,
                      finish_time=finish, result=result, message=message, host=host,
                      updated_at=updated)


async def read_actions(store: QueryStore, instance_id: str) -> list[ActionView]:
    """The server's actions, newest first (as Nova lists them)."""
    rows = await store.query(f"SELECT {ACTION_COLUMNS} FROM {ACTIONS}"
                             " WHERE instance_id = $1", instance_id)
    return sorted((_action(r) for r in rows), key=lambda a: (a.start_time, a.request_id),
                  reverse=True)


async def read_action(store: QueryStore, instance_id: str, request_id: str) -> ActionView | None:
    """The server's action asked as ``request_id`` (the first, if one request did two)."""
    rows = await store.query(f"SELECT {ACTION_COLUMNS} FROM {ACTIONS}"
                             " WHERE instance_id = $1 AND request_id = $2", instance_id,
                             request_id)
    actions = sorted((_action(r) for r in rows), key=lambda a: a.start_time)
    return actions[0] if actions else None
