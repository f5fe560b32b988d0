"""The ``flavors`` projection: every live flavor as a row, and how the API reads them back.

``FlavorProjection`` folds ``flavor.*`` events into the ``flavors`` table (run it with a
``store.projections.ProjectionRunner``); ``read_flavors`` / ``read_flavor`` return
`FlavorView` rows in Nova's default order (by flavor id). SQL is portable between SQLite
and PostgreSQL; ordering is done here, not by the database, so both backends agree
(PostgreSQL's collation would otherwise order ids differently from SQLite's).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import msgspec

from actors.flavor import KIND, FlavorCreated, FlavorDeleted
from schemas import EventEnvelope, stream_kind
from store.protocol import SqlTx

PROJECTION_NAME = TABLE = "flavors"

_COLUMNS = "id, name, ram, vcpus, disk, ephemeral, swap, rxtx_factor, is_public, description"
_UPSERT = f"""
INSERT INTO flavors ({_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
ON CONFLICT (id) DO UPDATE SET name = excluded.name, ram = excluded.ram,
    vcpus = excluded.vcpus, disk = excluded.disk, ephemeral = excluded.ephemeral,
    swap = excluded.swap, rxtx_factor = excluded.rxtx_factor,
    is_public = excluded.is_public, description = excluded.description"""
_DECODERS: dict[str, msgspec.json.Decoder[Any]] = {
    t.__struct_config__.tag: msgspec.json.Decoder(t)  # type: ignore[misc]
    for t in (FlavorCreated, FlavorDeleted)
}


class FlavorView(msgspec.Struct, frozen=True, kw_only=True):
    """One row of the ``flavors`` table."""

    id: str
    name: str
    ram: int
    vcpus: int
    disk: int
    ephemeral: int
    swap: int
    rxtx_factor: float
    is_public: bool
    description: str | None
    disabled: bool = False  # Nova's OS-FLV-DISABLED; nothing disables a flavor yet


class FlavorProjection:
    """Folds ``flavor.created`` / ``flavor.deleted`` into ``flavors``; ignores the rest."""

    name = PROJECTION_NAME
    #: it reads nothing of an envelope but its stream, type, data and position
    fields: tuple[str, ...] = ()
    ddl: Sequence[str] = (
        "CREATE TABLE IF NOT EXISTS flavors (id TEXT PRIMARY KEY, name TEXT NOT NULL,"
        " ram BIGINT NOT NULL, vcpus BIGINT NOT NULL, disk BIGINT NOT NULL,"
        " ephemeral BIGINT NOT NULL, swap BIGINT NOT NULL,"
        " rxtx_factor DOUBLE PRECISION NOT NULL, is_public INTEGER NOT NULL,"
        " description TEXT)",
    )
    drop: Sequence[str] = ("DROP TABLE IF EXISTS flavors",)

    async def apply(self, tx: SqlTx, events: Sequence[EventEnvelope]) -> None:
        for ev in events:
            decoder = _DECODERS.get(ev.type)
            if decoder is not None and stream_kind(ev.stream) == KIND:
                await _apply_one(tx, decoder.decode(ev.data))


async def _apply_one(tx: SqlTx, event: msgspec.Struct) -> None:
    match event:
        case FlavorCreated():
            await tx.execute(_UPSERT, event.flavor_id, event.name, event.ram, event.vcpus,
                             event.disk, event.ephemeral, event.swap, event.rxtx_factor,
                             int(event.is_public), event.description)
        case FlavorDeleted(flavor_id=flavor_id):
            await tx.execute("DELETE FROM flavors WHERE id = $1", flavor_id)


class QueryStore(Protocol):
    """What reading the table needs: a read-only query (both of our stores have it)."""

    async def query(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        ...


def _row(row: tuple[Any, ...]) -> FlavorView:
    fid, name, ram, vcpus, disk, ephemeral, swap, rxtx, public, description = row
    return FlavorView(id=fid, name=name, ram=int(ram), vcpus=int(vcpus), disk=int(disk),
                      ephemeral=int(ephemeral), swap=int(swap), rxtx_factor=float(rxtx),
                      is_public=bool(public), description=description)


async def read_flavors(
    store: QueryStore, *, is_public: bool | None = None, min_ram: int = 0, min_disk: int = 0,
) -> list[FlavorView]:
    """Live flavors by id: public or private only (None: both), at least this big."""
    sql = f"SELECT {_COLUMNS} FROM flavors WHERE ram >= $1 AND disk >= $2"
    args: list[object] = [min_ram, min_disk]
    if is_public is not None:
        sql += " AND is_public = $3"
        args.append(int(is_public))
    rows = await store.query(sql, *args)
    return sorted((_row(r) for r in rows), key=lambda f: f.id)


async def read_flavor(store: QueryStore, flavor_id: str) -> FlavorView | None:
    """One live flavor, or None."""
    rows = await store.query(f"SELECT {_COLUMNS} FROM flavors WHERE id = $1", flavor_id)
    return _row(rows[0]) if rows else None
