"""Cinder v3 documents and request checks: volumes, their attachments, the default type.

Representations follow the Block Storage v3 API reference at 3.0: a volume's detail has
``id, name, description, size, status, attachments, availability_zone, bootable`` (the
string ``"true"``/``"false"``), ``encrypted, multiattach, created_at, updated_at,
volume_type, snapshot_id, source_volid, metadata, user_id, replication_status,
consistencygroup_id, links``, plus ``volume_image_metadata`` for a volume made from an
image; an admin also sees ``os-vol-host-attr:host``, ``os-vol-tenant-attr:tenant_id``
and the migration attributes (Cinder's admin-only extensions). Request bodies are
checked as Cinder's JSON schemas check them, with its messages.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import msgspec
from aiohttp import web

from actors.host_views import HostView
from actors.volume_messages import Attachment
from actors.volume_views import VolumeView
from gateway.errors import ApiError

Doc = dict[str, Any]
DEFAULT_TYPE = "__DEFAULT__"
DEFAULT_TYPE_ID = str(uuid.uuid5(uuid.NAMESPACE_URL, "orrery:volume-type:__DEFAULT__"))
AVAILABILITY_ZONE = "nova"
MAX_SIZE = 2**31 - 1
_DIGITS = re.compile(r"^[0-9]+$")


class VolumeBody(msgspec.Struct, kw_only=True):
    """``POST /volumes`` ``volume`` (Cinder's schema allows further properties)."""

    size: int | str | None = None
    name: str | None = None
    description: str | None = None
    display_name: str | None = None
    display_description: str | None = None
    volume_type: str | None = None
    metadata: dict[str, str] | None = None
    availability_zone: str | None = None
    imageRef: str | None = None
    image_id: str | None = None
    snapshot_id: str | None = None
    source_volid: str | None = None
    backup_id: str | None = None
    consistencygroup_id: str | None = None
    group_id: str | None = None
    multiattach: bool | None = None


class VolumeRequest(msgspec.Struct, forbid_unknown_fields=True):
    volume: VolumeBody
    scheduler_hints: dict[str, Any] | None = msgspec.field(
        default=None, name="OS-SCH-HNT:scheduler_hints")


class VolumeUpdateBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: str | None = None
    description: str | None = None
    display_name: str | None = None
    display_description: str | None = None
    metadata: dict[str, str] | None = None


class VolumeUpdateRequest(msgspec.Struct, forbid_unknown_fields=True):
    volume: VolumeUpdateBody


def size_of(field: str, value: object) -> int:
    """A size as Cinder's ``volume_size`` schema takes it: a positive integer (or its
    digits as a string), else ApiError bad_request with the schema's words."""
    if isinstance(value, bool) or value is None:
        raise ApiError("bad_request", f"Invalid input for field/attribute {field}. Value:"
                       f" {value}. {value} is not of type 'integer', 'string'")
    if isinstance(value, str):
        if not _DIGITS.match(value):
            raise ApiError("bad_request", f"Invalid input for field/attribute {field}. Value:"
                           f" {value}. '{value}' does not match '^[0-9]+$'")
        value = int(value)
    if not isinstance(value, int):
        raise ApiError("bad_request", f"Invalid input for field/attribute {field}. Value:"
                       f" {value}. {value} is not of type 'integer', 'string'")
    if value < 1:
        raise ApiError("bad_request", f"Invalid input for field/attribute {field}. Value:"
                       f" {value}. {value} is less than the minimum of 1")
    if value > MAX_SIZE:
        raise ApiError("bad_request", f"Invalid input for field/attribute {field}. Value:"
                       f" {value}. {value} is greater than the maximum of {MAX_SIZE}")
    return value


def check_text(field: str, value: str | None) -> None:
    if value is not None and len(value) > 255:
        raise ApiError("bad_request", f"Invalid input for field/attribute {field}. Value:"
                       f" {value[:40]}... is too long (at most 255 characters)")


def check_metadata(metadata: dict[str, str] | None) -> None:
    for key, value in (metadata or {}).items():
        if not 1 <= len(key) <= 255 or len(value) > 255:
            raise ApiError("bad_request", "Invalid input for field/attribute metadata. Keys"
                           " are 1 to 255 characters, values at most 255.")


def volume_type_named(name: str | None) -> str:
    """The type a create names (by name or id); only ``__DEFAULT__`` exists."""
    if name in (None, "", DEFAULT_TYPE, DEFAULT_TYPE_ID):
        return DEFAULT_TYPE
    raise ApiError("not_found", f"Volume type with name {name} could not be found.")


def volume_type_doc() -> Doc:
    return {"id": DEFAULT_TYPE_ID, "name": DEFAULT_TYPE, "description": "Default Volume Type",
            "is_public": True, "extra_specs": {}, "qos_specs_id": None,
            "os-volume-type-access:is_public": True}


def _base(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}/volume"


def links(request: web.Request, project_id: str, volume_id: str) -> list[Doc]:
    base = _base(request)
    return [{"rel": "self", "href": f"{base}/v3/{project_id}/volumes/{volume_id}"},
            {"rel": "bookmark", "href": f"{base}/{project_id}/volumes/{volume_id}"}]


def next_link(request: web.Request, path: str, marker: str) -> list[Doc]:
    query = {k: v for k, v in request.query.items() if k != "marker"}
    query["marker"] = marker
    qs = "&".join(f"{k}={v}" for k, v in query.items())
    return [{"rel": "next", "href": f"{_base(request)}/v3/{path}?{qs}"}]


def attachment_doc(volume_id: str, a: Attachment) -> Doc:
    """An attachment as Cinder lists it in the volume (its ``id`` is the volume's)."""
    return {"id": volume_id, "attachment_id": a.attachment_id, "volume_id": volume_id,
            "server_id": a.server_id, "host_name": a.host_name, "device": a.device,
            "attached_at": a.attached_at.strftime("%Y-%m-%dT%H:%M:%S.%f")}


def summary_doc(request: web.Request, v: VolumeView) -> Doc:
    return {"id": v.id, "name": v.name, "links": links(request, v.project_id, v.id)}


def volume_doc(request: web.Request, v: VolumeView, *, admin: bool) -> Doc:
    """The 3.0 detail representation (admin-only attributes for admins)."""
    doc: Doc = {
        "id": v.id, "name": v.name, "description": v.description, "size": v.size,
        "status": v.status,
        "attachments": [attachment_doc(v.id, a) for a in v.attachments],
        "availability_zone": v.availability_zone,
        "bootable": "true" if v.bootable else "false", "encrypted": False,
        "multiattach": False, "created_at": v.created_at, "updated_at": v.updated_at,
        "volume_type": v.volume_type, "snapshot_id": None, "source_volid": None,
        "metadata": v.metadata, "user_id": v.user_id, "replication_status": None,
        "consistencygroup_id": None, "links": links(request, v.project_id, v.id),
    }
    image = v.image
    if image is not None:
        doc["volume_image_metadata"] = {
            "image_id": image.id, "image_name": image.name, "checksum": image.checksum,
            "size": str(image.size), "disk_format": image.disk_format,
            "container_format": image.container_format}
    if admin:
        doc.update({"os-vol-host-attr:host": v.host, "os-vol-tenant-attr:tenant_id":
                    v.project_id, "os-vol-mig-status-attr:migstat": None,
                    "os-vol-mig-status-attr:name_id": None})
    return doc


def _backend_host(host: HostView) -> str:
    storage = host.capacity.storage
    return f"{host.id}@{storage.backend if storage else 'unknown'}"


def service_doc(host: HostView) -> Doc:
    """A storage host as Cinder lists its ``cinder-volume`` service."""
    beat = host.last_heartbeat
    return {"binary": "cinder-volume", "host": _backend_host(host), "zone": AVAILABILITY_ZONE,
            "status": "enabled", "state": host.state, "disabled_reason": None,
            "updated_at": beat.strftime("%Y-%m-%dT%H:%M:%S.%f") if beat else None}


def pool_doc(host: HostView, *, detail: bool) -> Doc:
    """A storage host as one scheduler pool (``capabilities`` with ``detail``)."""
    name = f"{_backend_host(host)}#{host.id}"
    if not detail:
        return {"name": name}
    storage = host.capacity.storage
    total = storage.total_gb if storage else 0
    return {"name": name, "capabilities": {
        "volume_backend_name": storage.backend if storage else None,
        "storage_protocol": "file", "vendor_name": "Orrery", "driver_version": "1.0",
        "total_capacity_gb": total, "allocated_capacity_gb": host.used.volume_gb,
        "free_capacity_gb": host.free.volume_gb, "max_over_subscription_ratio": "1.0",
        "thin_provisioning_support": False, "thick_provisioning_support": True,
        "volume_format": storage.format if storage else None,
        "timestamp": host.last_heartbeat.isoformat() if host.last_heartbeat else None}}
