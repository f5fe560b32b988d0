"""Nova v2.1 subset, part two: servers, their actions and os-instance-actions.

``POST /servers`` validates the body as Nova's schema does (unknown fields refused),
looks the flavor and image up in their projections (400 when unknown, or the image is
not active or not visible to the project), sends ``CreateInstance`` to a new ``instance``
actor and answers 202 once the ``instances`` projection has the server, so the next GET
sees it. ``DELETE`` and the ``os-stop`` / ``os-start`` / ``reboot`` actions are commands
to the actor; a refusal in the wrong state is 409 ``conflictingRequest``. Reads come from
the ``instances`` projection, in Nova's 2.1 representation. A server of another project
is 404 as if it did not exist; a reader gets 403 on writes; an admin lists every
project's servers with ``all_tenants``. Deleted servers are 404.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import re
import uuid
from collections.abc import Awaitable, Hashable
from functools import lru_cache
from typing import Any, TypeVar

import msgspec
import structlog
from aiohttp import web

from actors.client import ActorClient
from actors.flavor_views import read_flavor
from actors.host_views import read_hosts
from actors.instance import (
    ACTIVE,
    DELETED,
    ERROR,
    KIND as INSTANCE_KIND,
    CreateInstance,
    DeleteInstance,
    Fault,
    FlavorInfo,
    ImageInfo,
    NicInfo,
    RebootInstance,
    StartInstance,
    StopInstance,
)
from actors.instance_views import (
    PROJECTION_NAME,
    ActionView,
    MarkerNotFound,
    ServerFilter,
    ServerRef,
    ServerView,
    read_action,
    read_actions,
    read_server,
    read_server_refs,
    read_servers,
)
from actors.volume_views import ServerVolumeView, read_volumes_attached
from bus.errors import BusError
from gateway.app import ServiceRouter
from gateway.auth import AuthContext, authenticate
from gateway.commands import command as actor_command
from gateway.discovery import APIVersion
from gateway.errors import ApiError, ErrorCode
from gateway.json import decode, json_response, read_body
from gateway.middleware import API_VERSION, REQUEST_ID
from gateway.networking import NetworkingApi, NicUnavailable
from store.protocol import ProjectionStore

log = structlog.get_logger("orrery.servers")

Doc = dict[str, Any]
T = TypeVar("T")
V2_1 = APIVersion(2, 1)
V2_3, V2_9, V2_16 = APIVersion(2, 3), APIVersion(2, 9), APIVersion(2, 16)
V2_19, V2_26, V2_37 = APIVersion(2, 19), APIVersion(2, 26), APIVersion(2, 37)
MAX_LIMIT = 1000
AVAILABILITY_ZONE = "nova"
_CODES: dict[str, ErrorCode] = {"not_found": "not_found", "conflict": "conflict",
                                "bad_request": "bad_request"}
_PROGRESS = ("ACTIVE", "BUILD")
_EVENTS = {"create": "compute__do_build_and_run_instance", "stop": "compute_stop_instance",
           "start": "compute_start_instance", "reboot": "compute_reboot_instance",
           "delete": "compute_terminate_instance"}


class ServerBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``POST /servers`` ``server`` object: Nova 2.1's properties (the unused ones are
    accepted and ignored, as a cloud without that feature would)."""

    name: str
    flavorRef: str | int
    imageRef: str = ""
    adminPass: str | None = None
    metadata: dict[str, str] = {}
    networks: str | list[dict[str, Any]] | None = None
    disk_config: str = msgspec.field(default="MANUAL", name="OS-DCF:diskConfig")
    accessIPv4: str | None = None
    accessIPv6: str | None = None
    availability_zone: str | None = None
    block_device_mapping: list[dict[str, Any]] | None = None
    block_device_mapping_v2: list[dict[str, Any]] | None = None
    config_drive: bool | str | None = None
    key_name: str | None = None
    min_count: int | str = 1
    max_count: int | str = 1
    return_reservation_id: bool | str | None = None
    security_groups: list[dict[str, Any]] | None = None
    user_data: str | None = None
    personality: list[dict[str, Any]] | None = None
    description: str | None = None


class ServerRequest(msgspec.Struct, forbid_unknown_fields=True):
    server: ServerBody
    scheduler_hints: dict[str, Any] | None = msgspec.field(default=None,
                                                           name="os:scheduler_hints")
    scheduler_hints_old: dict[str, Any] | None = msgspec.field(
        default=None, name="OS-SCH-HNT:scheduler_hints")


class RebootBody(msgspec.Struct, forbid_unknown_fields=True):
    type: str


class ServersApi:
    """The servers half of the compute `ServiceApi` (registered by ``ComputeApi``)."""

    def __init__(self, store: ProjectionStore, client: ActorClient, *,
                 wait_timeout: float = 10.0, admin_pass: bool = False,
                 networking: NetworkingApi | None = None, volumes: bool = False) -> None:
        self.store = store
        self.client = client
        self.wait_timeout = wait_timeout
        self.admin_pass = admin_pass
        self.networking = networking
        #: whether the cloud has block storage (servers then show their volumes)
        self.volumes = volumes
        self.docs = DocCache()

    def register(self, router: ServiceRouter) -> None:
        router.get("/servers", self.list_servers)
        router.get("/servers/detail", self.list_servers_detail)
        router.post("/servers", self.create_server)
        router.get("/servers/{id}", self.show_server)
        router.delete("/servers/{id}", self.delete_server)
        router.post("/servers/{id}/action", self.server_action)
        router.get("/servers/{id}/os-instance-actions", self.list_actions)
        router.get("/servers/{id}/os-instance-actions/{request_id}", self.show_action)

    # -- reads -----------------------------------------------------------------------------

    async def list_servers(self, request: web.Request) -> web.Response:
        context = await authenticate(request)
        where, limit, marker = _list_query(request, context)
        found: list[ServerRef] = await _read(read_server_refs(
            self.store, where, limit=limit + 1, marker=marker))
        base = _base(request)
        body: Doc = {"servers": [{"id": s.id, "name": s.name, "links": _links_at(base, s.id)}
                                 for s in found[:limit]]}
        if len(found) > limit and limit and "limit" in request.query:
            body["servers_links"] = _next(request, "servers", found[limit - 1].id)
        return json_response(body)

    async def list_servers_detail(self, request: web.Request) -> web.Response:
        context = await authenticate(request)
        where, limit, marker = _list_query(request, context)
        found: list[ServerView] = await _read(read_servers(
            self.store, where, limit=limit + 1, marker=marker))
        doc = await self._doc_maker(request, context, [s.id for s in found[:limit]])
        body: Doc = {"servers": [doc.encoded(s) for s in found[:limit]]}
        if len(found) > limit and limit and "limit" in request.query:
            body["servers_links"] = _next(request, "servers/detail", found[limit - 1].id)
        return json_response(body)

    async def show_server(self, request: web.Request) -> web.Response:
        context = await authenticate(request)
        server = await self._server(request.match_info["id"], context)
        doc = await self._doc_maker(request, context, [server.id])
        return json_response({"server": doc.encoded(server)})

    async def _doc_maker(self, request: web.Request, context: AuthContext,
                         server_ids: list[str]) -> DocMaker:
        """The representation maker; at 2.16 and above an admin also sees host status.
        With block storage, the servers' volumes are read for ``volumes_attached``."""
        hosts_up: dict[str, bool] | None = None
        if context.is_admin and _version(request) >= V2_16:
            hosts_up = {h.id: h.up for h in await read_hosts(self.store)}
        attached = await read_volumes_attached(self.store, server_ids) \
            if self.volumes else {}
        return DocMaker(request, context, hosts_up, attached, self.docs)

    async def _server(self, server_id: str, context: AuthContext) -> ServerView:
        """A live server ``context`` may see, else 404 itemNotFound."""
        server = await read_server(self.store, server_id)
        if server is None or not context.sees_project(server.project_id):
            raise ApiError("not_found", f"Instance {server_id} could not be found.")
        return server

    # -- writes ----------------------------------------------------------------------------

    async def create_server(self, request: web.Request) -> web.Response:
        context = await authenticate(request)
        _writer(context, "os_compute_api:servers:create")
        body = decode(await read_body(request), ServerRequest).server
        _check_body(body)
        if body.networks is None and _version(request) >= V2_37:
            raise ApiError("bad_request", "Invalid input for field/attribute server. Value:"
                                          " 'networks' is a required property.")
        # both looked up at once; a bad flavor is told before a bad image, as one by one
        flavor_or, image_or = await asyncio.gather(
            self._flavor(str(body.flavorRef), context), self._image(body, context),
            return_exceptions=True)
        if isinstance(flavor_or, BaseException):
            raise flavor_or
        if isinstance(image_or, BaseException):
            raise image_or
        flavor, image = flavor_or, image_or
        if flavor.disk and image.size > flavor.disk * (1 << 30):
            raise ApiError("bad_request", "Flavor's disk is too small for requested image. "
                                          f"Flavor disk is {flavor.disk * (1 << 30)} bytes, "
                                          f"image is {image.size} bytes.")
        server_id = str(uuid.uuid4())
        nics, nic_error = await self._nics(request, context, server_id, body.networks)
        command = CreateInstance(
            name=body.name, project_id=context.project_id or "", user_id=context.user_id,
            flavor=flavor, image=image, metadata=body.metadata, key_name=body.key_name,
            user_data=body.user_data, availability_zone=body.availability_zone,
            description=body.description, nics=nics, nic_error=nic_error)
        try:
            await self._command(request, context, server_id, command)
        except ApiError as exc:
            await self._abandon(request, context, server_id, nics, exc)
            raise
        log.info("server_created", server_id=server_id, flavor=flavor.id, image=image.id)
        doc: Doc = {"id": server_id, "links": _links(request, server_id),
                    "OS-DCF:diskConfig": _disk_config(body.disk_config),
                    "security_groups": [{"name": "default"}]}
        if self.admin_pass:
            doc["adminPass"] = body.adminPass or uuid.uuid4().hex[:12]
        return json_response({"server": doc}, status=202)

    async def delete_server(self, request: web.Request) -> web.Response:
        context = await authenticate(request)
        server = await self._server(request.match_info["id"], context)
        _writer(context, "os_compute_api:servers:delete")
        await self._command(request, context, server.id, DeleteInstance())
        log.info("server_delete_requested", server_id=server.id)
        return web.Response(status=204)

    async def server_action(self, request: web.Request) -> web.Response:
        context = await authenticate(request)
        server = await self._server(request.match_info["id"], context)
        body = decode(await read_body(request), dict[str, Any])
        if len(body) != 1:
            raise ApiError("bad_request", "Malformed request body: one action expected.")
        (name, arg), = body.items()
        command: msgspec.Struct
        if name == "os-stop":
            command = StopInstance()
        elif name == "os-start":
            command = StartInstance()
        elif name == "reboot":
            command = RebootInstance(hard=_reboot_type(arg) == "HARD")
        else:
            raise ApiError("bad_request", f"There is no such action: {name}")
        _writer(context, f"os_compute_api:servers:{name.replace('-', '_')}")
        await self._command(request, context, server.id, command, action=name)
        return web.Response(status=202)

    async def _command(self, request: web.Request, context: AuthContext, server_id: str,
                       command: msgspec.Struct, *, action: str | None = None) -> None:
        try:
            await actor_command(
                self.client, self.store, request, INSTANCE_KIND, server_id, command,
                codes=_CODES, projection=PROJECTION_NAME, what="instances",
                wait_timeout=self.wait_timeout, project_id=context.project_id,
                user_id=context.user_id)
        except ApiError as exc:
            if exc.code == "conflict" and action is not None:
                raise ApiError("conflict", f"Cannot '{action}' instance {server_id}:"
                                           f" {exc.message}") from None
            raise

    async def _abandon(self, request: web.Request, context: AuthContext, server_id: str,
                       nics: list[NicInfo], exc: ApiError) -> None:
        """The create was refused or not answered: its ports go back. Unanswered, the
        instance may yet be created (its command is queued): a delete queued behind it
        makes sure that such an instance goes, and gives its ports back too. (When only
        the projection was behind, the instance exists and owns its ports.)"""
        if exc.code == "unavailable":
            return
        if exc.code == "deadline_exceeded":
            try:
                await self.client.cast(INSTANCE_KIND, server_id, DeleteInstance(),
                                       correlation_id=request[REQUEST_ID],
                                       project_id=context.project_id, user_id=context.user_id)
            except BusError as err:
                log.warning("abandoned_server_delete_failed", server_id=server_id,
                            reason=repr(err))
        if nics and self.networking is not None:
            await self.networking.release_nics(request, server_id, nics)

    async def _nics(self, request: web.Request, context: AuthContext, server_id: str,
                    networks: str | list[dict[str, Any]] | None,
                    ) -> tuple[list[NicInfo], str | None]:
        """The server's NICs, one per entry of ``networks`` (``auto``: the project's one
        network, if it has one), and why the rest could not be made (the boot then ends in
        ERROR and the ports made so far go back)."""
        if networks in (None, "none", []):
            return [], None
        if self.networking is None:
            raise ApiError("bad_request", "This cloud has no networking service.")
        entries: list[dict[str, Any]]
        if networks == "auto":
            found = await self.networking.auto_network(context)
            entries = [] if found is None else [{"uuid": found}]
        else:
            assert isinstance(networks, list)
            entries = networks
        nics: list[NicInfo] = []
        for entry in entries:
            try:
                nics.append(await self.networking.server_nic(
                    request, context, server_id, network_id=entry.get("uuid"),
                    port_id=entry.get("port"), fixed_ip=entry.get("fixed_ip")))
            except NicUnavailable as exc:
                return nics, str(exc)
            except ApiError as exc:
                await self.networking.release_nics(request, server_id, nics)
                if exc.code != "not_found":
                    raise
                what = "Port" if entry.get("port") else "Network"
                raise ApiError("bad_request", f"{what} {entry.get('port') or entry.get('uuid')}"
                                              " could not be found.") from exc
        return nics, None

    async def _flavor(self, ref: str, context: AuthContext) -> FlavorInfo:
        flavor_id = ref.rstrip("/").rsplit("/", 1)[-1]
        flavor = await read_flavor(self.store, flavor_id)
        if flavor is None or (not flavor.is_public and not context.is_admin):
            raise ApiError("bad_request", f"Flavor {flavor_id} could not be found.")
        return FlavorInfo(id=flavor.id, name=flavor.name, vcpus=flavor.vcpus, ram=flavor.ram,
                          disk=flavor.disk, ephemeral=flavor.ephemeral, swap=flavor.swap)

    async def _image(self, body: ServerBody, context: AuthContext) -> ImageInfo:
        ref = body.imageRef
        if not ref:
            for bdm in body.block_device_mapping_v2 or ():
                if bdm.get("source_type") == "image" and bdm.get("boot_index") in (0, "0"):
                    ref = str(bdm.get("uuid") or "")
        if not ref:
            raise ApiError("bad_request", "Missing imageRef attribute")
        image_id = ref.rstrip("/").rsplit("/", 1)[-1]
        rows = await self.store.query(
            "SELECT id, owner, name, status, visibility, size, os_hash_value, disk_format"
            " FROM images WHERE id = $1", image_id)
        visible = rows and (context.is_admin or rows[0][4] == "public"
                            or rows[0][1] == context.project_id)
        if not visible:
            raise ApiError("bad_request", f"Image {image_id} could not be found.")
        _id, _owner, name, status, _vis, size, sha512, disk_format = rows[0]
        if status != "active":
            raise ApiError("bad_request", f"Image {image_id} is not active.")
        return ImageInfo(id=image_id, name=name or "", size=int(size or 0),
                         sha512=sha512 or "", disk_format=disk_format or "qcow2")

    # -- os-instance-actions -----------------------------------------------------------------

    async def list_actions(self, request: web.Request) -> web.Response:
        context = await authenticate(request)
        server = await self._server(request.match_info["id"], context)
        actions = await read_actions(self.store, server.id)
        return json_response({"instanceActions": [_action(a) for a in actions]})

    async def show_action(self, request: web.Request) -> web.Response:
        context = await authenticate(request)
        server = await self._server(request.match_info["id"], context)
        request_id = request.match_info["request_id"]
        found = await read_action(self.store, server.id, request_id)
        if found is None:
            raise ApiError("not_found", f"Action for request_id {request_id} on instance"
                                        f" {server.id} not found")
        doc = _action(found)
        if context.is_admin:  # Nova's default policy shows events to admins at 2.1
            doc["events"] = [_action_event(found)]
        return json_response({"instanceAction": doc})


# --- request checks -------------------------------------------------------------------------


def _list_query(request: web.Request,
                context: AuthContext) -> tuple[ServerFilter, int, str | None]:
    """The filters, limit and marker of a list request (403 for all_tenants from a
    non-admin, 400 for a bad name regex or limit)."""
    query = request.query
    project: str | None = context.project_id or ""
    if _truthy(query.get("all_tenants")):
        if not context.is_admin:
            which = "detail" if request.path.endswith("/detail") else "index"
            raise ApiError("forbidden", f"Policy doesn't allow os_compute_api:servers:"
                                        f"{which}:get_all_tenants to be performed.")
        project = query.get("project_id") or query.get("tenant_id") or None
    name = query.get("name")
    if name is not None:
        try:
            re.compile(name)
        except re.error:
            raise ApiError("bad_request", f"Invalid filter name [{name}]") from None
    where = ServerFilter(project_id=project, name=name or None,
                         status=query.get("status"), image=query.get("image"),
                         flavor=query.get("flavor"),
                         host=query.get("host") if context.is_admin else None)
    return where, _limit(query.get("limit")), query.get("marker")


async def _read(reading: Awaitable[T]) -> T:
    """A list read; an unknown marker is 400 as Nova answers."""
    try:
        return await reading
    except MarkerNotFound as exc:
        raise ApiError("bad_request", str(exc)) from None


def _writer(context: AuthContext, rule: str) -> None:
    if "member" not in context.roles and not context.is_admin:
        raise ApiError("forbidden", f"Policy doesn't allow {rule} to be performed.")


def _check_network_entry(entry: object) -> None:
    """One item of ``networks``, as Nova's schema checks it: a network ``uuid`` or a
    ``port`` (UUIDs), and optionally a ``fixed_ip`` (an IPv4 address) with the uuid."""
    if not isinstance(entry, dict) or set(entry) - {"uuid", "port", "fixed_ip", "tag"}:
        raise ApiError("bad_request", f"Invalid input for field/attribute networks. Value:"
                                      f" {entry}. Each item takes uuid, port, fixed_ip.")
    for key in ("uuid", "port"):
        if entry.get(key) is not None and not _is_uuid(entry[key]):
            raise ApiError("bad_request", f"Bad networks format: {key} {entry[key]!r} is not"
                                          " in proper format")
    if not entry.get("uuid") and not entry.get("port"):
        raise ApiError("bad_request", "Bad networks format: a network uuid or a port is"
                                      " required")
    fixed = entry.get("fixed_ip")
    if fixed is not None:
        try:
            ipaddress.IPv4Address(fixed)
        except (ipaddress.AddressValueError, TypeError):
            message = (f"Invalid input for field/attribute fixed_ip. Value: {fixed}."
                       " It is not an IPv4 address.")
            raise ApiError("bad_request", message) from None


def _is_uuid(value: object) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return isinstance(value, str)


def _check_body(body: ServerBody) -> None:
    name = body.name
    if not 1 <= len(name) <= 255 or name != name.strip():
        raise ApiError("bad_request", f"Invalid input for field/attribute name. Value: {name}."
                                      " It must be 1..255 characters without leading or"
                                      " trailing whitespace.")
    for key, value in body.metadata.items():
        if not 1 <= len(key) <= 255 or len(value) > 255:
            raise ApiError("bad_request", "Invalid input for field/attribute metadata.")
    if isinstance(body.networks, str) and body.networks not in ("none", "auto"):
        raise ApiError("bad_request", f"Invalid input for field/attribute networks. Value:"
                                      f" {body.networks}. It is not one of 'none', 'auto'.")
    if isinstance(body.networks, list):
        for entry in body.networks:
            _check_network_entry(entry)
    for field in ("min_count", "max_count"):
        value = getattr(body, field)
        if str(value).strip() != "1":
            raise ApiError("bad_request", f"Invalid input for field/attribute {field}."
                                          f" Only one server per request is supported.")
    if body.disk_config not in ("AUTO", "MANUAL"):
        raise ApiError("bad_request", "Invalid input for field/attribute OS-DCF:diskConfig."
                                      f" Value: {body.disk_config}.")


def _reboot_type(arg: object) -> str:
    try:
        reboot = msgspec.convert(arg, RebootBody)
    except msgspec.ValidationError as exc:
        raise ApiError("bad_request", f"Invalid input for field/attribute reboot: {exc}")\
            from None
    kind = reboot.type.upper()
    if kind not in ("SOFT", "HARD"):
        raise ApiError("bad_request", f"Invalid input for field/attribute type. Value:"
                                      f" {reboot.type}. It is not one of SOFT, HARD.")
    return kind


def _truthy(text: str | None) -> bool:
    if text is None:
        return False
    return text.strip().lower() not in ("0", "false", "f", "off", "no", "n")


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


def _disk_config(value: str) -> str:
    return value if value in ("AUTO", "MANUAL") else "MANUAL"


# --- representations ------------------------------------------------------------------------


def _version(request: web.Request) -> APIVersion:
    return request.get(API_VERSION) or V2_1


def _base(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}/compute"


def _links(request: web.Request, server_id: str) -> list[Doc]:
    return _links_at(_base(request), server_id)


def _links_at(base: str, server_id: str) -> list[Doc]:
    return [{"rel": "self", "href": f"{base}/v2.1/servers/{server_id}"},
            {"rel": "bookmark", "href": f"{base}/servers/{server_id}"}]


def _next(request: web.Request, path: str, marker: str) -> list[Doc]:
    query = {k: v for k, v in request.query.items() if k != "marker"}
    query["marker"] = marker
    qs = "&".join(f"{k}={v}" for k, v in query.items())
    return [{"rel": "next", "href": f"{_base(request)}/v2.1/{path}?{qs}"}]


def _z(stamp: str) -> str:
    """A stored time as Nova's ``created``/``updated`` (seconds, ``Z``)."""
    return stamp[:19] + "Z"


@lru_cache(maxsize=4096)
def host_id(project_id: str, host: str | None) -> str:
    """Nova's ``hostId``: sha224 of project and host, "" while unplaced."""
    if not host:
        return ""
    return hashlib.sha224((project_id + host).encode()).hexdigest()


def instance_name(server_id: str) -> str:
    return f"instance-{server_id.replace('-', '')[:8]}"


_F = msgspec.field
_NO_ADDRESSES = msgspec.Raw(b"{}")
_NO_VOLUMES = msgspec.Raw(b"[]")
_DEFAULT_GROUP = msgspec.Raw(b'[{"name":"default"}]')
_JSON = msgspec.json.Encoder()


class ServerDoc(msgspec.Struct, kw_only=True, gc=False):
    """Nova 2.1's ``server`` as one untracked Struct (a list of a thousand is built and
    encoded without a dict per field): the nested parts are ``msgspec.Raw`` JSON, and
    UNSET attributes (progress, admin-only, fault) are left out."""

    id: str
    name: str
    status: str
    tenant_id: str
    user_id: str
    metadata: msgspec.Raw
    hostId: str
    image: msgspec.Raw
    flavor: msgspec.Raw
    created: str
    updated: str
    addresses: msgspec.Raw = _NO_ADDRESSES
    accessIPv4: str = ""
    accessIPv6: str = ""
    links: msgspec.Raw
    disk_config: str = _F(default="MANUAL", name="OS-DCF:diskConfig")
    key_name: str | None
    config_drive: str = ""
    availability_zone: str = _F(name="OS-EXT-AZ:availability_zone")
    vm_state: str = _F(name="OS-EXT-STS:vm_state")
    task_state: str | None = _F(name="OS-EXT-STS:task_state")
    power_state: int = _F(name="OS-EXT-STS:power_state")
    launched_at: str | None = _F(name="OS-SRV-USG:launched_at")
    terminated_at: str | None = _F(name="OS-SRV-USG:terminated_at")
    volumes_attached: msgspec.Raw = _F(default=_NO_VOLUMES,
                                       name="os-extended-volumes:volumes_attached")
    security_groups: msgspec.Raw = _DEFAULT_GROUP
    progress: int | msgspec.UnsetType = msgspec.UNSET
    host: str | msgspec.UnsetType | None = _F(default=msgspec.UNSET,
                                              name="OS-EXT-SRV-ATTR:host")
    hypervisor_hostname: str | msgspec.UnsetType | None = _F(
        default=msgspec.UNSET, name="OS-EXT-SRV-ATTR:hypervisor_hostname")
    instance_name: str | msgspec.UnsetType = _F(default=msgspec.UNSET,
                                                name="OS-EXT-SRV-ATTR:instance_name")
    fault: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    # 2.3, admin only
    reservation_id: str | msgspec.UnsetType = _F(default=msgspec.UNSET,
                                                 name="OS-EXT-SRV-ATTR:reservation_id")
    launch_index: int | msgspec.UnsetType = _F(default=msgspec.UNSET,
                                               name="OS-EXT-SRV-ATTR:launch_index")
    hostname: str | msgspec.UnsetType = _F(default=msgspec.UNSET,
                                           name="OS-EXT-SRV-ATTR:hostname")
    kernel_id: str | msgspec.UnsetType = _F(default=msgspec.UNSET,
                                            name="OS-EXT-SRV-ATTR:kernel_id")
    ramdisk_id: str | msgspec.UnsetType = _F(default=msgspec.UNSET,
                                             name="OS-EXT-SRV-ATTR:ramdisk_id")
    root_device_name: str | msgspec.UnsetType | None = _F(
        default=msgspec.UNSET, name="OS-EXT-SRV-ATTR:root_device_name")
    user_data: str | msgspec.UnsetType | None = _F(default=msgspec.UNSET,
                                                   name="OS-EXT-SRV-ATTR:user_data")
    locked: bool | msgspec.UnsetType = msgspec.UNSET  # 2.9
    host_status: str | msgspec.UnsetType = msgspec.UNSET  # 2.16, admin only
    description: str | msgspec.UnsetType | None = msgspec.UNSET  # 2.19
    tags: list[str] | msgspec.UnsetType = msgspec.UNSET  # 2.26


def _hostname(name: str) -> str:
    """Nova's sanitised hostname of a display name."""
    text = re.sub(r"[^a-z0-9.-]+", "-", name.lower().replace("_", "-")).strip(".-")
    return text[:63] or "server"


def _text(value: str) -> str:
    """``value`` escaped for a place inside a JSON string."""
    if value.isascii() and value.isprintable() and '"' not in value and "\\" not in value:
        return value
    return _JSON.encode(value)[1:-1].decode()


class DocCache:
    """Encoded server documents, by everything that goes into one: a listing polled again
    and again encodes only the servers that changed since. At most ``size`` are kept;
    the oldest go first."""

    def __init__(self, size: int = 5000) -> None:
        self.size = size
        self._docs: dict[Hashable, msgspec.Raw] = {}

    def __len__(self) -> int:
        return len(self._docs)

    def get(self, key: Hashable) -> msgspec.Raw | None:
        return self._docs.get(key)

    def put(self, key: Hashable, doc: msgspec.Raw) -> None:
        if not self.size:
            return
        if len(self._docs) >= self.size:
            del self._docs[next(iter(self._docs))]
        self._docs[key] = doc


class DocMaker:
    """Nova 2.1's server documents for one request: what every server shares (base URL,
    admin or not) is worked out once; metadata is embedded as stored, not decoded."""

    def __init__(self, request: web.Request, context: AuthContext,
                 hosts_up: dict[str, bool] | None = None,
                 volumes: dict[str, list[ServerVolumeView]] | None = None,
                 cache: DocCache | None = None) -> None:
        self.base = _text(_base(request))
        self.admin = context.is_admin
        self.version = _version(request)
        self.hosts_up = hosts_up or {}
        self.volumes = volumes or {}
        self.cache = cache if cache is not None else DocCache(0)
        #: what the document depends on besides the server's row and its own extras
        self._shared = (self.base, self.admin, self.version)

    def encoded(self, s: ServerView) -> msgspec.Raw:
        """``server(s)`` as JSON, from the cache when nothing it depends on has changed:
        the row (every column), this request's base URL, role and microversion, the
        status of the server's host and its volumes."""
        key = (self._shared, s, self.hosts_up.get(s.host or ""),
               tuple(self.volumes.get(s.id, ())))
        doc = self.cache.get(key)
        if doc is None:
            doc = msgspec.Raw(_JSON.encode(self.server(s)))
            self.cache.put(key, doc)
        return doc

    def server(self, s: ServerView) -> ServerDoc:
        base = self.base
        sid, image, flavor = _text(s.id), _text(s.image_id), _text(s.flavor_id)
        doc = ServerDoc(
            id=s.id, name=s.name, status=s.status, tenant_id=s.project_id, user_id=s.user_id,
            metadata=msgspec.Raw(s.metadata_json), hostId=host_id(s.project_id, s.host),
            addresses=msgspec.Raw(s.addresses_json),
            image=msgspec.Raw(f'{{"id":"{image}","links":[{{"rel":"bookmark",'
                              f'"href":"{base}/images/{image}"}}]}}'),
            flavor=msgspec.Raw(f'{{"id":"{flavor}","links":[{{"rel":"bookmark",'
                               f'"href":"{base}/flavors/{flavor}"}}]}}'),
            created=_z(s.created_at), updated=_z(s.updated_at),
            links=msgspec.Raw(f'[{{"rel":"self","href":"{base}/v2.1/servers/{sid}"}},'
                              f'{{"rel":"bookmark","href":"{base}/servers/{sid}"}}]'),
            key_name=s.key_name,
            availability_zone=s.availability_zone or AVAILABILITY_ZONE,
            vm_state=s.vm_state, task_state=s.task_state, power_state=s.power_state,
            launched_at=s.launched_at, terminated_at=s.terminated_at)
        if s.status in _PROGRESS:
            doc.progress = 100 if s.vm_state == ACTIVE else 0
        if s.id in self.volumes:
            doc.volumes_attached = msgspec.Raw(_JSON.encode([
                {"id": v.volume_id, "delete_on_termination": v.delete_on_termination}
                if self.version >= V2_3 else {"id": v.volume_id}
                for v in self.volumes[s.id]]))
        if self.admin:
            doc.host = doc.hypervisor_hostname = s.host
            doc.instance_name = instance_name(s.id)
        if self.version >= V2_3 and self.admin:
            doc.reservation_id = "r-" + s.id.replace("-", "")[:8]
            doc.launch_index = 0
            doc.hostname = _hostname(s.name)
            doc.kernel_id = doc.ramdisk_id = ""
            doc.root_device_name = "/dev/vda" if s.host else None
            doc.user_data = None
        if self.version >= V2_9:
            doc.locked = False
        if self.version >= V2_16 and self.admin:
            up = self.hosts_up.get(s.host or "")
            doc.host_status = "" if up is None else "UP" if up else "DOWN"
        if self.version >= V2_19:
            doc.description = s.description
        if self.version >= V2_26:
            doc.tags = []
        fault = s.fault if s.vm_state in (ERROR, DELETED) else None
        if fault is not None:
            doc.fault = msgspec.Raw(_JSON.encode(self._fault(fault)))
        return doc

    def _fault(self, fault: Fault) -> Doc:
        doc: Doc = {"code": fault.code, "message": fault.message,
                    "created": fault.created.strftime("%Y-%m-%dT%H:%M:%SZ")}
        if self.admin or fault.code != 500:
            doc["details"] = fault.details
        return doc


def _action(a: ActionView) -> Doc:
    return {"action": a.action, "instance_uuid": a.instance_id, "request_id": a.request_id,
            "user_id": a.user_id, "project_id": a.project_id, "start_time": a.start_time,
            "message": "Error" if a.result == "Error" else None}


def _action_event(a: ActionView) -> Doc:
    return {"event": _EVENTS.get(a.action, a.action), "start_time": a.start_time,
            "finish_time": a.finish_time, "result": a.result,
            "traceback": a.message if a.result == "Error" else None}
