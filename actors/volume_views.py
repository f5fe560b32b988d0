"""The block storage projection: ``volumes`` and ``server_volumes`` folded from the log.

``volumes`` holds one row per volume as Cinder shows it (status, size, bootable, its
attachments as JSON, the image it came from, the storage host), a deleted volume keeping
its row with ``deleted`` 1. ``server_volumes`` holds each server's side of every
attachment (Nova's block device mappings) with the saga's step (``reserving``,
``attaching``, ``attached``, ``detaching``; ``refused`` or ``failed`` with the reason,
``detached``),
which is what ``os-volume_attachments`` and a server's ``volumes_attached`` show and what
the gateway waits on after it asks for an attach.

Both sides are folded by one projection in one transaction per batch, so the two agree
for every reader: the saga records the server's side of an attach first, so a reader
that sees the volume in-use sees the server's attachment; and a detached attachment stays
listed (``releasing``) until the volume's ``volume.detached`` is folded, which takes it
away in the same transaction that makes the volume available.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any, Protocol

import msgspec

from actors import instance_volumes as saga
from actors.instance import InstanceDeleted
from actors.volume import AVAILABLE, DELETED, IN_USE, KIND
from actors.volume_messages import (
    Attachment,
    VolumeAttached,
    VolumeCreated,
    VolumeDeleted,
    VolumeDeleteFailed,
    VolumeDeleting,
    VolumeDetached,
    VolumeDetaching,
    VolumeDetachRolledBack,
    VolumeExtended,
    VolumeExtendFailed,
    VolumeExtending,
    VolumeFailed,
    VolumeImage,
    VolumeMade,
    VolumeReserved,
    VolumeScheduled,
    VolumeUnreserved,
    VolumeUpdated,
)
from schemas import EventEnvelope, stream_kind
from store.protocol import SqlTx

PROJECTION_NAME = "volumes"
VOLUMES, SERVER_VOLUMES = "volumes", "server_volumes"
INSTANCE_KIND = "instance"
#: detached from the domain, until the volume says it is free (then ``detached``)
RELEASING = "releasing"
#: a server's attachments that are its volumes (the rest failed or are gone)
SHOWN = (saga.RESERVING, saga.ATTACHING, saga.ATTACHED, saga.DETACHING, RELEASING)
#: an attach the volume refused, one that failed after the volume was reserved, a detach
REFUSED, FAILED, DETACHED = "refused", "failed", "detached"

VOLUME_COLUMNS = (
    "id, project_id, user_id, name, description, size, status, volume_type,"
    " availability_zone, bootable, metadata, image, host, attachments, error, created_at,"
    " updated_at")
SERVER_VOLUME_COLUMNS = (
    "server_id, volume_id, attachment_id, device, state, delete_on_termination, tag, error")

DDL = (
    f"""CREATE TABLE IF NOT EXISTS {VOLUMES} (
        id TEXT PRIMARY KEY, project_id TEXT NOT NULL, user_id TEXT NOT NULL,
        name TEXT NOT NULL, description TEXT, size BIGINT NOT NULL, status TEXT NOT NULL,
        volume_type TEXT NOT NULL, availability_zone TEXT NOT NULL,
        bootable INTEGER NOT NULL, metadata TEXT NOT NULL, image TEXT, host TEXT,
        attachments TEXT NOT NULL, error TEXT, created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL, deleted INTEGER NOT NULL)""",
    f"CREATE INDEX IF NOT EXISTS {VOLUMES}_project ON {VOLUMES}"
    " (project_id, deleted, created_at, id)",
    f"CREATE INDEX IF NOT EXISTS {VOLUMES}_created ON {VOLUMES} (deleted, created_at, id)",
    f"""CREATE TABLE IF NOT EXISTS {SERVER_VOLUMES} (
        server_id TEXT NOT NULL, volume_id TEXT NOT NULL, attachment_id TEXT NOT NULL,
        device TEXT NOT NULL, state TEXT NOT NULL, delete_on_termination INTEGER NOT NULL,
        tag TEXT, error TEXT, updated_at TEXT NOT NULL,
        PRIMARY KEY (server_id, attachment_id))""",
    f"CREATE INDEX IF NOT EXISTS {SERVER_VOLUMES}_volume ON {SERVER_VOLUMES}"
    " (server_id, volume_id)",
    f"CREATE INDEX IF NOT EXISTS {SERVER_VOLUMES}_attachment ON {SERVER_VOLUMES}"
    " (attachment_id)",
)
DROP = (f"DROP TABLE IF EXISTS {VOLUMES}", f"DROP TABLE IF EXISTS {SERVER_VOLUMES}")

_JSON = msgspec.json.Encoder()
_ATTACHMENTS = msgspec.json.Decoder(list[Attachment])
_META = msgspec.json.Decoder(dict[str, str])
_IMAGE = msgspec.json.Decoder(VolumeImage)
_VOLUME_EVENTS: dict[str, msgspec.json.Decoder[Any]] = {
    t.__struct_config__.tag: msgspec.json.Decoder(t)  # type: ignore[misc]
    for t in (VolumeCreated, VolumeScheduled, VolumeMade, VolumeFailed, VolumeUpdated,
              VolumeExtending, VolumeExtended, VolumeExtendFailed, VolumeReserved,
              VolumeAttached, VolumeUnreserved, VolumeDetaching, VolumeDetached,
              VolumeDetachRolledBack, VolumeDeleting, VolumeDeleteFailed, VolumeDeleted)
}
_INSTANCE_TYPES: tuple[type[msgspec.Struct], ...] = (*saga.VOLUME_EVENTS, InstanceDeleted)
_INSTANCE_EVENTS: dict[str, msgspec.json.Decoder[Any]] = {
    t.__struct_config__.tag: msgspec.json.Decoder(t)  # type: ignore[misc]
    for t in _INSTANCE_TYPES
}
_STATUS_AFTER = f"CASE WHEN attachments = '[]' THEN '{AVAILABLE}' ELSE '{IN_USE}' END"


def stamp(when: dt.datetime) -> str:
    """A time as the tables store it: UTC, microseconds, ordered as text."""
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")


class VolumeView(msgspec.Struct, frozen=True):
    """One ``volumes`` row (`VOLUME_COLUMNS`); JSON columns as stored."""

    id: str
    project_id: str
    user_id: str
    name: str
    description: str | None
    size: int
    status: str
    volume_type: str
    availability_zone: str
    bootable: bool
    metadata_json: str
    image_json: str | None
    host: str | None
    attachments_json: str
    error: str | None
    created_at: str
    updated_at: str

    @property
    def metadata(self) -> dict[str, str]:
        return _META.decode(self.metadata_json)

    @property
    def attachments(self) -> list[Attachment]:
        return _ATTACHMENTS.decode(self.attachments_json)

    @property
    def image(self) -> VolumeImage | None:
        return _IMAGE.decode(self.image_json) if self.image_json else None


class ServerVolumeView(msgspec.Struct, frozen=True):
    """One ``server_volumes`` row: a server's side of one attachment."""

    server_id: str
    volume_id: str
    attachment_id: str
    device: str
    state: str
    delete_on_termination: bool
    tag: str | None
    error: str | None


class VolumesProjection:
    """Folds ``volume.*`` and the instances' ``instance.volume_*`` events."""

    name = PROJECTION_NAME
    #: it reads nothing of an envelope but its stream, type, data and position
    fields: tuple[str, ...] = ()
    ddl: Sequence[str] = DDL
    drop: Sequence[str] = DROP

    async def apply(self, tx: SqlTx, events: Sequence[EventEnvelope]) -> None:
        for ev in events:
            kind = stream_kind(ev.stream)
            key = ev.stream.partition(":")[2]
            if kind == KIND and (decoder := _VOLUME_EVENTS.get(ev.type)) is not None:
                await _fold_volume(tx, key, decoder.decode(ev.data))
            elif kind == INSTANCE_KIND and (decoder := _INSTANCE_EVENTS.get(ev.type)):
                await _fold_server(tx, key, decoder.decode(ev.data))


async def _set(tx: SqlTx, vid: str, at: dt.datetime, sets: str, *args: object) -> None:
    await tx.execute(f"UPDATE {VOLUMES} SET {sets}, updated_at = $2 WHERE id = $1",
                     vid, stamp(at), *args)


async def _fold_volume(tx: SqlTx, vid: str, event: msgspec.Struct) -> None:
    match event:
        case VolumeCreated(at=at):
            image = None if event.image is None else _JSON.encode(event.image).decode()
            await tx.execute(
                f"INSERT INTO {VOLUMES} ({VOLUME_COLUMNS}, deleted) VALUES ($1, $2, $3, $4,"
                " $5, $6, 'creating', $7, $8, 0, $9, $10, NULL, '[]', NULL, $11, $11, 0)"
                " ON CONFLICT (id) DO NOTHING", vid, event.project_id, event.user_id,
                event.name, event.description, event.size, event.volume_type,
                event.availability_zone, _JSON.encode(event.metadata).decode(), image,
                stamp(at))
        case VolumeScheduled(host=host, at=at):
            await _set(tx, vid, at, "host = $3", host)
        case VolumeMade(at=at):
            await _set(tx, vid, at, "status = $3, error = NULL, bootable ="
                       " CASE WHEN image IS NULL THEN 0 ELSE 1 END", AVAILABLE)
        case VolumeFailed(reason=reason, at=at):
            await _set(tx, vid, at, "status = 'error', error = $3", reason)
        case VolumeUpdated(name=name, description=description, metadata=metadata, at=at):
            await _set(tx, vid, at, "name = $3, description = $4, metadata = $5", name,
                       description, _JSON.encode(metadata).decode())
        case VolumeExtending(at=at):
            await _set(tx, vid, at, "status = 'extending'")
        case VolumeExtended(size=size, at=at):
            await _set(tx, vid, at, "status = $3, size = $4, error = NULL", AVAILABLE, size)
        case VolumeExtendFailed(reason=reason, at=at):
            await _set(tx, vid, at, "status = $3, error = $4", AVAILABLE,
                       f"extend failed: {reason}")
        case VolumeReserved(at=at):
            await _set(tx, vid, at, "status = 'attaching'")
        case VolumeAttached(attachment=attachment, at=at):
            held = await _attachments(tx, vid)
            await _set(tx, vid, at, "status = $3, attachments = $4", IN_USE,
                       _JSON.encode([*held, attachment]).decode())
        case VolumeUnreserved(at=at) | VolumeDetachRolledBack(at=at):
            await _set(tx, vid, at, f"status = {_STATUS_AFTER}")
        case VolumeDetaching(at=at):
            await _set(tx, vid, at, "status = 'detaching'")
        case VolumeDetached(attachment_id=aid, at=at):
            held = [a for a in await _attachments(tx, vid) if a.attachment_id != aid]
            await _set(tx, vid, at, "attachments = $3", _JSON.encode(held).decode())
            await _set(tx, vid, at, f"status = {_STATUS_AFTER}")
            await tx.execute(f"UPDATE {SERVER_VOLUMES} SET state = '{DETACHED}',"
                             " updated_at = $2 WHERE attachment_id = $1 AND state ="
                             f" '{RELEASING}'", aid, stamp(at))
        case VolumeDeleting(at=at):
            await _set(tx, vid, at, "status = 'deleting'")
        case VolumeDeleteFailed(reason=reason, at=at):
            await _set(tx, vid, at, "status = 'error_deleting', error = $3", reason)
        case VolumeDeleted(at=at):
            await _set(tx, vid, at, "status = $3, deleted = 1, attachments = '[]'", DELETED)


async def _attachments(tx: SqlTx, vid: str) -> list[Attachment]:
    rows = await tx.fetch(f"SELECT attachments FROM {VOLUMES} WHERE id = $1", vid)
    return _ATTACHMENTS.decode(str(rows[0][0])) if rows else []


async def _step(tx: SqlTx, sid: str, vid: str, at: dt.datetime, state: str,
                error: str | None = None) -> None:
    """The server's current attachment of ``vid`` moves to ``state`` (``$3``: an SQL
    expression of the old ``state`` may stand in for it)."""
    await tx.execute(
        f"UPDATE {SERVER_VOLUMES} SET state = {state}, error = $3, updated_at = $4"
        f" WHERE server_id = $1 AND volume_id = $2 AND state IN"
        f" ('{saga.RESERVING}', '{saga.ATTACHING}', '{saga.ATTACHED}', '{saga.DETACHING}')",
        sid, vid, error, stamp(at))


async def _fold_server(tx: SqlTx, sid: str, event: msgspec.Struct) -> None:
    match event:
        case saga.InstanceVolumeAttaching(at=at):
            await tx.execute(
                f"INSERT INTO {SERVER_VOLUMES} (server_id, volume_id, attachment_id, device,"
                " state, delete_on_termination, tag, error, updated_at) VALUES ($1, $2, $3,"
                " $4, $5, $6, $7, NULL, $8) ON CONFLICT (server_id, attachment_id) DO NOTHING",
                sid, event.volume_id, event.attachment_id, event.device, saga.RESERVING,
                int(event.delete_on_termination), event.tag, stamp(at))
        case saga.InstanceVolumeReserved(volume_id=vid, at=at):
            await _step(tx, sid, vid, at, f"'{saga.ATTACHING}'")
        case saga.InstanceVolumeAttached(volume_id=vid, at=at):
            await _step(tx, sid, vid, at, f"'{saga.ATTACHED}'")
        case saga.InstanceVolumeAttachFailed(volume_id=vid, reason=reason, at=at):
            # refused: the volume was never ours; failed: it was, and went back
            await _step(tx, sid, vid, at, f"CASE WHEN state = '{saga.RESERVING}' THEN"
                        f" '{REFUSED}' ELSE '{FAILED}' END", reason)
        case saga.InstanceVolumeDetaching(volume_id=vid, at=at):
            await _step(tx, sid, vid, at, f"'{saga.DETACHING}'")
        case saga.InstanceVolumeDetached(volume_id=vid, at=at):
            await _step(tx, sid, vid, at, f"'{RELEASING}'")
        case saga.InstanceVolumeDetachFailed(volume_id=vid, reason=reason, at=at):
            await _step(tx, sid, vid, at, f"'{saga.ATTACHED}'", reason)
        case InstanceDeleted(at=at):
            await tx.execute(f"UPDATE {SERVER_VOLUMES} SET state = '{DETACHED}', updated_at = $2"
                             f" WHERE server_id = $1 AND state IN {_in(SHOWN)}", sid, stamp(at))


def _in(values: Sequence[str]) -> str:
    return "(" + ", ".join(f"'{v}'" for v in values) + ")"


# -- reads ---------------------------------------------------------------------------------


class QueryStore(Protocol):
    """What reading the tables needs: a read-only query (both of our stores have it)."""

    async def query(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        ...


class MarkerNotFound(LookupError):
    def __init__(self, marker: str) -> None:
        super().__init__(f"marker [{marker}] not found")


def _volume(row: tuple[Any, ...]) -> VolumeView:
    (vid, project_id, user_id, name, description, size, status, vtype, zone, bootable,
     metadata, image, host, attachments, error, created, updated) = row
    return VolumeView(vid, project_id, user_id, name, description, int(size), status, vtype,
                      zone, bool(bootable), metadata, image, host, attachments, error, created,
                      updated)


async def read_volume(store: QueryStore, volume_id: str) -> VolumeView | None:
    """One live volume (None when unknown or deleted)."""
    rows = await store.query(f"SELECT {VOLUME_COLUMNS} FROM {VOLUMES} WHERE id = $1 AND"
                             " deleted = 0", volume_id)
    return _volume(rows[0]) if rows else None


class VolumeFilter(msgspec.Struct, frozen=True, kw_only=True):
    """Cinder's list filters: ``project_id`` None for every project (admin all_tenants);
    ``name`` and ``status`` exact; every ``metadata`` pair must be on the volume."""

    project_id: str | None = None
    name: str | None = None
    status: str | None = None
    metadata: dict[str, str] = {}


async def read_volumes(store: QueryStore, where: VolumeFilter, *, limit: int | None = None,
                       marker: str | None = None) -> list[VolumeView]:
    """Live volumes matching ``where``, newest first, after ``marker``, at most ``limit``."""
    conds, args = ["deleted = 0"], []
    for column, value in (("project_id", where.project_id), ("name", where.name),
                          ("status", where.status)):
        if value is not None:
            args.append(value)
            conds.append(f"{column} = ${len(args)}")
    if marker is not None:
        key = await store.query(f"SELECT created_at, id FROM {VOLUMES} WHERE id = $1",
                                marker)
        if not key:
            raise MarkerNotFound(marker)
        args += [key[0][0], key[0][1]]
        conds.append(f"(created_at, id) < (${len(args) - 1}, ${len(args)})")
    sql = (f"SELECT {VOLUME_COLUMNS} FROM {VOLUMES} WHERE {' AND '.join(conds)}"
           " ORDER BY created_at DESC, id DESC")
    if limit is not None and not where.metadata:
        sql += f" LIMIT {int(limit)}"
    found = [_volume(r) for r in await store.query(sql, *args)]
    if where.metadata:
        wanted = where.metadata.items()
        found = [v for v in found if wanted <= v.metadata.items()]
    return found if limit is None else found[:limit]


def _server_volume(row: tuple[Any, ...]) -> ServerVolumeView:
    sid, vid, aid, device, state, dot, tag, error = row
    return ServerVolumeView(sid, vid, aid, device, state, bool(dot), tag, error)


async def read_server_volumes(store: QueryStore, server_id: str) -> list[ServerVolumeView]:
    """The server's volumes (attached, or being attached or detached), by device."""
    rows = await store.query(f"SELECT {SERVER_VOLUME_COLUMNS} FROM {SERVER_VOLUMES}"
                             f" WHERE server_id = $1 AND state IN {_in(SHOWN)}"
                             " ORDER BY device", server_id)
    return [_server_volume(r) for r in rows]


async def read_attachment(store: QueryStore, server_id: str,
                          attachment_id: str) -> ServerVolumeView | None:
    """The server's side of one attachment, whatever its state."""
    rows = await store.query(f"SELECT {SERVER_VOLUME_COLUMNS} FROM {SERVER_VOLUMES}"
                             " WHERE server_id = $1 AND attachment_id = $2", server_id,
                             attachment_id)
    return _server_volume(rows[0]) if rows else None


async def read_volumes_attached(store: QueryStore,
                                server_ids: Sequence[str]) -> dict[str, list[ServerVolumeView]]:
    """The volumes of each of ``server_ids`` (those with none left out)."""
    if not server_ids:
        return {}
    marks = ", ".join(f"${i + 1}" for i in range(len(server_ids)))
    rows = await store.query(f"SELECT {SERVER_VOLUME_COLUMNS} FROM {SERVER_VOLUMES}"
                             f" WHERE server_id IN ({marks}) AND state IN {_in(SHOWN)}"
                             " ORDER BY device", *server_ids)
    found: dict[str, list[ServerVolumeView]] = {}
    for row in rows:
        view = _server_volume(row)
        found.setdefault(view.server_id, []).append(view)
    return found
