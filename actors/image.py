"""The ``image`` actor kind: a Glance image's record, queued → saving → active → deleted.

The bytes live in the image store (``store.blobs``); the log holds what Glance shows:
name, owner project, visibility, protection, formats, extra properties, tags, and after
an upload the size and hashes. Lifecycle::

    queued --StartUpload--> saving --FinishUpload--> active
                              |
                              +--FailUpload--> queued   (Glance's "killed", retried by a new PUT)
    any --DeleteImage--> deleted                         (refused while protected)

Data is written once: an upload is only accepted while ``queued``. Timestamps come from
the command's context (``ctx.now``), so decide stays pure.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

import msgspec

from actors.kind import ActorKind, Context, Events, Rejected

Visibility = Literal["public", "private"]  # no sharing (members) in this subset
#: Glance's read-only or reserved attributes: never settable as extra properties
RESERVED = frozenset({
    "id", "name", "status", "visibility", "protected", "owner", "size", "virtual_size",
    "checksum", "os_hash_algo", "os_hash_value", "created_at", "updated_at", "tags", "self",
    "file", "schema", "disk_format", "container_format", "min_disk", "min_ram", "locations",
    "direct_url", "os_hidden", "stores",
})


class ImageFields(msgspec.Struct, frozen=True, kw_only=True):
    """The user-settable attributes of an image, all of them (a fold needs no lookup)."""

    name: str | None = None
    visibility: Visibility = "private"
    protected: bool = False
    disk_format: str | None = None
    container_format: str | None = None
    min_disk: int = 0
    min_ram: int = 0
    tags: tuple[str, ...] = ()
    properties: dict[str, str] = {}


class CreateImage(msgspec.Struct, frozen=True, kw_only=True, tag="image.create"):
    owner: str
    fields: ImageFields


class UpdateImage(msgspec.Struct, frozen=True, kw_only=True, tag="image.update"):
    """Replace the settable attributes with ``fields`` (the gateway applies the patch)."""

    fields: ImageFields


class StartUpload(msgspec.Struct, frozen=True, kw_only=True, tag="image.start_upload"):
    pass


class FinishUpload(msgspec.Struct, frozen=True, kw_only=True, tag="image.finish_upload"):
    size: int
    checksum: str
    os_hash_algo: str
    os_hash_value: str


class FailUpload(msgspec.Struct, frozen=True, kw_only=True, tag="image.fail_upload"):
    reason: str


class DeleteImage(msgspec.Struct, frozen=True, kw_only=True, tag="image.delete"):
    pass


class ImageCreated(msgspec.Struct, frozen=True, kw_only=True, tag="image.created"):
    image_id: str
    owner: str
    fields: ImageFields
    at: str


class ImageUpdated(msgspec.Struct, frozen=True, kw_only=True, tag="image.updated"):
    image_id: str
    fields: ImageFields
    at: str


class UploadStarted(msgspec.Struct, frozen=True, kw_only=True, tag="image.upload_started"):
    image_id: str
    at: str


class ImageActivated(msgspec.Struct, frozen=True, kw_only=True, tag="image.activated"):
    image_id: str
    size: int
    checksum: str
    os_hash_algo: str
    os_hash_value: str
    at: str


class UploadFailed(msgspec.Struct, frozen=True, kw_only=True, tag="image.upload_failed"):
    image_id: str
    reason: str
    at: str


class ImageDeleted(msgspec.Struct, frozen=True, kw_only=True, tag="image.deleted"):
    image_id: str
    at: str


Status = Literal["", "queued", "saving", "active", "deleted"]


class ImageState(msgspec.Struct, kw_only=True):
    status: Status = ""
    owner: str = ""
    fields: ImageFields = ImageFields()
    size: int | None = None


def _initial(_actor_id: str) -> ImageState:
    return ImageState()


def stamp(now: dt.datetime) -> str:
    """Glance's timestamp format: ISO 8601 UTC to the second with a ``Z``."""
    return now.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def check_fields(fields: ImageFields) -> None:
    """Reject what Glance rejects: long names, negative minimums, reserved property keys."""
    if fields.name is not None and len(fields.name) > 255:
        raise Rejected("bad_request", "Image name too long: at most 255 characters.")
    if fields.min_disk < 0 or fields.min_ram < 0:
        raise Rejected("bad_request", "min_disk and min_ram must be 0 or more.")
    reserved = sorted(RESERVED & set(fields.properties))
    if reserved:
        raise Rejected("forbidden", f"Attribute '{reserved[0]}' is reserved.")


def _live(state: ImageState, ctx: Context) -> None:
    if state.status in ("", "deleted"):
        raise Rejected("not_found", f"No image found with ID {ctx.actor_id}")


def decide(state: ImageState, command: msgspec.Struct, ctx: Context) -> Events:
    at, image_id = stamp(ctx.now), ctx.actor_id
    match command:
        case CreateImage(owner=owner, fields=fields):
            if state.status:
                if (state.owner, state.fields) == (owner, fields):
                    return []  # the same create redelivered
                raise Rejected("conflict", f"Image {image_id} already exists.")
            check_fields(fields)
            return [ImageCreated(image_id=image_id, owner=owner, fields=fields, at=at)]
        case UpdateImage(fields=fields):
            _live(state, ctx)
            check_fields(fields)
            return [] if fields == state.fields else [
                ImageUpdated(image_id=image_id, fields=fields, at=at)]
        case DeleteImage():
            _live(state, ctx)
            if state.fields.protected:
                raise Rejected("forbidden", f"Image {image_id} is protected and cannot be "
                                            "deleted.")
            return [ImageDeleted(image_id=image_id, at=at)]
    return _decide_upload(state, command, ctx, at)


def _decide_upload(state: ImageState, command: msgspec.Struct, ctx: Context, at: str) -> Events:
    image_id = ctx.actor_id
    match command:
        case StartUpload():
            _live(state, ctx)
            if state.status != "queued":
                raise Rejected("conflict", f"Image status transition from {state.status} to "
                                           "saving is not allowed")
            return [UploadStarted(image_id=image_id, at=at)]
        case FinishUpload():
            _saving(state, ctx)
            return [ImageActivated(image_id=image_id, size=command.size,
                                   checksum=command.checksum, os_hash_algo=command.os_hash_algo,
                                   os_hash_value=command.os_hash_value, at=at)]
        case FailUpload(reason=reason):
            _saving(state, ctx)
            return [UploadFailed(image_id=image_id, reason=reason, at=at)]
    raise Rejected("bad_request", f"unknown command {type(command).__name__}")


def _saving(state: ImageState, ctx: Context) -> None:
    _live(state, ctx)
    if state.status != "saving":
        raise Rejected("conflict", f"Image {ctx.actor_id} is {state.status}, not saving.")


def evolve(state: ImageState, event: msgspec.Struct) -> ImageState:
    match event:
        case ImageCreated():
            state.status, state.owner, state.fields = "queued", event.owner, event.fields
        case ImageUpdated():
            state.fields = event.fields
        case UploadStarted():
            state.status = "saving"
        case ImageActivated():
            state.status, state.size = "active", event.size
        case UploadFailed():
            state.status = "queued"
        case ImageDeleted():
            state.status = "deleted"
    return state


IMAGE_COMMANDS = (CreateImage, UpdateImage, StartUpload, FinishUpload, FailUpload, DeleteImage)
IMAGE_EVENTS = (ImageCreated, ImageUpdated, UploadStarted, ImageActivated, UploadFailed,
                ImageDeleted)

IMAGE = ActorKind(
    name="image", state_type=ImageState, initial=_initial, decide=decide, evolve=evolve,
    commands=IMAGE_COMMANDS, events=IMAGE_EVENTS,
)
