"""Glance image documents: the representation, request validation, JSON patch, list filters.

Pure functions over the ``images`` row (column order `actors.image_views.COLUMNS`) and
request bodies; `gateway.image` does the IO. Extra properties are strings, shown at the
top level of the image, as Glance does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec
from aiohttp import web

from actors.image import ImageFields
from gateway.errors import ApiError

Doc = dict[str, Any]
PATCH_MEDIA_TYPE = "application/openstack-images-v2.1-json-patch"
DISK_FORMATS = ("ami", "ari", "aki", "vhd", "vhdx", "vmdk", "raw", "qcow2", "vdi", "iso",
                "ploop")
CONTAINER_FORMATS = ("ami", "ari", "aki", "bare", "ovf", "ova", "docker", "compressed")
#: attributes the server sets: a body or patch that names one is refused (403)
READ_ONLY = frozenset({
    "status", "size", "virtual_size", "checksum", "os_hash_algo", "os_hash_value",
    "created_at", "updated_at", "self", "file", "schema", "owner", "locations", "direct_url",
    "stores", "id",
})
#: accepted and ignored (Glance's hidden-image flag; no image here is hidden)
IGNORED = frozenset({"os_hidden"})
BASE = ("name", "visibility", "protected", "disk_format", "container_format", "min_disk",
        "min_ram", "tags")
_FILTERS = ("id", "name", "status", "visibility", "owner", "disk_format", "container_format")
_PROPS = msgspec.json.Decoder(dict[str, str])
_TAGS = msgspec.json.Decoder(list[str])


def image_doc(request: web.Request, row: tuple[Any, ...]) -> Doc:
    """The Glance v2 representation of one ``images`` row (unwrapped, as Glance answers)."""
    (image_id, owner, name, status, visibility, protected, disk_format, container_format,
     min_disk, min_ram, size, checksum, algo, value, properties, tags, created, updated) = row
    doc: Doc = dict(_PROPS.decode(properties))
    doc.update({
        "id": image_id, "name": name, "status": status, "visibility": visibility,
        "protected": bool(protected), "os_hidden": False, "disk_format": disk_format,
        "container_format": container_format, "size": size, "virtual_size": None,
        "checksum": checksum, "os_hash_algo": algo, "os_hash_value": value,
        "min_disk": min_disk, "min_ram": min_ram, "owner": owner or None,
        "tags": _TAGS.decode(tags), "created_at": created, "updated_at": updated,
        "self": f"/v2/images/{image_id}", "file": f"/v2/images/{image_id}/file",
        "schema": "/v2/schemas/image",
    })
    return doc


def read_only_check(body: Mapping[str, Any]) -> None:
    """403 when a create body sets an attribute only the server may set."""
    for key in body:
        if key in READ_ONLY:
            raise ApiError("forbidden", f"Attribute '{key}' is read-only.")


def fields_from(body: Mapping[str, Any]) -> ImageFields:
    """The settable attributes in ``body``; every other key is an extra (string) property."""
    base = {k: v for k, v in body.items() if k in BASE}
    extra = {k: v for k, v in body.items() if k not in BASE and k not in IGNORED}
    for key, value in extra.items():
        if not isinstance(value, str):
            raise ApiError("bad_request", f"Provided object does not match schema 'image': "
                                          f"{value!r} is not of type 'string' ({key}).")
        if len(key) > 255 or not key:
            raise ApiError("bad_request", f"Invalid property name: {key[:40]!r}.")
    try:
        fields = msgspec.convert({**base, "properties": extra}, ImageFields)
    except msgspec.ValidationError as exc:
        raise ApiError("bad_request", f"Provided object does not match schema 'image': "
                                      f"{exc}") from exc
    _check_formats(fields)
    return fields


def _check_formats(fields: ImageFields) -> None:
    if fields.disk_format not in (None, *DISK_FORMATS):
        raise ApiError("bad_request", f"Invalid disk format '{fields.disk_format}' for image.")
    if fields.container_format not in (None, *CONTAINER_FORMATS):
        raise ApiError("bad_request", f"Invalid container format "
                                      f"'{fields.container_format}' for image.")


def fields_doc(fields: ImageFields) -> Doc:
    """``fields`` as the flat document a JSON patch applies to."""
    doc: Doc = dict(fields.properties)
    doc.update({k: getattr(fields, k) for k in BASE})
    doc["tags"] = list(fields.tags)
    return doc


def apply_patch(fields: ImageFields, ops: list[dict[str, Any]]) -> ImageFields:
    """``fields`` after Glance's JSON patch ``ops`` (add, replace, remove of one key)."""
    doc = fields_doc(fields)
    for op in ops:
        _apply_one(doc, op)
    return fields_from(doc)


def _apply_one(doc: Doc, op: Mapping[str, Any]) -> None:
    kind, key = op.get("op"), _key(op.get("path"))
    if key in READ_ONLY:
        raise ApiError("forbidden", f"Attribute '{key}' is read-only.")
    if kind not in ("add", "replace", "remove"):
        raise ApiError("bad_request", f"Invalid operation: {kind!r}.")
    if kind != "add" and key not in doc:
        raise ApiError("conflict", f"Property {key} does not exist.")
    if kind == "remove":
        if key in BASE:
            raise ApiError("forbidden", f"Attribute '{key}' cannot be removed.")
        del doc[key]
        return
    if "value" not in op:
        raise ApiError("bad_request", f"Operation {kind} needs a 'value'.")
    doc[key] = op["value"]


def _key(path: object) -> str:
    if not isinstance(path, str) or not path.startswith("/") or "/" in path[1:]:
        raise ApiError("bad_request", f"Invalid JSON pointer for this resource: '{path}'")
    return path[1:].replace("~1", "/").replace("~0", "~")


def list_filters(query: Mapping[str, str]) -> tuple[list[str], list[Any]]:
    """SQL conditions and arguments for Glance's list filters (``in:a,b`` lists too)."""
    where: list[str] = []
    args: list[Any] = []
    if query.get("os_hidden", "").lower() == "true":
        where.append("1 = 0")
    for column in _FILTERS:
        value = query.get(column)
        if value is None or (column == "visibility" and value == "all"):
            continue
        values = value[3:].split(",") if value.startswith("in:") else [value]
        marks = []
        for item in values:
            args.append(item.strip().strip('"'))
            marks.append(f"${len(args)}")
        where.append(f"{column} IN ({', '.join(marks)})")
    return where, args


def schema_doc() -> Doc:
    """A compact ``/v2/schemas/image``: the attributes we serve, extra properties strings."""
    nullable_str = {"type": ["null", "string"]}
    props: Doc = {
        "id": {"type": "string"}, "name": {**nullable_str, "maxLength": 255},
        "status": {"type": "string", "readOnly": True,
                   "enum": ["queued", "saving", "active", "deleted"]},
        "visibility": {"type": "string", "enum": ["public", "private"]},
        "protected": {"type": "boolean"}, "os_hidden": {"type": "boolean"},
        "disk_format": {**nullable_str, "enum": [None, *DISK_FORMATS]},
        "container_format": {**nullable_str, "enum": [None, *CONTAINER_FORMATS]},
        "size": {"type": ["null", "integer"], "readOnly": True},
        "virtual_size": {"type": ["null", "integer"], "readOnly": True},
        "checksum": {**nullable_str, "readOnly": True},
        "os_hash_algo": {**nullable_str, "readOnly": True},
        "os_hash_value": {**nullable_str, "readOnly": True},
        "min_disk": {"type": "integer"}, "min_ram": {"type": "integer"},
        "owner": {**nullable_str, "readOnly": True},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 255}},
        "created_at": {"type": "string", "readOnly": True},
        "updated_at": {"type": "string", "readOnly": True},
        "self": {"type": "string", "readOnly": True},
        "file": {"type": "string", "readOnly": True},
        "schema": {"type": "string", "readOnly": True},
    }
    return {"name": "image", "properties": props, "additionalProperties": {"type": "string"},
            "links": [{"rel": "self", "href": "{self}"}, {"rel": "enclosure", "href": "{file}"},
                      {"rel": "describedby", "href": "{schema}"}]}
