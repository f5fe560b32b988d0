"""The real `openstack` CLI and openstacksdk's cloud layer boot servers on a tenant network
of `orrery up --hosts 2` (fake hosts with the recording network driver): the address the
server shows is its port's, the port is bound and ACTIVE, and deleting the server gives
the port back so the subnet and network can go."""

from __future__ import annotations

import os
from pathlib import Path

import openstack
import openstack.config

from tests.e2e.test_openstack_cli_identity import OPENSTACK
from tests.e2e.test_openstack_cli_servers import Os, _wait_hosts_up, up

__all__ = ["up"]  # the fixture, used by name below


def _image_and_flavor(cli: Os) -> None:
    disk = cli.home / "disk.raw"
    disk.write_bytes(os.urandom(4096))
    cli.json("orrery", "image", "create", "--file", str(disk), "--disk-format", "raw",
             "--container-format", "bare", "net-img")
    cli.json("orrery", "flavor", "create", "--ram", "64", "--disk", "1", "--vcpus", "1",
             "net.tiny")


def _sdk_create_server_waits_for_an_address(cli: Os) -> None:
    """The cloud layer's create_server(wait=True, network=…) returns once the server is
    ACTIVE with an address (it deletes a server that turns ACTIVE without one)."""
    config = openstack.config.OpenStackConfig(config_files=[str(cli.clouds)])
    conn = openstack.connection.Connection(config=config.get_one(cloud="orrery"))
    try:
        server = conn.create_server("sdk-vm", image="net-img", flavor="net.tiny",
                                    network="net1", wait=True, timeout=60)
        assert server.status == "ACTIVE"
        address = server.private_v4 or server.accessIPv4
        assert address and address.startswith("10.20.0."), server.addresses
        assert conn.delete_server(server.id, wait=True, timeout=60) is True
    finally:
        conn.close()


def test_servers_on_a_tenant_network_through_the_cli_and_the_sdk(
        up: str, tmp_path: Path) -> None:
    """network/subnet create, `server create --network net1 --wait`, `server show` with the
    port's address, `port list --server` ACTIVE and bound to the server's host, the SDK's
    create_server(wait=True, network=…), then server, port, subnet, network delete."""
    assert OPENSTACK.exists(), "python-openstackclient must be installed (the e2e extra)"
    home = tmp_path / "home"
    home.mkdir()
    cli = Os(up, home)
    _wait_hosts_up(cli, {"host-1", "host-2"})
    _image_and_flavor(cli)
    net = cli.json("orrery", "network", "create", "net1")
    cli.json("orrery", "subnet", "create", "--network", "net1", "--subnet-range",
             "10.20.0.0/24", "sub1")

    made = cli.json("orrery", "server", "create", "--network", "net1", "--flavor",
                    "net.tiny", "--image", "net-img", "--wait", "vm1")
    assert made["status"] == "ACTIVE", made
    (port,) = cli.json("orrery", "port", "list", "--server", "vm1", "--long")
    address = port["Fixed IP Addresses"][0]["ip_address"]
    assert address.startswith("10.20.0.")
    shown = cli.json("orrery", "server", "show", "vm1")
    assert shown["addresses"] == {"net1": [address]}, shown["addresses"]
    port_shown = cli.json("orrery", "port", "show", port["ID"])
    assert port_shown["status"] == "ACTIVE"
    assert port_shown["binding_host_id"] == shown["OS-EXT-SRV-ATTR:host"]
    assert port_shown["device_id"] == made["id"]

    _sdk_create_server_waits_for_an_address(cli)

    extra = cli.json("orrery", "port", "create", "--network", "net1", "spare")
    cli.ok("orrery", "server", "delete", "--wait", "vm1")
    remaining = {p["ID"] for p in cli.json("orrery", "port", "list", "--network", net["id"],
                                           "--long")
                 if p["Device Owner"] != "network:dhcp"}
    assert remaining == {extra["id"]}  # the server's port went with it, the spare stays
    cli.ok("orrery", "port", "delete", "spare")
    cli.ok("orrery", "subnet", "delete", "sub1")
    cli.ok("orrery", "network", "delete", "net1")
    assert cli.json("orrery", "network", "list") == []
