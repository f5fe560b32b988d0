"""Nova's ``os-volume_attachments``: attach, list, show and detach a server's volumes.

``POST`` checks the body as Nova's schema does (``volumeId`` a UUID, ``device`` a device
path; ``tag`` from 2.49 and ``delete_on_termination`` from 2.79), that the server and the
volume are visible to the caller (404 otherwise) and that the volume is available (400
"Invalid volume"), then asks the server's instance actor to attach it: the attach saga
(actors.instance_volumes) reserves the volume, and this request waits until the
reservation is decided, as Nova's API waits for Cinder's attachment create. So of many
requests for one volume exactly one gets 200 and the rest 400. The disk is attached on
the host after that (a failure there rolls both sides back after the 200, as in Nova),
and the volume turns ``in-use`` then (what the SDK's ``attach_volume(wait=True)`` polls
for). ``DELETE`` starts the detach (202); the volume turns ``available`` once the host
has let go of the disk.

The attachment's representation follows the microversion: ``id, serverId, volumeId,
device``; ``tag`` from 2.70, ``delete_on_termination`` from 2.79, and from 2.89
``attachment_id`` and ``bdm_uuid`` instead of ``id``.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from typing import Any

import msgspec
import structlog
from aiohttp import web

from actors.client import ActorClient
from actors.instance import KIND as INSTANCE_KIND
from actors.instance_views import read_server
from actors.instance_volumes import (
    RESERVING,
    AttachInstanceVolume,
    DetachInstanceVolume,
)
from actors.volume import AVAILABLE
from actors.volume_views import (
    PROJECTION_NAME as VOLUMES_PROJECTION,
    REFUSED,
    ServerVolumeView,
    read_attachment,
    read_server_volumes,
    read_volume,
)
from gateway.app import ServiceRouter
from gateway.auth import AuthContext, authenticate
from gateway.commands import command as actor_command
from gateway.discovery import APIVersion
from gateway.errors import ApiError, ErrorCode
from gateway.json import json_response, read_json
from gateway.middleware import API_VERSION
from store.protocol import ProjectionStore

log = structlog.get_logger("orrery.server_volumes")

Doc = dict[str, Any]
V2_1, V2_49, V2_70 = APIVersion(2, 1), APIVersion(2, 49), APIVersion(2, 70)
V2_79, V2_89 = APIVersion(2, 79), APIVersion(2, 89)
_DEVICE = re.compile(r"(^/dev/x{0,1}[a-z]{0,1}d{0,1})([a-z]+)[0-9]*$")
_CODES: dict[str, ErrorCode] = {"not_found": "not_found", "conflict": "conflict",
                                "bad_request": "bad_request"}
_PATH = "/servers/{id}/os-volume_attachments"


class AttachmentBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    volumeId: str
    device: str | None = None
    tag: str | None = None
    delete_on_termination: bool | None = None


class AttachmentRequest(msgspec.Struct, forbid_unknown_fields=True):
    volumeAttachment: AttachmentBody


def _version(request: web.Request) -> APIVersion:
    return request.get(API_VERSION) or V2_1


def _writer(context: AuthContext, rule: str) -> None:
    if "member" not in context.roles and not context.is_admin:
        raise ApiError("forbidden", f"Policy doesn't allow {rule} to be performed.")


def _check(body: AttachmentBody, version: APIVersion) -> None:
    """Nova's schema for the attach body at ``version``."""
    for field, since in (("tag", V2_49), ("delete_on_termination", V2_79)):
        if getattr(body, field) is not None and version < since:
            raise ApiError("bad_request", "Invalid input for field/attribute volumeAttachment."
                           f" Additional properties are not allowed ('{field}' was"
                           " unexpected)")
    try:
        uuid.UUID(body.volumeId)
    except ValueError:
        raise ApiError("bad_request", "Invalid input for field/attribute volumeId. Value:"
                       f" {body.volumeId}. '{body.volumeId}' is not a 'uuid'") from None
    if body.device is not None and not _DEVICE.match(body.device):
        raise ApiError("bad_request", "Invalid input for field/attribute device. Value:"
                       f" {body.device}. '{body.device}' does not match"
                       f" '{_DEVICE.pattern}'")


def attachment_doc(a: ServerVolumeView, version: APIVersion) -> Doc:
    doc: Doc = {"id": a.volume_id, "serverId": a.server_id, "volumeId": a.volume_id,
                "device": f"/dev/{a.device}"}
    if version >= V2_70:
        doc["tag"] = a.tag
    if version >= V2_79:
        doc["delete_on_termination"] = a.delete_on_termination
    if version >= V2_89:
        del doc["id"]
        doc["attachment_id"] = a.attachment_id
        doc["bdm_uuid"] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"orrery:bdm:{a.attachment_id}"))
    return doc


class ServerVolumesApi:
    """Part of the compute `ServiceApi` (registered by ``ComputeApi``)."""

    def __init__(self, store: ProjectionStore, client: ActorClient, *,
                 wait_timeout: float = 10.0, poll: float = 0.01) -> None:
        self.store = store
        self.client = client
        self.wait_timeout = wait_timeout
        self.poll = poll

    def register(self, router: ServiceRouter) -> None:
        router.get(_PATH, self.list_attachments)
        router.post(_PATH, self.attach)
        router.get(_PATH + "/{volume_id}", self.show_attachment)
        router.delete(_PATH + "/{volume_id}", self.detach)

    async def _server_id(self, request: web.Request, context: AuthContext) -> str:
        server_id = request.match_info["id"]
        server = await read_server(self.store, server_id)
        if server is None or not context.sees_project(server.project_id):
            raise ApiError("not_found", f"Instance {server_id} could not be found.")
        return server.id

    async def _attached(self, server_id: str, volume_id: str) -> ServerVolumeView:
        for found in await read_server_volumes(self.store, server_id):
            if found.volume_id == volume_id:
                return found
        raise ApiError("not_found", f"volume_id not found: {volume_id}")

    async def list_attachments(self, request: web.Request) -> web.Response:
        context = await authenticate(request)
        server_id = await self._server_id(request, context)
        version = _version(request)
        found = await read_server_volumes(self.store, server_id)
        return json_response({"volumeAttachments": [attachment_doc(a, version)
                                                    for a in found]})

    async def show_attachment(self, request: web.Request) -> web.Response:
        context = await authenticate(request)
        server_id = await self._server_id(request, context)
        found = await self._attached(server_id, request.match_info["volume_id"])
        return json_response({"volumeAttachment": attachment_doc(found, _version(request))})

    async def attach(self, request: web.Request) -> web.Response:
        context = await authenticate(request)
        server_id = await self._server_id(request, context)
        _writer(context, "os_compute_api:os-volumes-attachments:create")
        body = (await read_json(request, AttachmentRequest)).volumeAttachment
        _check(body, _version(request))
        volume = await read_volume(self.store, body.volumeId)
        if volume is None or not context.sees_project(volume.project_id):
            raise ApiError("not_found", f"Volume {body.volumeId} could not be found.")
        if volume.status != AVAILABLE:
            raise ApiError("bad_request", f"Invalid volume: volume {volume.id} status must be"
                           f" 'available'. Currently in '{volume.status}'")
        attachment_id = str(uuid.uuid4())
        command = AttachInstanceVolume(
            volume_id=volume.id, attachment_id=attachment_id, device=body.device,
            delete_on_termination=bool(body.delete_on_termination), tag=body.tag)
        await self._command(request, context, server_id, command)
        found = await self._reservation(server_id, attachment_id)
        log.info("volume_attach_requested", server_id=server_id, volume_id=volume.id,
                 device=found.device)
        return json_response({"volumeAttachment": attachment_doc(found, _version(request))})

    async def _reservation(self, server_id: str, attachment_id: str) -> ServerVolumeView:
        """Wait until the saga has the volume reserved (or was refused it)."""
        deadline = time.monotonic() + self.wait_timeout
        pause = self.poll
        while True:
            found = await read_attachment(self.store, server_id, attachment_id)
            if found is not None and found.state != RESERVING:
                break
            if time.monotonic() > deadline:
                raise ApiError("deadline_exceeded", "The volume did not answer the"
                               " reservation in time; the attach may still complete.")
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.1)
        if found.state == REFUSED:  # a failure after the reservation is no refusal
            raise ApiError("bad_request", found.error or "The volume could not be reserved.")
        return found

    async def detach(self, request: web.Request) -> web.Response:
        context = await authenticate(request)
        server_id = await self._server_id(request, context)
        _writer(context, "os_compute_api:os-volumes-attachments:delete")
        found = await self._attached(server_id, request.match_info["volume_id"])
        await self._command(request, context, server_id,
                            DetachInstanceVolume(volume_id=found.volume_id))
        log.info("volume_detach_requested", server_id=server_id, volume_id=found.volume_id)
        return web.Response(status=202)

    async def _command(self, request: web.Request, context: AuthContext, server_id: str,
                       command: msgspec.Struct) -> None:
        await actor_command(self.client, self.store, request, INSTANCE_KIND, server_id,
                            command, codes=_CODES, projection=VOLUMES_PROJECTION,
                            what="volumes", wait_timeout=self.wait_timeout,
                            project_id=context.project_id, user_id=context.user_id)
