"""The image projection: one ``images`` query table folded from the image events.

Portable SQL (TEXT/INTEGER/BIGINT columns, booleans as 0/1, ``ON CONFLICT … DO
UPDATE``). Extra properties and tags are JSON text columns: they are shown, never
filtered on in SQL. A deleted image's row is removed, as Glance hides deleted images.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import reduce
from operator import or_
from typing import Any

import msgspec

from actors.image import (
    IMAGE_EVENTS,
    ImageActivated,
    ImageCreated,
    ImageDeleted,
    ImageFields,
    ImageUpdated,
    UploadFailed,
    UploadStarted,
)
from schemas import EventEnvelope
from store.protocol import SqlTx

PROJECTION_NAME = "images"
#: the columns of ``images`` in table order, for SELECTs
COLUMNS = ("id, owner, name, status, visibility, protected, disk_format, container_format, "
           "min_disk, min_ram, size, checksum, os_hash_algo, os_hash_value, properties, tags, "
           "created_at, updated_at")

_TAGS = {t.__struct_config__.tag for t in IMAGE_EVENTS}
_DECODER: msgspec.json.Decoder[Any] = msgspec.json.Decoder(reduce(or_, IMAGE_EVENTS))
_JSON = msgspec.json.Encoder()

DDL = (
    """CREATE TABLE IF NOT EXISTS images (
        id TEXT PRIMARY KEY, owner TEXT NOT NULL, name TEXT, status TEXT NOT NULL,
        visibility TEXT NOT NULL, protected INTEGER NOT NULL, disk_format TEXT,
        container_format TEXT, min_disk INTEGER NOT NULL, min_ram INTEGER NOT NULL,
        size BIGINT, checksum TEXT, os_hash_algo TEXT, os_hash_value TEXT,
        properties TEXT NOT NULL, tags TEXT NOT NULL, created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS images_owner ON images (owner)",
    "CREATE INDEX IF NOT EXISTS images_created ON images (created_at, id)",
)
DROP = ("DROP TABLE IF EXISTS images",)

_INSERT = """
INSERT INTO images (id, owner, name, status, visibility, protected, disk_format,
    container_format, min_disk, min_ram, size, checksum, os_hash_algo, os_hash_value,
    properties, tags, created_at, updated_at)
VALUES ($1, $2, $3, 'queued', $4, $5, $6, $7, $8, $9, NULL, NULL, NULL, NULL, $10, $11, $12, $12)
ON CONFLICT (id) DO NOTHING"""
_UPDATE = """
UPDATE images SET name = $2, visibility = $3, protected = $4, disk_format = $5,
    container_format = $6, min_disk = $7, min_ram = $8, properties = $9, tags = $10,
    updated_at = $11 WHERE id = $1"""
_ACTIVATE = """
UPDATE images SET status = 'active', size = $2, checksum = $3, os_hash_algo = $4,
    os_hash_value = $5, updated_at = $6 WHERE id = $1"""


def _field_args(f: ImageFields) -> tuple[object, ...]:
    """name, visibility, protected, disk_format, container_format, min_disk, min_ram,
    properties, tags: the column values of `f` in that order."""
    return (f.name, f.visibility, int(f.protected), f.disk_format, f.container_format,
            f.min_disk, f.min_ram, _JSON.encode(f.properties).decode(),
            _JSON.encode(list(f.tags)).decode())


class ImageProjection:
    """Folds image events into ``images``; ignores every other event."""

    name = PROJECTION_NAME
    #: it reads nothing of an envelope but its stream, type, data and position
    fields: tuple[str, ...] = ()
    #: all it folds (a rebuild reads only these)
    types = tuple(sorted(map(str, _TAGS)))
    ddl: Sequence[str] = DDL
    drop: Sequence[str] = DROP

    async def apply(self, tx: SqlTx, events: Sequence[EventEnvelope]) -> None:
        for envelope in events:
            if envelope.type in _TAGS:
                await _fold(tx, _DECODER.decode(envelope.data))


async def _fold(tx: SqlTx, event: msgspec.Struct) -> None:
    match event:
        case ImageCreated(image_id=image_id, owner=owner, fields=f, at=at):
            await tx.execute(_INSERT, image_id, owner, *_field_args(f), at)
        case ImageUpdated(image_id=image_id, fields=f, at=at):
            await tx.execute(_UPDATE, image_id, *_field_args(f), at)
        case UploadStarted(image_id=image_id, at=at):
            await _status(tx, image_id, "saving", at)
        case UploadFailed(image_id=image_id, at=at):
            await _status(tx, image_id, "queued", at)
        case ImageActivated():
            await tx.execute(_ACTIVATE, event.image_id, event.size, event.checksum,
                             event.os_hash_algo, event.os_hash_value, event.at)
        case ImageDeleted(image_id=image_id):
            await tx.execute("DELETE FROM images WHERE id = $1", image_id)


async def _status(tx: SqlTx, image_id: str, status: str, at: str) -> None:
    await tx.execute("UPDATE images SET status = $2, updated_at = $3 WHERE id = $1",
                     image_id, status, at)
