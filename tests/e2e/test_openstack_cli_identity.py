"""The real `openstack` CLI against Orrery's Identity API (gateway served in-process)."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from actors.client import ActorClient
from actors.identity import IDENTITY_KINDS
from actors.runtime import ActorRuntime
from bus.routing import Names
from orrery.bootstrap import bootstrap, identity_runner, make_cloud_app
from orrery.wiring import event_types
from tests.support.backends import open_backends
from tests.support.serve import serving

OPENSTACK = Path(sys.executable).parent / "openstack"
CLOUDS = """clouds:
  {name}:
    auth: {{auth_url: "{url}/identity", username: {user}, password: "{password}",
           project_name: {project}, user_domain_name: Default, project_domain_name: Default}}
    region_name: RegionOne
    identity_api_version: 3
    interface: public
"""


class Cli(msgspec.Struct, kw_only=True):
    url: str
    home: Path

    def cloud(self, name: str, user: str, password: str, project: str) -> None:
        path = self.home / "clouds.yaml"
        text = path.read_text() if path.exists() else ""
        body = CLOUDS.format(name=name, url=self.url, user=user, password=password,
                             project=project)
        path.write_text(body if not text else text + body.split("\n", 1)[1])

    async def run(self, cloud: str, *args: str) -> tuple[int, str, str]:
        env = {"OS_CLIENT_CONFIG_FILE": str(self.home / "clouds.yaml"), "HOME": str(self.home),
               "PATH": str(OPENSTACK.parent)}
        proc = await asyncio.create_subprocess_exec(
            str(OPENSTACK), "--os-cloud", cloud, *args, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        async with asyncio.timeout(60):
            out, err = await proc.communicate()
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    async def json(self, cloud: str, *args: str) -> Any:
        code, out, err = await self.run(cloud, *args, "-f", "json")
        assert code == 0, f"openstack {' '.join(args)} failed: {err}"
        return json.loads(out)



@pytest.fixture
async def cli(tmp_path: Path) -> AsyncIterator[Cli]:
    """Orrery's gateway with identity on embedded backends, on a free local port."""
    assert OPENSTACK.exists(), "python-openstackclient must be installed (the e2e extra)"
    names = Names(prefix="e2e", shards=2)
    async with open_backends("embedded", types=event_types(IDENTITY_KINDS), names=names,
                             tmp_path=tmp_path) as (store, bus):
        async with ActorRuntime(store, bus, IDENTITY_KINDS), identity_runner(store):
            client = ActorClient(bus, timeout=15)
            await bootstrap(store, client, password="s3cret")
            async with serving(make_cloud_app(store, client)) as url:
                cli = Cli(url=url, home=tmp_path)
                cli.cloud("orrery", "admin", "s3cret", "admin")
                yield cli


async def test_openstack_cli_drives_identity(cli: Cli) -> None:
    """token issue, catalog list, project create/list, user create, role add, role
    assignment list, and the new user logging in with its own password."""
    token = await cli.json("orrery", "token", "issue")
    assert set(token) >= {"expires", "id", "project_id", "user_id"}
    catalog = await cli.json("orrery", "catalog", "list")
    assert {c["Type"] for c in catalog} >= {"identity", "compute", "image", "network"}
    project = await cli.json("orrery", "project", "create", "demo", "--description", "d")
    assert project["name"] == "demo"
    assert "demo" in {p["Name"] for p in await cli.json("orrery", "project", "list")}
    user = await cli.json("orrery", "user", "create", "alice", "--password", "pw-alice",
                          "--project", "demo")
    assert user["default_project_id"] == project["id"]
    code, _, err = await cli.run("orrery", "role", "add", "--project", "demo", "--user",
                                 "alice", "member")
    assert code == 0, err
    assignments = await cli.json("orrery", "role", "assignment", "list", "--names",
                                 "--user", "alice")
    assert [(a["Role"], a["Project"]) for a in assignments] == [("member", "demo@Default")]
    cli.cloud("alice", "alice", "pw-alice", "demo")
    alice = await cli.json("alice", "token", "issue")
    assert (alice["user_id"], alice["project_id"]) == (user["id"], project["id"])


async def test_openstack_cli_wrong_password_is_refused(cli: Cli) -> None:
    """A wrong password fails the command with Keystone's 401."""
    cli.cloud("bad", "admin", "wrong", "admin")
    code, _, err = await cli.run("bad", "token", "issue")
    assert code != 0
    assert "401" in err and "requires authentication" in err
