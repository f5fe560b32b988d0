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

import asyncio
import datetime as dt
import ipaddress
import re
from collections.abc import Iterable, Sequence
from functools import reduce
from operator import or_
from typing import Any, Protocol

import msgspec

from actors.instance import (
    ACTIVE,
    BUILDING,
    DELETED,
    DELETING,
    ERROR,
    KIND,
    NOSTATE,
    SCHEDULING,
    SPAWNING,
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
from schemas import EventEnvelope
from store.protocol import SqlTx
from store.rowset import Carried, RowSet
from store.tables import Table

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
    # a status filter (a client polling its BUILD servers) within a project: every
    # equality of the query in the index, so the planner takes it over the project's
    # index even with no statistics (autovacuum off), which walked every server of the
    # project to find the few in BUILD (2 ms a listing of 4,000)
    f"DROP INDEX IF EXISTS {SERVERS}_status",
    f"CREATE INDEX IF NOT EXISTS {SERVERS}_by_status ON {SERVERS}"
    " (status, project_id, deleted, created_at, id)",
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

#: the instance events that change a row (every other one leaves them as they are)
_FOLDED: tuple[type[msgspec.Struct], ...] = (
    InstanceCreated, InstanceScheduled, InstanceSpawned, InstanceFailed, InstanceActionStarted,
    InstanceActionDone, InstanceActionFailed, InstancePowerSynced, InstanceDeleting,
    InstanceDeleted)
_TAGS = {t.__struct_config__.tag for t in _FOLDED}
_JSON = msgspec.json.Encoder()
_FAULT = msgspec.json.Decoder(Fault)
_META = msgspec.json.Decoder(dict[str, str])
SERVERS_TABLE = Table(SERVERS, (
    ("id", "text"), ("project_id", "text"), ("user_id", "text"), ("name", "text"),
    ("status", "text"), ("vm_state", "text"), ("task_state", "text"),
    ("power_state", "integer"), ("host", "text"), ("flavor_id", "text"),
    ("image_id", "text"), ("flavor", "text"), ("image", "text"), ("metadata", "text"),
    ("key_name", "text"), ("availability_zone", "text"), ("description", "text"),
    ("fault", "text"), ("request_id", "text"), ("created_at", "text"),
    ("updated_at", "text"), ("launched_at", "text"), ("terminated_at", "text"),
    ("deleted", "integer"), ("addresses", "text")))
ACTIONS_TABLE = Table(ACTIONS, (
    ("instance_id", "text"), ("request_id", "text"), ("action", "text"),
    ("project_id", "text"), ("user_id", "text"), ("start_time", "text"),
    ("finish_time", "text"), ("result", "text"), ("message", "text"), ("host", "text"),
    ("updated_at", "text")), key=3)


def addresses_json(nics: Sequence[NicInfo]) -> str:
    """Nova's ``addresses`` of a server with these NICs: per network name, each fixed
    address with its version, ``OS-EXT-IPS:type`` fixed and the port's MAC."""
    if not nics:
        return "{}"
    addresses: dict[str, list[dict[str, object]]] = {}
    for nic in nics:
        addresses.setdefault(nic.network_name, []).extend(
            {"version": ipaddress.ip_address(ip).version, "addr": ip,
             "OS-EXT-IPS:type": "fixed", "OS-EXT-IPS-MAC:mac_addr": nic.mac}
            for ip in nic.ips)
    return _JSON.encode(addresses).decode()


def stamp(when: dt.datetime) -> str:
    """A time as the table stores it: UTC, microseconds, ordered as text."""
    if when.tzinfo is dt.UTC:  # as decoded from an event: msgspec writes it 7x faster
        text = _JSON.encode(when)  # b'"2026-12-06T20:39:04.123456Z"' (no .000000)
        if len(text) == 29:
            return text[1:27].decode()
    utc = when.astimezone(dt.UTC)
    return utc.replace(tzinfo=None).isoformat(timespec="microseconds")


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


class _Identified(msgspec.Struct, frozen=True):
    """The id of a flavor or image as the server's creation embeds it."""

    id: str


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


# -- what the fold reads of each event -------------------------------------------------------
# Each folded event is decoded into a struct of only the fields the rows take, times as
# their text and the flavor, image and metadata as their JSON, stored as they are: decoding
# an instance.created whole (its flavor and image structs, its metadata, its time) and
# encoding the parts again took three times what this does, most of a rebuild's decoding.


def _tag(event: type[msgspec.Struct]) -> Any:
    return event.__struct_config__.tag


class _Created(msgspec.Struct, frozen=True, kw_only=True, tag=_tag(InstanceCreated)):
    name: str
    project_id: str
    user_id: str
    flavor: msgspec.Raw
    image: msgspec.Raw
    metadata: msgspec.Raw = msgspec.Raw(b"{}")
    key_name: str | None = None
    availability_zone: str | None = None
    description: str | None = None
    nics: list[NicInfo] = []
    at: str


class _Scheduled(msgspec.Struct, frozen=True, kw_only=True, tag=_tag(InstanceScheduled)):
    host: str
    at: str


class _Spawned(msgspec.Struct, frozen=True, kw_only=True, tag=_tag(InstanceSpawned)):
    host: str
    power_state: int
    at: str


class _Failed(msgspec.Struct, frozen=True, kw_only=True, tag=_tag(InstanceFailed)):
    fault: Fault
    at: str


class _ActionStarted(msgspec.Struct, frozen=True, kw_only=True,
                     tag=_tag(InstanceActionStarted)):
    action: str
    task: str
    at: str


class _ActionDone(msgspec.Struct, frozen=True, kw_only=True, tag=_tag(InstanceActionDone)):
    action: str
    vm_state: str
    power_state: int
    at: str


class _ActionFailed(msgspec.Struct, frozen=True, kw_only=True,
                    tag=_tag(InstanceActionFailed)):
    action: str
    message: str
    at: str


class _PowerSynced(msgspec.Struct, frozen=True, kw_only=True, tag=_tag(InstancePowerSynced)):
    vm_state: str
    power_state: int
    at: str


class _Deleting(msgspec.Struct, frozen=True, kw_only=True, tag=_tag(InstanceDeleting)):
    at: str


class _Deleted(msgspec.Struct, frozen=True, kw_only=True, tag=_tag(InstanceDeleted)):
    host: str | None
    note: str = ""
    at: str


_READS: tuple[type[msgspec.Struct], ...] = (
    _Created, _Scheduled, _Spawned, _Failed, _ActionStarted, _ActionDone, _ActionFailed,
    _PowerSynced, _Deleting, _Deleted)
assert {_tag(t) for t in _READS} == _TAGS
_DECODER: msgspec.json.Decoder[Any] = msgspec.json.Decoder(reduce(or_, _READS))
_ID = msgspec.json.Decoder(_Identified)
_TIME = msgspec.json.Decoder(dt.datetime)


def _when(text: str) -> str:
    """An event's time (as its JSON has it) as the table stores it (`stamp`). msgspec
    writes a UTC time with microseconds as ``2026-12-06T20:39:04.123456Z``: the stored text
    and a Z. Any other form is parsed and stamped."""
    if len(text) == 27 and text[26] == "Z" and text[19] == ".":
        return text[:26]
    return stamp(_TIME.decode(_JSON.encode(text)))


class InstancesProjection:
    """Folds ``instance.*`` events into ``servers_v3`` and ``instance_actions_v3``: a
    batch's servers and actions are folded in memory (`_Batch`) and each touched row is
    written once."""

    name = PROJECTION_NAME
    #: all it folds (a rebuild reads only these): the instance events that change a row
    types = tuple(sorted(map(str, _TAGS)))
    #: each server and action row is folded from its instance's stream alone
    per_stream = True
    #: what it reads of an envelope besides its stream, type, data and position: the
    #: request id of an action (the correlation id, else the event's id) and who asked
    fields = ("correlation_id", "event_id", "user_id")
    ddl: Sequence[str] = DDL
    drop: Sequence[str] = DROP

    def __init__(self) -> None:
        #: the last batch's rows, for the next batch to go on from
        self._carried: Carried[_Batch] = Carried()

    async def apply(self, tx: SqlTx, events: Sequence[EventEnvelope]) -> None:
        batch = self._carried.take(tx.since) or _Batch()
        decode, skip = _DECODER.decode, len(_PREFIX)
        mine = [(ev.stream[skip:], ev, decode(ev.data))
                for ev in events if ev.type in _TAGS and ev.stream.startswith(_PREFIX)]
        if mine:
            batch.fresh([iid for iid, _, event in mine if type(event) is _Created])
            await batch.load(tx, [iid for iid, _, _ in mine])
            fold = batch.fold
            for iid, ev, event in mine:
                fold(iid, ev, event)
            await batch.servers.flush(tx)
            await batch.actions.flush(tx)
        self._carried.keep(batch, events[-1].position, len(batch.servers) + len(batch.actions))


_PREFIX = f"{KIND}:"
_CREATED_STATUS = status(BUILDING, SCHEDULING)


Row = dict[str, Any]


class _Batch:
    """One batch's servers and actions, as the batch leaves them."""

    def __init__(self) -> None:
        self.servers = RowSet(SERVERS_TABLE)
        self.actions = RowSet(ACTIONS_TABLE)
        #: instance id -> its action rows known to this batch
        self.actions_of: dict[str, list[Row]] = {}

    def fresh(self, instance_ids: Iterable[str]) -> None:
        """Instances created in this batch: no committed row can be theirs."""
        self.servers.known("id", instance_ids)
        self.actions.known("instance_id", instance_ids)

    async def load(self, tx: SqlTx, instance_ids: Sequence[str]) -> None:
        """The committed rows of these instances not known yet (both reads at once)."""
        _, actions = await asyncio.gather(self.servers.load(tx, "id", instance_ids),
                                          self.actions.load(tx, "instance_id", instance_ids))
        for row in actions:
            self.actions_of.setdefault(row["instance_id"], []).append(row)

    def fold(self, iid: str, ev: EventEnvelope, event: msgspec.Struct) -> None:
        if type(event) is _Created:
            self._create(iid, ev.correlation_id or f"req-{ev.event_id}", event)
            return
        server = self.servers.rows.get((iid,))
        if server is None:
            return  # as an UPDATE of no row: a server this projection never saw created
        _FOLDS[type(event)](self, iid, server, ev, event)

    def _scheduled(self, iid: str, server: Row, ev: EventEnvelope,
                   event: _Scheduled) -> None:
        server["host"] = event.host
        server["task_state"] = SPAWNING
        self._changed(iid, server, _when(event.at))

    def _spawned(self, iid: str, server: Row, ev: EventEnvelope,
                 event: _Spawned) -> None:
        when = _when(event.at)
        server["vm_state"] = ACTIVE
        server["task_state"] = None
        server["host"] = event.host
        server["power_state"] = event.power_state
        server["launched_at"] = when
        self._changed(iid, server, when)
        self._finish(iid, "create", when, host=event.host)

    def _failed(self, iid: str, server: Row, ev: EventEnvelope, event: _Failed) -> None:
        when = _when(event.at)
        server.update(vm_state=ERROR, task_state=None, host=None, power_state=NOSTATE,
                      fault=_JSON.encode(event.fault).decode())
        self._changed(iid, server, when)
        self._finish(iid, "create", when, error=event.fault.message)

    def _action_started(self, iid: str, server: Row, ev: EventEnvelope,
                        event: _ActionStarted) -> None:
        when = _when(event.at)
        server["task_state"] = event.task
        self._changed(iid, server, when)
        self._start(server, ev.correlation_id or f"req-{ev.event_id}", event.action, when, ev)

    def _action_done(self, iid: str, server: Row, ev: EventEnvelope,
                     event: _ActionDone) -> None:
        when = _when(event.at)
        server.update(vm_state=event.vm_state, power_state=event.power_state, task_state=None)
        if event.vm_state != ERROR:
            server["fault"] = None
        self._changed(iid, server, when)
        self._finish(iid, event.action, when)

    def _action_failed(self, iid: str, server: Row, ev: EventEnvelope,
                       event: _ActionFailed) -> None:
        when = _when(event.at)
        server["task_state"] = None
        self._changed(iid, server, when)
        self._finish(iid, event.action, when, error=event.message)

    def _power_synced(self, iid: str, server: Row, ev: EventEnvelope,
                      event: _PowerSynced) -> None:
        server["vm_state"] = event.vm_state
        server["power_state"] = event.power_state
        self._changed(iid, server, _when(event.at))

    def _deleting(self, iid: str, server: Row, ev: EventEnvelope,
                  event: _Deleting) -> None:
        when = _when(event.at)
        server["task_state"] = DELETING
        self._changed(iid, server, when)
        self._start(server, ev.correlation_id or f"req-{ev.event_id}", "delete", when, ev)

    def _deleted(self, iid: str, server: Row, ev: EventEnvelope, event: _Deleted) -> None:
        when = _when(event.at)
        server.update(vm_state=DELETED, task_state=None, terminated_at=when, deleted=1)
        self._changed(iid, server, when)
        open_ = next((a for a in self.actions_of.get(iid, ())
                      if a["action"] == "delete" and a["finish_time"] is None), None)
        if open_ is None:
            open_ = self._start(server, ev.correlation_id or f"req-{ev.event_id}", "delete",
                                when, ev)
        self._finish(iid, "delete", when, host=event.host)
        if event.note:
            open_["message"] = event.note
            self.actions.changed(open_)

    def _create(self, iid: str, request_id: str, event: _Created) -> None:
        if self.servers.rows.get((iid,)) is not None:
            return  # created once (as INSERT … ON CONFLICT DO NOTHING)
        at = _when(event.at)
        self.servers.put({
            "id": iid, "project_id": event.project_id, "user_id": event.user_id,
            "name": event.name, "status": _CREATED_STATUS,
            "vm_state": BUILDING, "task_state": SCHEDULING, "power_state": NOSTATE,
            "host": None, "flavor_id": _ID.decode(event.flavor).id,
            "image_id": _ID.decode(event.image).id, "flavor": bytes(event.flavor).decode(),
            "image": bytes(event.image).decode(), "metadata": bytes(event.metadata).decode(),
            "key_name": event.key_name,
            "availability_zone": event.availability_zone, "description": event.description,
            "fault": None, "request_id": request_id, "created_at": at, "updated_at": at,
            "launched_at": None, "terminated_at": None, "deleted": 0,
            "addresses": addresses_json(event.nics)})
        self._action(iid, request_id, "create", event.project_id, event.user_id, at, None)

    def _changed(self, iid: str, server: Row, when: str) -> None:
        """The server's columns were changed: its status follows its states, updated_at
        is ``when`` (a `stamp`), and the row is written at the batch's end."""
        server["status"] = status(server["vm_state"], server["task_state"])
        server["updated_at"] = when
        self.servers.changed_key(iid)

    def _start(self, server: Row, request_id: str, action: str, when: str,
               ev: EventEnvelope) -> Row:
        """Record a user action; project and host from the server, the user who asked."""
        return self._action(server["id"], request_id, action, server["project_id"],
                            ev.user_id or server["user_id"], when, server["host"])

    def _action(self, iid: str, request_id: str, action: str, project_id: str,
                user_id: str, at: str, host: str | None) -> Row:
        """The action row (request id, action); a new one when there is none (as
        INSERT … ON CONFLICT DO NOTHING)."""
        found = self.actions.get(iid, request_id, action)
        if found is not None:
            return found
        row = {"instance_id": iid, "request_id": request_id, "action": action,
               "project_id": project_id, "user_id": user_id, "start_time": at,
               "finish_time": None, "result": None, "message": None, "host": host,
               "updated_at": at}
        self.actions.put(row)
        self.actions_of.setdefault(iid, []).append(row)
        return row

    def _finish(self, iid: str, action: str, when: str, *, error: str | None = None,
                host: str | None = None) -> None:
        """Finish the instance's open actions of this kind with their result."""
        for row in self.actions_of.get(iid, ()):
            if row["action"] == action and row["finish_time"] is None:
                row.update(finish_time=when, updated_at=when, message=error,
                           result="Error" if error is not None else "Success",
                           host=row["host"] if row["host"] is not None else host)
                self.actions.changed(row)


#: how each instance event but the creation changes its server's row (and actions)
_FOLDS: dict[type[msgspec.Struct], Any] = {
    _Scheduled: _Batch._scheduled, _Spawned: _Batch._spawned, _Failed: _Batch._failed,
    _ActionStarted: _Batch._action_started, _ActionDone: _Batch._action_done,
    _ActionFailed: _Batch._action_failed, _PowerSynced: _Batch._power_synced,
    _Deleting: _Batch._deleting, _Deleted: _Batch._deleted}

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
