"""The real `openstack` CLI against Orrery's Image v2 API (gateway served in-process)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from actors.client import ActorClient
from actors.identity import IDENTITY_KINDS, ROLES
from actors.image import IMAGE
from actors.image_views import ImageProjection
from actors.runtime import ActorRuntime
from bus.routing import Names
from gateway.image import ImageApi
from orrery.bootstrap import bootstrap, identity_runner, make_cloud_app
from orrery.wiring import event_types
from store.blobs import DirectoryImageStore
from store.projections import ProjectionRunner
from tests.e2e.test_openstack_cli_identity import OPENSTACK, Cli
from tests.integration.test_identity_api import login
from tests.support.backends import open_backends
from tests.support.serve import serving

KINDS = (*IDENTITY_KINDS, IMAGE)
ID = "/identity/v3"


@pytest.fixture
async def cli(tmp_path: Path) -> AsyncIterator[Cli]:
    """Orrery's gateway with identity and images on embedded backends, on a free port."""
    assert OPENSTACK.exists(), "python-openstackclient must be installed (the e2e extra)"
    names = Names(prefix="e2e-img", shards=2)
    async with open_backends("embedded", types=event_types(KINDS), names=names,
                             tmp_path=tmp_path) as (store, bus):
        async with ActorRuntime(store, bus, KINDS), identity_runner(store), \
                ProjectionRunner(store, ImageProjection()):
            client = ActorClient(bus, timeout=15)
            await bootstrap(store, client, password="s3cret")
            api = ImageApi(store, client, DirectoryImageStore(tmp_path / "images"))
            async with serving(make_cloud_app(store, client, apis=[api])) as url:
                cli = Cli(url=url, home=tmp_path)
                cli.cloud("orrery", "admin", "s3cret", "admin")
                yield cli


async def _user(cli: Cli, project: str, role: str) -> None:
    """A user ``<project>-<role>`` holding ``role`` on a new project, as cloud ``<name>``.

    Set up over plain HTTP (the identity CLI has its own e2e test), to keep this one short.
    """
    name = f"{project}-{role}"
    async with aiohttp.ClientSession(cli.url) as http:
        admin = await login(http, "admin", "s3cret")
        h = {"X-Auth-Token": admin}
        async with http.post(f"{ID}/projects", headers=h, json={"project": {"name": project}}) as r:
            pid = (await r.json())["project"]["id"]
        async with http.post(f"{ID}/users", headers=h, json={"user": {
                "name": name, "password": "pw", "default_project_id": pid}}) as r:
            uid = (await r.json())["user"]["id"]
        async with http.put(f"{ID}/projects/{pid}/users/{uid}/roles/{ROLES[role]}", headers=h) as r:
            assert r.status == 204
    cli.cloud(name, name, "pw", project)


async def test_openstack_cli_image_lifecycle(cli: Cli, tmp_path: Path) -> None:
    """image create --file --property, list, show, save (byte-identical), set --property,
    delete: the whole lifecycle through the real client."""
    data = os.urandom(3 * 1024 * 1024 + 17)
    (tmp_path / "disk.raw").write_bytes(data)
    made = await cli.json("orrery", "image", "create", "--file", str(tmp_path / "disk.raw"),
                          "--disk-format", "raw", "--container-format", "bare",
                          "--property", "os_distro=cirros", "img1")
    assert made["status"] == "active" and made["size"] == len(data)
    assert made["properties"]["os_distro"] == "cirros"
    listed = await cli.json("orrery", "image", "list")
    assert [(i["Name"], i["Status"]) for i in listed] == [("img1", "active")]
    shown = await cli.json("orrery", "image", "show", "img1")
    assert shown["id"] == made["id"] and shown["disk_format"] == "raw"
    code, _, err = await cli.run("orrery", "image", "save", "--file",
                                 str(tmp_path / "out.raw"), "img1")
    assert code == 0, err
    assert (tmp_path / "out.raw").read_bytes() == data
    code, _, err = await cli.run("orrery", "image", "set", "--property", "hw_disk_bus=virtio",
                                 "--name", "img2", "img1")
    assert code == 0, err
    shown = await cli.json("orrery", "image", "show", made["id"])
    assert shown["name"] == "img2" and shown["properties"]["hw_disk_bus"] == "virtio"
    code, _, err = await cli.run("orrery", "image", "delete", "img2")
    assert code == 0, err
    assert await cli.json("orrery", "image", "list") == []


async def test_openstack_cli_image_isolation_and_roles(cli: Cli, tmp_path: Path) -> None:
    """A member of another project cannot see the admin project's private image (404);
    a reader cannot create an image (403)."""
    image = await cli.json("orrery", "image", "create", "--private", "secret-img")
    await _user(cli, "other", "member")
    assert await cli.json("other-member", "image", "list") == []
    code, _, err = await cli.run("other-member", "image", "show", image["id"])
    assert code != 0 and ("404" in err or "No Image found" in err), err
    await _user(cli, "readonly", "reader")
    code, _, err = await cli.run("readonly-reader", "image", "create", "nope")
    assert code != 0 and "403" in err, err
