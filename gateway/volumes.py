"""Cinder v3 subset under ``/volume/v3``: volumes, ``os-extend``, volume types.

Every route answers with and without the project id in the path (``/volume/v3/<pid>/…``
as the catalog has it, and ``/volume/v3/…``); a project id that is not the token's is
400 "Malformed request url", as Cinder answers. Writes are commands to the ``volume``
actor that wait for the ``volumes`` projection, so the next read sees them: create
(202, ``creating``), update (200), delete (202; 400 while attached or transitional),
``os-extend`` (202; 400 unless available and larger). Reads come from the projection:
list and ``detail`` (filters ``name``, ``status``, ``metadata``; ``limit``/``marker``,
``all_tenants`` for an admin), show. Another project's volume is 404 as if absent; a
reader's write is 403. Bad input is refused here, before any command, in Cinder's words.

For an admin, the storage hosts: ``os-services`` lists each as a ``cinder-volume``
service (``<host>@<backend>``, up or down by its heartbeat), ``scheduler-stats/get_pools``
its capacity, what its volumes claim and what is free (``openstack volume service list``,
``openstack volume backend pool list --long``).
"""

from __future__ import annotations

import ast
import json
import uuid
from typing import Any

import msgspec
import structlog
from aiohttp import web

from actors.client import ActorClient
from actors.host_views import HostView, read_hosts
from actors.volume import KIND as VOLUME_KIND
from actors.volume_messages import (
    CreateVolume,
    DeleteVolume,
    ExtendVolume,
    UpdateVolume,
    VolumeImage,
)
from actors.volume_views import (
    PROJECTION_NAME,
    MarkerNotFound,
    VolumeFilter,
    VolumeView,
    read_volume,
    read_volumes,
)
from gateway import volume_docs as docs
from gateway.app import ServiceRouter
from gateway.auth import AuthContext, authenticate
from gateway.commands import command as actor_command
from gateway.errors import ApiError, ErrorCode
from gateway.json import decode, json_response, read_body, read_json
from store.protocol import ProjectionStore

log = structlog.get_logger("orrery.volumes")

GIB = 1 << 30
MAX_LIMIT = 1000
_CODES: dict[str, ErrorCode] = {"not_found": "not_found", "conflict": "conflict",
                                "bad_request": "bad_request"}


def _writer(context: AuthContext, rule: str) -> None:
    if not context.is_admin and "member" not in context.roles:
        raise ApiError("forbidden", f"Policy doesn't allow {rule} to be performed.")


class VolumesApi:
    """The block-storage `ServiceApi`: Cinder v3 under ``/volume/v3``."""

    service = "volume"

    def __init__(self, store: ProjectionStore, client: ActorClient, *,
                 wait_timeout: float = 10.0) -> None:
        self.store = store
        self.client = client
        self.wait_timeout = wait_timeout

    def register(self, router: ServiceRouter) -> None:
        for prefix in ("", "/{project_id}"):
            router.get(f"{prefix}/volumes", self.list_volumes)
            router.get(f"{prefix}/volumes/detail", self.list_volumes_detail)
            router.post(f"{prefix}/volumes", self.create_volume)
            router.get(f"{prefix}/volumes/{{id}}", self.show_volume)
            router.put(f"{prefix}/volumes/{{id}}", self.update_volume)
            router.delete(f"{prefix}/volumes/{{id}}", self.delete_volume)
            router.post(f"{prefix}/volumes/{{id}}/action", self.volume_action)
            router.get(f"{prefix}/types", self.list_types)
            router.get(f"{prefix}/types/default", self.show_default_type)
            router.get(f"{prefix}/types/{{id}}", self.show_type)
            router.get(f"{prefix}/os-services", self.list_services)
            router.get(f"{prefix}/scheduler-stats/get_pools", self.list_pools)

    # -- reads -----------------------------------------------------------------------------

    async def list_volumes(self, request: web.Request) -> web.Response:
        context = await _context(request)
        found, limit = await self._listed(request, context)
        body: dict[str, Any] = {"volumes": [docs.summary_doc(request, v)
                                            for v in found[:limit]]}
        self._next(request, body, found, limit, "volumes")
        return json_response(body)

    async def list_volumes_detail(self, request: web.Request) -> web.Response:
        context = await _context(request)
        found, limit = await self._listed(request, context)
        body: dict[str, Any] = {"volumes": [docs.volume_doc(request, v, admin=context.is_admin)
                                            for v in found[:limit]]}
        self._next(request, body, found, limit, "volumes/detail")
        return json_response(body)

    async def show_volume(self, request: web.Request) -> web.Response:
        context = await _context(request)
        volume = await self.visible(request.match_info["id"], context)
        return json_response({"volume": docs.volume_doc(request, volume,
                                                        admin=context.is_admin)})

    async def visible(self, volume_id: str, context: AuthContext) -> VolumeView:
        """A live volume ``context`` may see, else 404 itemNotFound."""
        volume = await read_volume(self.store, volume_id)
        if volume is None or not context.sees_project(volume.project_id):
            raise ApiError("not_found", f"Volume {volume_id} could not be found.")
        return volume

    async def _listed(self, request: web.Request,
                      context: AuthContext) -> tuple[list[VolumeView], int]:
        query = request.query
        project: str | None = context.project_id or ""
        if _truthy(query.get("all_tenants")) and context.is_admin:
            project = query.get("project_id") or None
        where = VolumeFilter(project_id=project, name=query.get("name"),
                             status=query.get("status"),
                             metadata=_metadata_filter(query.get("metadata")))
        limit = _limit(query.get("limit"))
        try:
            found = await read_volumes(self.store, where, limit=limit + 1,
                                       marker=query.get("marker"))
        except MarkerNotFound as exc:
            raise ApiError("bad_request", str(exc)) from None
        return found, limit

    @staticmethod
    def _next(request: web.Request, body: dict[str, Any], found: list[VolumeView],
              limit: int, path: str) -> None:
        if len(found) > limit and limit and "limit" in request.query:
            project = request.match_info.get("project_id")
            where = f"{project}/{path}" if project else path
            body["volumes_links"] = docs.next_link(request, where, found[limit - 1].id)

    # -- writes ----------------------------------------------------------------------------

    async def create_volume(self, request: web.Request) -> web.Response:
        context = await _context(request)
        _writer(context, "volume:create")
        body = (await read_json(request, docs.VolumeRequest)).volume
        size, image = await self._checked(body, context)
        volume_id = str(uuid.uuid4())
        command = CreateVolume(
            name=body.name if body.name is not None else body.display_name or "",
            description=body.description if body.description is not None
            else body.display_description,
            project_id=context.project_id or "", user_id=context.user_id, size=size,
            metadata=body.metadata or {}, volume_type=docs.volume_type_named(body.volume_type),
            availability_zone=docs.AVAILABILITY_ZONE, image=image)
        await self._command(request, context, volume_id, command)
        log.info("volume_create_requested", volume_id=volume_id, size=size,
                 image=image.id if image else None)
        created = await self.visible(volume_id, context)
        return json_response({"volume": docs.volume_doc(request, created,
                                                        admin=context.is_admin)}, status=202)

    async def _checked(self, body: docs.VolumeBody,
                       context: AuthContext) -> tuple[int, VolumeImage | None]:
        """The size and image of a valid create body, or ApiError."""
        size = docs.size_of("size", body.size)
        for field in ("name", "description", "display_name", "display_description"):
            docs.check_text(field, getattr(body, field))
        docs.check_metadata(body.metadata)
        for source in ("snapshot_id", "source_volid", "backup_id", "consistencygroup_id",
                       "group_id"):
            if getattr(body, source):
                raise ApiError("bad_request", f"Invalid input received: creating a volume"
                               f" with {source} is not supported by this cloud.")
        if body.multiattach:
            raise ApiError("bad_request", "Invalid input received: multiattach volumes are"
                           " not supported by this cloud.")
        zone = body.availability_zone
        if zone not in (None, "", docs.AVAILABILITY_ZONE):
            raise ApiError("bad_request", f"Availability zone '{zone}' is invalid.")
        docs.volume_type_named(body.volume_type)
        ref = body.imageRef or body.image_id
        image = await self._image(ref, context) if ref else None
        if image is not None and image.size > size * GIB:
            raise ApiError("bad_request", "Invalid input received: Size of specified image"
                           f" {-(-image.size // GIB)}GB is larger than volume size {size}GB.")
        return size, image

    async def _image(self, ref: str, context: AuthContext) -> VolumeImage:
        image_id = ref.rstrip("/").rsplit("/", 1)[-1]
        rows = await self.store.query(
            "SELECT owner, name, status, visibility, size, os_hash_value, disk_format,"
            " checksum, container_format FROM images WHERE id = $1", image_id)
        if not rows or not (context.is_admin or rows[0][3] == "public"
                            or rows[0][0] == context.project_id):
            raise ApiError("bad_request", "Invalid image identifier or unable to access"
                           " requested image.")
        _owner, name, status, _vis, size, sha512, disk_format, checksum, container = rows[0]
        if status != "active":
            raise ApiError("bad_request", f"Invalid input received: Image {image_id} is not"
                           " active.")
        if disk_format not in ("raw", "qcow2"):
            raise ApiError("bad_request", f"Invalid input received: Image {image_id} has"
                           f" disk format {disk_format}; raw and qcow2 are supported.")
        return VolumeImage(id=image_id, name=name or "", size=int(size or 0),
                           sha512=sha512 or "", checksum=checksum or "",
                           disk_format=disk_format, container_format=container or "bare")

    async def update_volume(self, request: web.Request) -> web.Response:
        context = await _context(request)
        volume = await self.visible(request.match_info["id"], context)
        _writer(context, "volume:update")
        body = (await read_json(request, docs.VolumeUpdateRequest)).volume
        for field in ("name", "description", "display_name", "display_description"):
            docs.check_text(field, getattr(body, field))
        docs.check_metadata(body.metadata)
        command = UpdateVolume(
            name=body.name if body.name is not None else body.display_name,
            description=body.description if body.description is not None
            else body.display_description, metadata=body.metadata)
        await self._command(request, context, volume.id, command)
        updated = await self.visible(volume.id, context)
        return json_response({"volume": docs.volume_doc(request, updated,
                                                        admin=context.is_admin)})

    async def delete_volume(self, request: web.Request) -> web.Response:
        context = await _context(request)
        volume = await self.visible(request.match_info["id"], context)
        _writer(context, "volume:delete")
        await self._command(request, context, volume.id, DeleteVolume())
        log.info("volume_delete_requested", volume_id=volume.id)
        return web.Response(status=202)

    async def volume_action(self, request: web.Request) -> web.Response:
        context = await _context(request)
        volume = await self.visible(request.match_info["id"], context)
        body = decode(await read_body(request), dict[str, Any])
        if len(body) != 1:
            raise ApiError("bad_request", "Malformed request body: one action expected.")
        (name, arg), = body.items()
        if name != "os-extend":
            raise ApiError("bad_request", f"There is no such action: {name}")
        _writer(context, "volume:extend")
        if not isinstance(arg, dict) or set(arg) != {"new_size"}:
            raise ApiError("bad_request", f"Invalid input for field/attribute os-extend."
                           f" Value: {arg}. 'new_size' is a required property")
        new_size = docs.size_of("new_size", arg["new_size"])
        await self._command(request, context, volume.id, ExtendVolume(new_size=new_size))
        log.info("volume_extend_requested", volume_id=volume.id, new_size=new_size)
        return web.Response(status=202)

    async def _command(self, request: web.Request, context: AuthContext, volume_id: str,
                       command: msgspec.Struct) -> None:
        await actor_command(self.client, self.store, request, VOLUME_KIND, volume_id, command,
                            codes=_CODES, projection=PROJECTION_NAME, what="volumes",
                            wait_timeout=self.wait_timeout, project_id=context.project_id,
                            user_id=context.user_id)

    # -- storage hosts (admin) ----------------------------------------------------------------

    async def _storage_hosts(self, request: web.Request, rule: str) -> list[HostView]:
        context = await _context(request)
        if not context.is_admin:
            raise ApiError("forbidden", f"Policy doesn't allow {rule} to be performed.")
        return [h for h in await read_hosts(self.store) if h.capacity.storage is not None]

    async def list_services(self, request: web.Request) -> web.Response:
        hosts = await self._storage_hosts(request, "volume_extension:services:index")
        return json_response({"services": [docs.service_doc(h) for h in hosts]})

    async def list_pools(self, request: web.Request) -> web.Response:
        hosts = await self._storage_hosts(request, "scheduler_extension:scheduler_stats:"
                                                   "get_pools")
        detail = _truthy(request.query.get("detail"))
        return json_response({"pools": [docs.pool_doc(h, detail=detail) for h in hosts]})

    # -- volume types ------------------------------------------------------------------------

    async def list_types(self, request: web.Request) -> web.Response:
        await _context(request)
        return json_response({"volume_types": [docs.volume_type_doc()]})

    async def show_default_type(self, request: web.Request) -> web.Response:
        await _context(request)
        return json_response({"volume_type": docs.volume_type_doc()})

    async def show_type(self, request: web.Request) -> web.Response:
        await _context(request)
        wanted = request.match_info["id"]
        if wanted not in (docs.DEFAULT_TYPE_ID, docs.DEFAULT_TYPE):
            raise ApiError("not_found", f"Volume type {wanted} could not be found.")
        return json_response({"volume_type": docs.volume_type_doc()})


async def _context(request: web.Request) -> AuthContext:
    """Who asks; a project id in the path must be the token's."""
    context = await authenticate(request)
    project = request.match_info.get("project_id")
    if project is not None and project != context.project_id:
        raise ApiError("bad_request", "Malformed request url")
    return context


def _metadata_filter(text: str | None) -> dict[str, str]:
    """Cinder's ``metadata`` filter: a dict literal (``{'k': 'v'}``) or JSON."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = None
    if not isinstance(value, dict):
        raise ApiError("bad_request", f"Invalid filter metadata [{text}]")
    return {str(k): str(v) for k, v in value.items()}


def _truthy(text: str | None) -> bool:
    return text is not None and text.strip().lower() not in ("0", "false", "f", "off", "no")


def _limit(text: str | None) -> int:
    if text is None:
        return MAX_LIMIT
    try:
        count = int(text)
    except ValueError:
        raise ApiError("bad_request", "limit param must be an integer") from None
    if count < 0:
        raise ApiError("bad_request", "limit param must be positive")
    return min(count, MAX_LIMIT)
