"""The real `openstack` CLI against Orrery's Compute flavors and os-hypervisors (gateway
served in-process, embedded backends)."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from actors.client import ActorClient
from actors.flavor import FLAVOR
from actors.flavor_views import FlavorProjection
from actors.host import HOST, ReportCapacity
from actors.host_views import HostsProjection
from actors.identity import (
    IDENTITY_KINDS,
    ROLES,
    CreateProject,
    CreateUser,
    GrantRole,
    stable_id,
)
from actors.identity_views import PROJECTION_NAME as IDENTITY_PROJECTION
from actors.passwords import hash_password
from actors.runtime import ActorRuntime
from bus.routing import Names
from gateway.compute import ComputeApi
from orrery.bootstrap import bootstrap, identity_runner, make_cloud_app
from orrery.wiring import event_types
from schemas.hostd import Capacity
from store.projections import ProjectionRunner
from tests.e2e.test_openstack_cli_identity import OPENSTACK, Cli
from tests.support.backends import open_backends
from tests.support.serve import serving

KINDS = (*IDENTITY_KINDS, FLAVOR, HOST)


class Compute(msgspec.Struct, kw_only=True):
    cli: Cli
    client: ActorClient
    store: Any


@pytest.fixture
async def cloud(tmp_path: Path) -> AsyncIterator[Compute]:
    """Orrery's gateway with identity, flavors and hosts on embedded backends, on a free
    port; bootstrap seeds the default flavors."""
    assert OPENSTACK.exists(), "python-openstackclient must be installed (the e2e extra)"
    names = Names(prefix="e2e-compute", shards=2)
    async with open_backends("embedded", types=event_types(KINDS), names=names,
                             tmp_path=tmp_path) as (store, bus):
        await store.run_ddl(FlavorProjection.ddl)
        async with ActorRuntime(store, bus, KINDS), identity_runner(store), \
                ProjectionRunner(store, FlavorProjection()), \
                ProjectionRunner(store, HostsProjection()):
            client = ActorClient(bus, timeout=15)
            await bootstrap(store, client, password="s3cret")
            app = make_cloud_app(store, client, apis=[ComputeApi(store, client)])
            async with serving(app) as url:
                cli = Cli(url=url, home=tmp_path)
                cli.cloud("orrery", "admin", "s3cret", "admin")
                yield Compute(cli=cli, client=client, store=store)


async def test_openstack_cli_flavor_lifecycle(cloud: Compute) -> None:
    """flavor list shows m1.tiny..m1.large; flavor create --ram --disk --vcpus, show (by
    name), delete, then list and show no longer find it: the lifecycle through the client."""
    cli = cloud.cli
    listed = await cli.json("orrery", "flavor", "list")
    assert [(f["ID"], f["Name"], f["RAM"], f["Disk"], f["VCPUs"]) for f in listed] == [
        ("1", "m1.tiny", 512, 1, 1), ("2", "m1.small", 2048, 20, 1),
        ("3", "m1.medium", 4096, 40, 2), ("4", "m1.large", 8192, 80, 4)]
    made = await cli.json("orrery", "flavor", "create", "--ram", "256", "--disk", "2",
                          "--vcpus", "2", "f1")
    assert (made["name"], made["ram"], made["disk"], made["vcpus"]) == ("f1", 256, 2, 2)
    assert made["os-flavor-access:is_public"] is True and len(made["id"]) == 36
    shown = await cli.json("orrery", "flavor", "show", "f1")
    assert (shown["id"], shown["properties"]) == (made["id"], {})
    code, _, err = await cli.run("orrery", "flavor", "delete", "f1")
    assert code == 0, err
    assert "f1" not in {f["Name"] for f in await cli.json("orrery", "flavor", "list")}
    code, _, err = await cli.run("orrery", "flavor", "show", "f1")
    assert code != 0 and "f1" in err


async def _member(client: ActorClient, store: Any, name: str, password: str) -> None:
    """User ``name`` with the member role on a new project ``demo`` (straight to the actors,
    which is quicker than three CLI runs)."""
    project, user = stable_id("project/demo"), stable_id(f"user/{name}")
    steps: list[tuple[str, str, msgspec.Struct]] = [
        ("project", project, CreateProject(name="demo")),
        ("user", user, CreateUser(name=name, password_hash=await hash_password(password),
                                  default_project_id=project)),
        ("user", user, GrantRole(project_id=project, role_id=ROLES["member"])),
    ]
    position = 0
    for kind, actor_id, command in steps:
        reply = await client.call(kind, actor_id, command)
        assert reply.ok, reply.error
        position = reply.position
    assert await store.wait_for_projection(IDENTITY_PROJECTION, position, 10)


async def test_openstack_cli_member_cannot_create_flavors(cloud: Compute) -> None:
    """A member lists flavors but its flavor create fails with Nova's 403."""
    cli = cloud.cli
    await _member(cloud.client, cloud.store, "bob", "pw")
    cli.cloud("bob", "bob", "pw", "demo")
    assert len(await cli.json("bob", "flavor", "list")) == 4
    code, _, err = await cli.run("bob", "flavor", "create", "--ram", "1", "--disk", "0",
                                 "--vcpus", "1", "nope")
    assert code != 0
    assert "403" in err and "os-flavor-manage:create" in err


async def test_openstack_cli_hypervisor_list_shows_a_reporting_host(cloud: Compute) -> None:
    """After host.report_capacity reaches a host actor, hypervisor list shows it up."""
    reply = await cloud.client.call("host", "compute-1", ReportCapacity(
        capacity=Capacity(vcpus=4, ram_mb=8192, disk_gb=100), at=dt.datetime.now(dt.UTC)))
    assert reply.ok, reply.error
    listed = await cloud.cli.json("orrery", "hypervisor", "list")
    assert [(h["Hypervisor Hostname"], h["State"]) for h in listed] == [("compute-1", "up")]
