"""A whole cloud in-process for API tests, assembled as ``orrery up`` assembles it.

`running_cloud` opens the store and bus (`open_backends`), runs the actor runtime with
every cloud kind and effect, the worker and API projections, the durable timers, the relay,
``hosts`` host daemons (``host-1`` .. ``host-N``), ``storage_hosts`` storage daemons
(``storage-1`` .. ``storage-N``, each on the backend ``storage(i)`` makes: by default the
fake), bootstraps, and serves the cloud app on a free port. It yields a `Cloud`: base
url, store, bus, actor client, an HTTP session and token helpers.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from actors.client import ActorClient
from actors.instance import KIND as INSTANCE_KIND, Deadlines, make_instance_kind
from actors.kind import ActorKind
from actors.runtime import ActorRuntime
from actors.timers import TimerService
from actors.volume import KIND as VOLUME_KIND, VolumeDeadlines, make_volume_kind
from bus.protocol import Bus
from bus.routing import Names
from gateway.app import GatewaySettings
from hostd.daemon import HostDaemon
from hostd.hypervisor import Hypervisor
from hostd.net_fake import FakeHostNetwork
from hostd.storage import StorageBackend
from hostd.storage_fake import FakeStorageBackend
from hostd.storaged import StorageDaemon
from orrery.bootstrap import bootstrap, make_cloud_app
from orrery.services import (
    cloud_apis,
    cloud_effects,
    cloud_kinds,
    cloud_projections,
    cloud_services,
    worker_projections,
)
from orrery.wiring import event_types, image_cache, open_hypervisor
from store.projections import Projection, ProjectionHub
from store.relay import Relay
from tests.support.backends import open_backends
from tests.support.serve import serving
from webhooks.destinations import DestinationPolicy
from webhooks.dispatcher import Dispatcher, DispatcherSettings
from webhooks.outbox import RetryPolicy

ADMIN_PASSWORD = "secret"
#: webhooks in tests: receivers on loopback, retries after tens of milliseconds
TEST_WEBHOOKS = DispatcherSettings(retry=RetryPolicy(base=0.05, cap=0.5, timeout=5.0),
                                   destinations=DestinationPolicy(allow_loopback=True))


@dataclass
class Cloud:
    """A running cloud: ``url`` is the gateway's base (``http://127.0.0.1:PORT``)."""

    url: str
    store: Any
    bus: Bus
    client: ActorClient
    http: aiohttp.ClientSession
    daemons: list[HostDaemon]
    hypervisors: list[Hypervisor]
    storage_daemons: list[StorageDaemon] = field(default_factory=list)
    storage: list[StorageBackend] = field(default_factory=list)
    admin_password: str = ADMIN_PASSWORD
    _admin: str | None = field(default=None, repr=False)

    async def token(self, user: str, password: str, project: str) -> str:
        """A project-scoped token for ``user`` (names in the Default domain)."""
        auth = {"identity": {"methods": ["password"], "password": {"user": {
            "name": user, "domain": {"name": "Default"}, "password": password}}},
            "scope": {"project": {"name": project, "domain": {"name": "Default"}}}}
        async with self.http.post(f"{self.url}/identity/v3/auth/tokens",
                                  json={"auth": auth}) as resp:
            assert resp.status == 201, await resp.text()
            return str(resp.headers["X-Subject-Token"])

    async def admin_token(self) -> str:
        """The bootstrap admin's token on the ``admin`` project (cached)."""
        if self._admin is None:
            self._admin = await self.token("admin", self.admin_password, "admin")
        return self._admin

    async def project(self, name: str) -> str:
        """Create project ``name`` (admin); its id."""
        h = {"X-Auth-Token": await self.admin_token()}
        async with self.http.post(f"{self.url}/identity/v3/projects", headers=h,
                                  json={"project": {"name": name}}) as resp:
            assert resp.status == 201, await resp.text()
            return str((await resp.json())["project"]["id"])

    async def user(self, name: str, project: str, role: str = "member",
                   password: str = "pw") -> str:
        """Create user ``name`` with ``role`` on project ``project`` (by name, created if
        new); the user's token on that project."""
        h = {"X-Auth-Token": await self.admin_token()}
        async with self.http.get(f"{self.url}/identity/v3/projects?name={project}",
                                 headers=h) as resp:
            found = (await resp.json())["projects"]
        project_id = found[0]["id"] if found else await self.project(project)
        async with self.http.post(f"{self.url}/identity/v3/users", headers=h, json={"user": {
                "name": name, "password": password, "default_project_id": project_id}}) as resp:
            assert resp.status == 201, await resp.text()
            user_id = (await resp.json())["user"]["id"]
        async with self.http.get(f"{self.url}/identity/v3/roles?name={role}",
                                 headers=h) as resp:
            role_id = (await resp.json())["roles"][0]["id"]
        async with self.http.put(f"{self.url}/identity/v3/projects/{project_id}/users/"
                                 f"{user_id}/roles/{role_id}", headers=h) as resp:
            assert resp.status == 204, await resp.text()
        return await self.token(name, password, project)

    async def head(self) -> int:
        """The log's head position (the highest committed global position)."""
        return int(await self.store.head())

    async def settled(self) -> int:
        """The log's head once it has stopped moving (unchanged for 0.3 s): earlier
        writes' reactions, such as holds confirmed, are recorded by then."""
        head = await self.head()
        while True:
            await asyncio.sleep(0.3)
            now = await self.head()
            if now == head:
                return head
            head = now

    async def caused(self, after: int, request_ids: Collection[str]) -> list[str]:
        """The types of the events after ``after`` that the requests with these ids
        caused (their correlation id), once the log has settled. A reaction to an
        earlier request that lands late is not counted: it carries that request's id."""
        await self.settled()
        wanted = set(request_ids)
        return [e.type for e in await self.store.read_all(after=after)
                if e.correlation_id in wanted]


def kinds_with(deadlines: Deadlines | None,
               volume_deadlines: VolumeDeadlines | None = None) -> list[ActorKind[Any]]:
    """The cloud's kinds, the instance and volume kinds with these deadlines if given."""
    kinds = cloud_kinds()
    if deadlines is not None:
        kinds = [make_instance_kind(deadlines) if k.name == INSTANCE_KIND else k
                 for k in kinds]
    if volume_deadlines is not None:
        kinds = [make_volume_kind(volume_deadlines) if k.name == VOLUME_KIND else k
                 for k in kinds]
    return kinds


def _projections() -> list[Projection]:
    """Worker and API projections, each once (``up`` runs both roles in one process)."""
    seen: dict[str, Projection] = {}
    for projection in [*worker_projections(), *cloud_projections()]:
        seen.setdefault(projection.name, projection)
    return list(seen.values())


@contextlib.asynccontextmanager
async def running_cloud(
    which: str, tmp_path: Path, *, pg_dsn: str | None = None, amqp_url: str | None = None,
    names: Names, hosts: int = 1, hypervisor: str = "fake", data_dir: Path | None = None,
    deadlines: Deadlines | None = None, settings: GatewaySettings | None = None,
    heartbeat_every: float = 1.0, call_timeout: float = 15.0,
    host_network: Callable[[int], Any] | None = None, storage_hosts: int = 0,
    storage: Callable[[int], StorageBackend] | None = None,
    hypervisor_factory: Callable[[int], Hypervisor] | None = None,
    volume_deadlines: VolumeDeadlines | None = None, host_images: bool = False,
    webhooks: DispatcherSettings = TEST_WEBHOOKS, sse_heartbeat: float = 15.0,
) -> AsyncIterator[Cloud]:
    """Run a whole cloud on the ``which`` backends ("embedded" or "real") until exit.

    ``host_images``: hosts boot from their own image cache (libvirt needs a disk file).

    ``host_network(i)`` makes host ``i``'s (from 0) network driver; by default each host
    gets the recording fake with physnet1 and underlay address 192.0.2.<i+1>. ``webhooks``
    are how the dispatcher delivers and which destinations the API accepts."""
    kinds = kinds_with(deadlines, volume_deadlines)
    data = data_dir or tmp_path / "data"
    async with open_backends(which, types=event_types(kinds), names=names, tmp_path=tmp_path,
                             pg_dsn=pg_dsn, amqp_url=amqp_url) as (store, bus), \
            contextlib.AsyncExitStack() as stack:
        projections = _projections()
        for projection in projections:
            await store.run_ddl(projection.ddl)
        await stack.enter_async_context(ProjectionHub(store, projections, lead=True))
        runtime = ActorRuntime(store, bus, kinds, effect_handlers=cloud_effects(store, bus))
        await stack.enter_async_context(runtime)
        tasks: list[asyncio.Task[None]] = [
            asyncio.create_task(TimerService(store, bus).run(), name="timers"),
            asyncio.create_task(Relay(store, bus).run(), name="relay"),
            *(asyncio.create_task(service.run(), name=type(service).__name__)
              for service in cloud_services(store, bus)),
        ]
        daemons, hypervisors = [], []
        stores: list[StorageDaemon] = []
        backends: list[StorageBackend] = []
        try:
            for i in range(storage_hosts):
                backend = storage(i) if storage else FakeStorageBackend()
                backends.append(backend)
                name = f"storage-{i + 1}"
                sd = StorageDaemon(bus, backend, name, heartbeat_every=heartbeat_every,
                                   images=image_cache(data, name))
                stores.append(sd)
                tasks.append(asyncio.create_task(sd.run(), name=name))
            for i in range(hosts):
                hv = hypervisor_factory(i) if hypervisor_factory else \
                    await open_hypervisor(hypervisor)
                hypervisors.append(hv)
                network = host_network(i) if host_network else FakeHostNetwork(
                    bridge_mappings={"physnet1": "br-phys"}, underlay_ip=f"192.0.2.{i + 1}")
                daemon = HostDaemon(bus, hv, f"host-{i + 1}", heartbeat_every=heartbeat_every,
                                    network=network, images=image_cache(
                                        data, f"host-{i + 1}") if host_images else None)
                daemons.append(daemon)
                tasks.append(asyncio.create_task(daemon.run(), name=f"hostd-{i + 1}"))
            client = ActorClient(bus, timeout=call_timeout)
            tasks.append(asyncio.create_task(Dispatcher(store, client, webhooks).run(),
                                             name="webhooks"))
            await bootstrap(store, client, password=ADMIN_PASSWORD)
            apis = cloud_apis(store, client, data_dir=str(data),
                              destinations=webhooks.destinations, heartbeat=sse_heartbeat)
            app = make_cloud_app(store, client, apis=apis, settings=settings)
            async with serving(app) as url, aiohttp.ClientSession() as http:
                yield Cloud(url=url, store=store, bus=bus, client=client, http=http,
                            daemons=daemons, hypervisors=hypervisors,
                            storage_daemons=stores, storage=backends)
        finally:
            for daemon in daemons:
                daemon.shutdown()
            for sd in stores:
                sd.shutdown()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for hv in hypervisors:
                with contextlib.suppress(Exception):
                    await hv.close()
