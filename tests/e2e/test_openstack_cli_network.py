"""The real `openstack` CLI against Orrery's Networking v2.0 API (a whole embedded cloud)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bus.routing import Names
from tests.e2e.test_openstack_cli_identity import OPENSTACK, Cli
from tests.support.cloud import ADMIN_PASSWORD, running_cloud


@pytest.fixture
async def cli(tmp_path: Path) -> AsyncIterator[Cli]:
    assert OPENSTACK.exists(), "python-openstackclient must be installed (the e2e extra)"
    async with running_cloud("embedded", tmp_path, names=Names(prefix="e2e-net", shards=2),
                             hosts=0) as cloud:
        cli = Cli(url=cloud.url, home=tmp_path)
        cli.cloud("orrery", "admin", ADMIN_PASSWORD, "admin")
        yield cli


async def test_openstack_cli_network_subnet_port_lifecycle(cli: Cli) -> None:
    """network create, subnet create --network --subnet-range, port create, port list,
    port delete, subnet delete, network delete; and an admin's vxlan provider network."""
    net = await cli.json("orrery", "network", "create", "net1")
    assert net["name"] == "net1" and net["status"] == "ACTIVE"
    sub = await cli.json("orrery", "subnet", "create", "--network", "net1",
                         "--subnet-range", "10.0.0.0/24", "sub1")
    assert sub["cidr"] == "10.0.0.0/24" and sub["gateway_ip"] == "10.0.0.1"
    port = await cli.json("orrery", "port", "create", "--network", "net1", "port1")
    assert port["status"] == "DOWN"
    assert port["fixed_ips"][0]["ip_address"].startswith("10.0.0.")
    ports = await cli.json("orrery", "port", "list", "--network", "net1")
    assert "port1" in {p["Name"] for p in ports} and len(ports) == 2  # and the DHCP port
    code, _, err = await cli.run("orrery", "network", "delete", "net1")
    assert code != 0 and "in use" in err.lower()
    for args in (("port", "delete", "port1"), ("subnet", "delete", "sub1"),
                 ("network", "delete", "net1")):
        code, _, err = await cli.run("orrery", *args)
        assert code == 0, f"{args}: {err}"
    assert await cli.json("orrery", "network", "list") == []
    vx = await cli.json("orrery", "network", "create", "--provider-network-type", "vxlan",
                        "--provider-segment", "77", "overlay")
    assert vx["provider:network_type"] == "vxlan" and vx["provider:segmentation_id"] == 77
    assert vx["mtu"] == 1450
