"""The real `openstack` CLI and openstacksdk drive a server's whole life, against
`orrery up --hosts 2` and against the multi-process deployment (PostgreSQL + RabbitMQ, two
``orrery hostd`` on libvirt test:///default): one scenario, both deployments."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openstack
import openstack.config
import pytest

from bus.routing import Names
from orrery.clouds import clouds_yaml
from tests.e2e.test_openstack_cli_identity import OPENSTACK
from tests.support.deployment import Deployment, deployment
from tests.support.procs import ROOT
from tests.support.serve import free_port

PASSWORD = "s3cret-admin"
CLOUD = """  {name}:
    auth: {{auth_url: "{url}/identity", username: {user}, password: "{password}",
           project_name: {project}, user_domain_name: Default, project_domain_name: Default}}
    region_name: RegionOne
    identity_api_version: 3
"""


class Os:
    """The `openstack` CLI with cloud ``orrery`` (admin, as `orrery up` writes it) and
    more clouds added to its own clouds.yaml."""

    def __init__(self, url: str, home: Path) -> None:
        self.url = url
        self.home = home
        self.clouds = home / "clouds.yaml"
        self.clouds.write_text(clouds_yaml(url, PASSWORD))

    def add_cloud(self, name: str, user: str, password: str, project: str) -> None:
        self.clouds.write_text(self.clouds.read_text() + CLOUD.format(
            name=name, url=self.url, user=user, password=password, project=project))

    def run(self, cloud: str, *args: str) -> subprocess.CompletedProcess[str]:
        env = {"OS_CLIENT_CONFIG_FILE": str(self.clouds), "HOME": str(self.home),
               "PATH": str(OPENSTACK.parent)}
        return subprocess.run([str(OPENSTACK), "--os-cloud", cloud, *args], env=env,
                              capture_output=True, text=True, timeout=90)

    def ok(self, cloud: str, *args: str) -> str:
        done = self.run(cloud, *args)
        assert done.returncode == 0, f"openstack {' '.join(args)}: {done.stderr}"
        return done.stdout

    def json(self, cloud: str, *args: str) -> Any:
        return json.loads(self.ok(cloud, *args, "-f", "json"))

    def wait_status(self, server: str, status: str, timeout: float = 45.0) -> dict[str, Any]:
        """Poll `server show` until ``status`` (failing at once on ERROR)."""
        deadline = time.monotonic() + timeout
        while True:
            shown: dict[str, Any] = self.json("orrery", "server", "show", server)
            if shown["status"] == status:
                return shown
            assert shown["status"] != "ERROR", f"server went to ERROR: {shown.get('fault')}"
            assert time.monotonic() < deadline, f"never {status}: {shown['status']}"
            time.sleep(0.5)


def scenario(cli: Os, *, hosts: set[str], dep: Deployment | None = None) -> None:
    """token, catalog, identity, image round trip, flavors, a server's life through the
    CLI, hypervisors, the SDK's create/delete, isolation and a reader's 403."""
    token = cli.json("orrery", "token", "issue")
    assert set(token) >= {"id", "expires", "project_id", "user_id"}
    catalog = {c["Type"] for c in cli.json("orrery", "catalog", "list")}
    assert catalog >= {"identity", "compute", "image"}

    cli.json("orrery", "project", "create", "other")
    cli.json("orrery", "user", "create", "bob", "--password", "pw-bob", "--project", "other")
    cli.ok("orrery", "role", "add", "--project", "other", "--user", "bob", "member")
    cli.json("orrery", "user", "create", "rita", "--password", "pw-rita", "--project", "admin")
    cli.ok("orrery", "role", "add", "--project", "admin", "--user", "rita", "reader")
    cli.add_cloud("other", "bob", "pw-bob", "other")
    cli.add_cloud("reader", "rita", "pw-rita", "admin")

    disk = cli.home / "disk.raw"
    disk.write_bytes(os.urandom(6 * 1024))
    image = cli.json("orrery", "image", "create", "--file", str(disk), "--disk-format", "raw",
                     "--container-format", "bare", "e2e-img")
    assert image["status"] == "active"
    cli.ok("orrery", "image", "save", "--file", str(cli.home / "back.raw"), "e2e-img")
    assert (cli.home / "back.raw").read_bytes() == disk.read_bytes()

    flavor = cli.json("orrery", "flavor", "create", "--ram", "128", "--disk", "1",
                      "--vcpus", "1", "e2e.tiny")
    assert "e2e.tiny" in {f["Name"] for f in cli.json("orrery", "flavor", "list")}

    made = cli.json("orrery", "server", "create", "--no-network", "--flavor", "e2e.tiny",
                    "--image", "e2e-img", "--wait", "vm1")
    assert made["status"] == "ACTIVE", made
    sid = made["id"]
    listed = cli.json("orrery", "server", "list")
    assert [(s["ID"], s["Name"], s["Status"]) for s in listed] == [(sid, "vm1", "ACTIVE")]
    shown = cli.json("orrery", "server", "show", "vm1")
    assert (shown["id"], shown["status"]) == (sid, "ACTIVE")
    host = shown["OS-EXT-SRV-ATTR:host"]
    assert host in hosts and shown["OS-EXT-SRV-ATTR:hypervisor_hostname"] == host
    if dep is not None:  # the domain is on that host: its hostd holds the claim and runs it
        usage = {h["hypervisor_hostname"]: h for h in dep.hypervisors()}
        assert (usage[host]["running_vms"], usage[host]["vcpus_used"],
                usage[host]["memory_mb_used"]) == (1, 1, 128)

    cli.ok("orrery", "server", "stop", "vm1")
    assert cli.wait_status("vm1", "SHUTOFF")["OS-EXT-STS:power_state"] in ("Shutdown", 4)
    cli.ok("orrery", "server", "start", "vm1")
    cli.wait_status("vm1", "ACTIVE")
    for hard in ((), ("--hard",)):
        cli.ok("orrery", "server", "reboot", *hard, "vm1")
        cli.wait_status("vm1", "ACTIVE")

    hypervisors = cli.json("orrery", "hypervisor", "list")
    assert {(h["Hypervisor Hostname"], h["State"]) for h in hypervisors} == {
        (h, "up") for h in hosts}

    # another project's member sees nothing of it and touches nothing (404, as Nova)
    assert cli.json("other", "server", "list") == []
    for args in (("server", "show", sid), ("server", "stop", sid), ("server", "delete", sid)):
        done = cli.run("other", *args)
        # OSC words it "No Server found for <id>" (show) or "No server with a name or ID
        # of '<id>' exists." (stop, delete): both come from a 404
        assert done.returncode != 0 and "no server" in done.stderr.lower() and \
            sid in done.stderr, done.stderr
    # a reader of the admin project reads and cannot write (403)
    assert [s["ID"] for s in cli.json("reader", "server", "list")] == [sid]
    done = cli.run("reader", "server", "stop", sid)
    assert done.returncode != 0 and "403" in done.stderr, done.stderr
    assert cli.json("orrery", "server", "show", sid)["status"] == "ACTIVE"

    cli.ok("orrery", "server", "delete", "--wait", "vm1")
    assert cli.json("orrery", "server", "list") == []
    done = cli.run("orrery", "server", "show", sid)
    assert done.returncode != 0 and "No Server found for" in done.stderr, done.stderr
    if dep is not None:
        usage = {h["hypervisor_hostname"]: h for h in dep.hypervisors()}
        assert usage[host]["running_vms"] == 0 and usage[host]["vcpus_used"] == 0

    _sdk_round_trip(cli, image_id=image["id"], flavor_id=flavor["id"])


def _sdk_round_trip(cli: Os, *, image_id: str, flavor_id: str) -> None:
    """openstacksdk: create a server and wait for ACTIVE, then the cloud layer's
    delete_server(wait=True).

    The cloud layer's ``create_server(wait=True)`` cannot be used before networking: on
    ACTIVE it wants an IP address, and without one it deletes the server and raises
    ("Server reached ACTIVE state without being allocated an IP address"). So the create
    and its wait go through the compute proxy (``networks="none"``, as --no-network).
    """
    config = openstack.config.OpenStackConfig(config_files=[str(cli.clouds)])
    conn = openstack.connection.Connection(config=config.get_one(cloud="orrery"))
    try:
        server = conn.compute.create_server(name="sdk-vm", image_id=image_id,
                                            flavor_id=flavor_id, networks="none")
        server = conn.compute.wait_for_server(server, status="ACTIVE", wait=60)
        assert server.status == "ACTIVE"
        found = conn.get_server("sdk-vm")
        assert found is not None and found.id == server.id
        assert conn.delete_server(server.id, wait=True, timeout=60) is True
        assert conn.get_server(server.id) is None
    finally:
        conn.close()


# -- against `orrery up` --------------------------------------------------------------------


@pytest.fixture
def up(tmp_path: Path) -> Iterator[str]:
    """`orrery up --hosts 2` as a subprocess on the embedded defaults; its URL."""
    port, data = free_port(), tmp_path / "cloud"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORRERY_")}
    env.update(ORRERY_ADMIN_PASSWORD=PASSWORD, ORRERY_LOG_FORMAT="json", PYTHONPATH=str(ROOT))
    with open(tmp_path / "up.log", "wb") as log:  # the child keeps its copy
        proc = subprocess.Popen(
            [sys.executable, "-m", "orrery.cli", "up", "--port", str(port), "--data-dir",
             str(data), "--hosts", "2"], cwd=tmp_path, env=env, stdout=log,
            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not (data / "clouds.yaml").exists():
            assert proc.poll() is None, (tmp_path / "up.log").read_text()
            assert time.monotonic() < deadline, "no clouds.yaml written"
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    except BaseException:
        print((tmp_path / "up.log").read_text()[-6000:])
        raise
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _wait_hosts_up(cli: Os, hosts: set[str]) -> None:
    deadline = time.monotonic() + 30
    while True:
        listed = cli.json("orrery", "hypervisor", "list")
        if {(h["Hypervisor Hostname"], h["State"]) for h in listed} == {(h, "up") for h in hosts}:
            return
        assert time.monotonic() < deadline, f"hosts never up: {listed}"
        time.sleep(0.5)


def test_openstack_cli_servers_on_orrery_up(up: str, tmp_path: Path) -> None:
    """The whole scenario against `orrery up --hosts 2` (hosts host-1 and host-2)."""
    assert OPENSTACK.exists(), "python-openstackclient must be installed (the e2e extra)"
    home = tmp_path / "home"
    home.mkdir()
    cli = Os(up, home)
    _wait_hosts_up(cli, {"host-1", "host-2"})
    try:
        scenario(cli, hosts={"host-1", "host-2"})
    except BaseException:
        print((tmp_path / "up.log").read_text(errors="replace")[-8000:])
        raise


# -- against the multi-process deployment ---------------------------------------------------


def test_openstack_cli_servers_on_the_multiprocess_deployment(
    pg_dsn: str, amqp_url: str, amqp_cleanup: Names, tmp_path: Path,
) -> None:
    """The same scenario against relay + worker + api + two hostd (h1, h2) on libvirt
    test:///default, PostgreSQL and RabbitMQ; usage per host from os-hypervisors at 2.1."""
    assert OPENSTACK.exists(), "python-openstackclient must be installed (the e2e extra)"
    with deployment(pg_dsn=pg_dsn, amqp_url=amqp_url, prefix=amqp_cleanup.prefix,
                    tmp_path=tmp_path / "dep") as dep:
        home = tmp_path / "home"
        home.mkdir()
        scenario(Os(dep.url, home), hosts={"h1", "h2"}, dep=dep)
