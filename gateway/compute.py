"""Nova v2.1 subset, part one: flavors and os-hypervisors (servers come with their own module).

Flavors: list, detail (``is_public``, ``minRam``, ``minDisk``, ``limit``, ``marker``), show,
create and delete (admin only), and their (always empty) ``os-extra_specs``. A create
validates, claims the name (unique cloud-wide) on the ``identity_name`` actor
``flavor_name_key(name)``, sends ``CreateFlavor`` to the ``flavor`` actor and waits for
the ``flavors`` projection, so the next read sees it; a delete frees the name after the
flavor is gone. Reads come from the projection.

os-hypervisors (admin only): one per compute host (storage-only hosts are no
hypervisors), from the ``hosts`` projection; ``state``
is the host's up/down, ``status`` always ``enabled`` (no service disabling yet). At 2.1 ids
are integers (a stable hash of the host name), from 2.53 UUIDs (uuid5 of it); the resource
counters are left out from 2.88, as Nova does.

`seed_default_flavors` creates devstack's m1.tiny .. m1.large with ids "1".."4" on a new
cloud (idempotent; called by the bootstrap).
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import msgspec
import structlog
from aiohttp import web

from actors.client import ActorClient
from actors.flavor import (
    KIND as FLAVOR_KIND,
    CreateFlavor,
    DeleteFlavor,
    check,
    check_id,
    default_flavors,
    flavor_name_key,
)
from actors.flavor_views import PROJECTION_NAME, FlavorView, read_flavor, read_flavors
from actors.host_views import HostView, read_hosts
from actors.identity import ClaimName, ReleaseName
from bus.errors import CallTimeout
from gateway.app import ServiceRouter
from gateway.auth import AuthContext, authenticate
from gateway.discovery import APIVersion
from gateway.errors import ApiError, ErrorCode
from gateway.json import json_response, read_json
from gateway.middleware import API_VERSION, REQUEST_ID
from gateway.networking import NetworkingApi
from gateway.server_volumes import ServerVolumesApi
from gateway.servers import ServersApi
from schemas import Reply, stream_name
from store.protocol import ProjectionStore

log = structlog.get_logger("orrery.compute")

Doc = dict[str, Any]
V2_1 = APIVersion(2, 1)
_CODES: dict[str, ErrorCode] = {"not_found": "not_found", "conflict": "conflict",
                                "bad_request": "bad_request"}
HYPERVISOR_TYPE = "QEMU"  # hosts do not report their driver yet


class FlavorBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``POST /flavors`` ``flavor`` object (Nova's schema; numbers may come as strings)."""

    name: str
    ram: int | str
    vcpus: int | str
    disk: int | str
    id: str | None = None
    swap: int | str = 0
    ephemeral: int | str = msgspec.field(default=0, name="OS-FLV-EXT-DATA:ephemeral")
    rxtx_factor: float | str = 1.0
    is_public: bool = msgspec.field(default=True, name="os-flavor-access:is_public")
    description: str | None = None  # from 2.55


class FlavorRequest(msgspec.Struct, forbid_unknown_fields=True):
    flavor: FlavorBody


def _int(field: str, value: int | str) -> int:
    if isinstance(value, int):
        return value
    text = value.strip()
    if not text.isdigit():  # Nova's pattern ^[0-9]*$ ("" counts as 0 for swap)
        if field == "swap" and text == "":
            return 0
        raise ApiError("bad_request", f"Invalid input for field/attribute {field}. "
                                      f"Value: {value}. It is not an integer.")
    return int(text)


def _float(field: str, value: float | str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ApiError("bad_request", f"Invalid input for field/attribute {field}. "
                                      f"Value: {value}. It is not a number.") from None


def create_command(body: FlavorBody, version: APIVersion) -> CreateFlavor:
    """The ``CreateFlavor`` a request body asks for; ApiError bad_request when invalid."""
    if body.description is not None and version < APIVersion(2, 55):
        raise ApiError("bad_request", "Invalid input for field/attribute flavor. Additional "
                                      "properties are not allowed ('description' was "
                                      "unexpected)")
    command = CreateFlavor(
        name=body.name, ram=_int("ram", body.ram), vcpus=_int("vcpus", body.vcpus),
        disk=_int("disk", body.disk), swap=_int("swap", body.swap),
        ephemeral=_int("OS-FLV-EXT-DATA:ephemeral", body.ephemeral),
        rxtx_factor=_float("rxtx_factor", body.rxtx_factor), is_public=body.is_public,
        description=body.description)
    problem = check(command) or (check_id(body.id) if body.id is not None else None)
    if problem is not None:
        raise ApiError("bad_request", problem)
    return command


class FlavorWriter:
    """Creates and deletes flavors through their actors, names claimed, projection waited."""

    def __init__(self, store: ProjectionStore, client: ActorClient, wait_timeout: float) -> None:
        self.store = store
        self.client = client
        self.wait_timeout = wait_timeout

    async def create(self, flavor_id: str, command: CreateFlavor, correlation_id: str) -> None:
        if await read_flavor(self.store, flavor_id) is not None:
            raise ApiError("conflict", f"Flavor with ID {flavor_id} already exists.")
        claim = await self._call("identity_name", flavor_name_key(command.name),
                                 ClaimName(owner=flavor_id), correlation_id)
        if not claim.ok:
            raise ApiError("conflict", f"Flavor with name {command.name} already exists.")
        reply = await self._call(FLAVOR_KIND, flavor_id, command, correlation_id)
        if not reply.ok:
            if claim.position:  # we took the name just now: give it back
                await self._release(command.name, flavor_id, correlation_id)
            raise ApiError(_CODES.get(reply.error_type or "", "internal"), reply.error)
        await self._wait(reply.position)

    async def delete(self, flavor: FlavorView, correlation_id: str) -> None:
        reply = await self._call(FLAVOR_KIND, flavor.id, DeleteFlavor(), correlation_id)
        if not reply.ok:
            raise ApiError(_CODES.get(reply.error_type or "", "internal"), reply.error)
        await self._release(flavor.name, flavor.id, correlation_id)
        await self._wait(reply.position)

    async def _release(self, name: str, owner: str, correlation_id: str) -> None:
        await self._call("identity_name", flavor_name_key(name), ReleaseName(owner=owner),
                         correlation_id)

    async def _call(self, kind: str, actor_id: str, command: msgspec.Struct,
                    correlation_id: str) -> Reply:
        try:
            return await self.client.call(kind, actor_id, command,
                                          correlation_id=correlation_id)
        except CallTimeout as exc:
            raise ApiError("deadline_exceeded") from exc

    async def _wait(self, position: int) -> None:
        if not await self.store.wait_for_projection(PROJECTION_NAME, position,
                                                    self.wait_timeout):
            raise ApiError("unavailable", "The flavors projection is behind; try again.")


class ComputeApi:
    """The compute `ServiceApi`: flavors and os-hypervisors under ``/compute/v2.1``."""

    service = "compute"

    def __init__(self, store: ProjectionStore, client: ActorClient, *,
                 wait_timeout: float = 10.0, networking: NetworkingApi | None = None,
                 block_storage: bool = False) -> None:
        self.store = store
        self.flavors = FlavorWriter(store, client, wait_timeout)
        self.servers = ServersApi(store, client, wait_timeout=wait_timeout,
                                  networking=networking, volumes=block_storage)
        self.volumes = ServerVolumesApi(store, client, wait_timeout=wait_timeout) \
            if block_storage else None

    def register(self, router: ServiceRouter) -> None:
        router.get("/flavors", self.list_flavors)
        router.get("/flavors/detail", self.list_flavors_detail)
        router.get("/flavors/{id}", self.show_flavor)
        router.get("/flavors/{id}/os-extra_specs", self.list_extra_specs)
        router.get("/flavors/{id}/os-extra_specs/{key}", self.show_extra_spec)
        router.post("/flavors", self.create_flavor)
        router.delete("/flavors/{id}", self.delete_flavor)
        router.get("/os-hypervisors", self.list_hypervisors)
        router.get("/os-hypervisors/detail", self.list_hypervisors_detail)
        router.get("/os-hypervisors/{id}", self.show_hypervisor)
        self.servers.register(router)
        if self.volumes is not None:
            self.volumes.register(router)

    # -- flavors ---------------------------------------------------------------------------

    async def list_flavors(self, request: web.Request) -> web.Response:
        found = await self._listed(request)
        return json_response({"flavors": [_flavor_brief(request, f) for f in found]})

    async def list_flavors_detail(self, request: web.Request) -> web.Response:
        found = await self._listed(request)
        version = _version(request)
        return json_response({"flavors": [_flavor(request, f, version) for f in found]})

    async def show_flavor(self, request: web.Request) -> web.Response:
        context = await authenticate(request)
        flavor = await self._flavor(request.match_info["id"], context)
        return json_response({"flavor": _flavor(request, flavor, _version(request))})

    async def list_extra_specs(self, request: web.Request) -> web.Response:
        """No flavor has extra specs yet (``openstack flavor show`` asks for them)."""
        context = await authenticate(request)
        await self._flavor(request.match_info["id"], context)
        return json_response({"extra_specs": {}})

    async def show_extra_spec(self, request: web.Request) -> web.Response:
        context = await authenticate(request)
        flavor = await self._flavor(request.match_info["id"], context)
        key = request.match_info["key"]
        raise ApiError("not_found", f"Flavor {flavor.id} has no extra specs with key {key}.")

    async def create_flavor(self, request: web.Request) -> web.Response:
        _admin(await authenticate(request), "os_compute_api:os-flavor-manage:create")
        body = (await read_json(request, FlavorRequest)).flavor
        command = create_command(body, _version(request))
        flavor_id = body.id if body.id is not None else str(uuid.uuid4())
        await self.flavors.create(flavor_id, command, request[REQUEST_ID])
        log.info("flavor_created", flavor_id=flavor_id, name=command.name)
        created = await self._flavor(flavor_id, None)
        return json_response({"flavor": _flavor(request, created, _version(request))})

    async def delete_flavor(self, request: web.Request) -> web.Response:
        _admin(await authenticate(request), "os_compute_api:os-flavor-manage:delete")
        flavor = await self._flavor(request.match_info["id"], None)
        await self.flavors.delete(flavor, request[REQUEST_ID])
        log.info("flavor_deleted", flavor_id=flavor.id)
        return web.Response(status=202)

    async def _listed(self, request: web.Request) -> list[FlavorView]:
        context = await authenticate(request)
        query = request.query
        public = _is_public(query.get("is_public")) if context.is_admin else True
        found = await read_flavors(self.store, is_public=public,
                                   min_ram=_min(query, "minRam"), min_disk=_min(query, "minDisk"))
        return _page(found, query.get("marker"), query.get("limit"))

    async def _flavor(self, flavor_id: str, context: AuthContext | None) -> FlavorView:
        """A live flavor ``context`` may see (None: no restriction), else 404."""
        flavor = await read_flavor(self.store, flavor_id)
        hidden = context is not None and not context.is_admin
        if flavor is None or (hidden and not flavor.is_public):
            raise ApiError("not_found", f"Flavor {flavor_id} could not be found.")
        return flavor

    # -- os-hypervisors ----------------------------------------------------------------------

    async def list_hypervisors(self, request: web.Request) -> web.Response:
        _admin(await authenticate(request), "os_compute_api:os-hypervisors:list")
        version = _version(request)
        hosts = await _compute_hosts(self.store)
        return json_response({"hypervisors": [_hypervisor(h, version) for h in hosts]})

    async def list_hypervisors_detail(self, request: web.Request) -> web.Response:
        _admin(await authenticate(request), "os_compute_api:os-hypervisors:list-detail")
        version = _version(request)
        hosts = await _compute_hosts(self.store)
        return json_response({"hypervisors": [_hypervisor_detail(h, version) for h in hosts]})

    async def show_hypervisor(self, request: web.Request) -> web.Response:
        _admin(await authenticate(request), "os_compute_api:os-hypervisors:show")
        version, wanted = _version(request), request.match_info["id"]
        for host in await _compute_hosts(self.store):
            if str(hypervisor_id(host.id, version)) == wanted:
                return json_response({"hypervisor": _hypervisor_detail(host, version)})
        raise ApiError("not_found", f"Hypervisor with ID '{wanted}' could not be found.")


async def _compute_hosts(store: ProjectionStore) -> list[HostView]:
    """The hosts that run instances (os-hypervisors lists no storage-only host)."""
    return [h for h in await read_hosts(store) if h.capacity.compute]


async def seed_default_flavors(store: Any, client: ActorClient, *,
                               wait_timeout: float = 30.0) -> int:
    """Create devstack's default flavors on a new cloud; how many were created.

    A flavor whose stream already exists is left alone (so a flavor an admin deleted stays
    deleted). A cloud without the ``flavors`` table (one that runs no flavor kind, such as
    an identity-only test cloud) is skipped.
    """
    if not await _has_flavors_table(store):
        log.info("flavor_seed_skipped", reason="no_flavors_projection")
        return 0
    writer = FlavorWriter(store, client, wait_timeout)
    created = 0
    for flavor_id, command in default_flavors():
        if await store.stream_version(stream_name(FLAVOR_KIND, flavor_id)) > 0:
            continue
        try:
            await writer.create(flavor_id, command, "req-bootstrap")
        except ApiError as exc:
            if exc.code != "conflict":
                raise
            log.warning("flavor_seed_conflict", flavor_id=flavor_id, reason=exc.message)
            continue
        created += 1
    log.info("flavors_seeded", created=created)
    return created


async def _has_flavors_table(store: Any) -> bool:
    try:
        await store.query("SELECT COUNT(*) FROM flavors")
    except Exception:  # either backend's "no such table"
        return False
    return True


# --- request parsing ------------------------------------------------------------------------


def _version(request: web.Request) -> APIVersion:
    return request.get(API_VERSION) or V2_1


def _admin(context: AuthContext, rule: str) -> None:
    if not context.is_admin:
        raise ApiError("forbidden", f"Policy doesn't allow {rule} to be performed.")


def _is_public(text: str | None) -> bool | None:
    """Nova's is_public filter for admins: absent means public only, "none" means all."""
    if text is None:
        return True
    lowered = text.strip().lower()
    if lowered == "none":
        return None
    if lowered in ("1", "t", "true", "on", "y", "yes"):
        return True
    if lowered in ("0", "f", "false", "off", "n", "no"):
        return False
    raise ApiError("bad_request", f"Invalid is_public filter [{text}]")


def _min(query: Any, name: str) -> int:
    text = query.get(name)
    if text is None:
        return 0
    try:
        return int(text)
    except ValueError:
        raise ApiError("bad_request", f"Invalid {name} filter [{text}]") from None


def _page(found: list[FlavorView], marker: str | None, limit: str | None) -> list[FlavorView]:
    """Nova's limit/marker: the flavors after ``marker`` (an id), at most ``limit``."""
    if marker is not None:
        ids = [f.id for f in found]
        if marker not in ids:
            raise ApiError("bad_request", f"marker [{marker}] not found")
        found = found[ids.index(marker) + 1:]
    if limit is None:
        return found[:1000]
    try:
        count = int(limit)
    except ValueError:
        raise ApiError("bad_request", "limit param must be an integer") from None
    if count < 0:
        raise ApiError("bad_request", "limit param must be positive")
    return found[:min(count, 1000)]


# --- representations ------------------------------------------------------------------------


def _links(request: web.Request, flavor_id: str) -> list[Doc]:
    base = f"{request.scheme}://{request.host}/compute"
    return [{"rel": "self", "href": f"{base}/v2.1/flavors/{flavor_id}"},
            {"rel": "bookmark", "href": f"{base}/flavors/{flavor_id}"}]


def _flavor_brief(request: web.Request, f: FlavorView) -> Doc:
    doc: Doc = {"id": f.id, "name": f.name, "links": _links(request, f.id)}
    if _version(request) >= APIVersion(2, 55):
        doc["description"] = f.description
    return doc


def _flavor(request: web.Request, f: FlavorView, version: APIVersion) -> Doc:
    """Nova's flavor at ``version`` (swap "" when 0 before 2.75, description 2.55, ...)."""
    doc: Doc = {
        "id": f.id, "name": f.name, "ram": f.ram, "disk": f.disk, "vcpus": f.vcpus,
        "OS-FLV-EXT-DATA:ephemeral": f.ephemeral,
        "swap": f.swap if f.swap or version >= APIVersion(2, 75) else "",
        "rxtx_factor": f.rxtx_factor, "os-flavor-access:is_public": f.is_public,
        "OS-FLV-DISABLED:disabled": f.disabled, "links": _links(request, f.id),
    }
    if version >= APIVersion(2, 55):
        doc["description"] = f.description
    if version >= APIVersion(2, 61):
        doc["extra_specs"] = {}
    return doc


def hypervisor_id(host: str, version: APIVersion = V2_1) -> int | str:
    """A host's hypervisor id: a stable positive integer below 2.53, a UUID from it."""
    if version >= APIVersion(2, 53):
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"orrery:hypervisor:{host}"))
    digest = hashlib.sha256(f"orrery:hypervisor:{host}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF or 1


def _service_id(host: str, version: APIVersion) -> int | str:
    return hypervisor_id(f"service:{host}", version)


def _hypervisor(host: HostView, version: APIVersion) -> Doc:
    return {"id": hypervisor_id(host.id, version), "hypervisor_hostname": host.id,
            "state": host.state, "status": "enabled"}


def _hypervisor_detail(host: HostView, version: APIVersion) -> Doc:
    doc = _hypervisor(host, version)
    doc.update({
        "hypervisor_type": HYPERVISOR_TYPE, "hypervisor_version": 1000, "host_ip": None,
        "service": {"host": host.id, "id": _service_id(host.id, version),
                    "disabled_reason": None},
    })
    if version >= APIVersion(2, 88):
        return doc
    cap, used = host.capacity, host.used
    doc.update({
        "vcpus": cap.vcpus, "memory_mb": cap.ram_mb, "local_gb": cap.disk_gb,
        "vcpus_used": used.vcpus, "memory_mb_used": used.ram_mb,
        "local_gb_used": used.disk_gb, "free_ram_mb": cap.ram_mb - used.ram_mb,
        "free_disk_gb": cap.disk_gb - used.disk_gb, "current_workload": 0,
        "running_vms": host.instances, "disk_available_least": cap.disk_gb - used.disk_gb,
        "cpu_info": {} if version >= APIVersion(2, 28) else "{}",
    })
    return doc
