"""Neutron v2.0 over HTTP, the rest of the surface, on embedded and on PostgreSQL +
RabbitMQ: extensions, security groups and the empty floating IP / router lists, updates
of networks, subnets and ports, list filters and ``fields=``, all-or-nothing bulk
creates, subnet options, shared networks used by another project, and Neutron's error
types, each refusal appending no event."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bus.routing import Names
from gateway.network_docs import EXTENSIONS
from tests.integration.test_networking_api import Api
from tests.support.cloud import running_cloud


@pytest.fixture
async def api(backends: tuple[str, dict[str, Any]], bus_names: Names,
              tmp_path: Path) -> AsyncIterator[Api]:
    which, extra = backends
    async with running_cloud(which, tmp_path, names=bus_names, hosts=0, **extra) as cloud:
        yield await Api(cloud).setup()


async def test_extensions_list_what_is_implemented_and_show_each(api: Api) -> None:
    """The list is exactly the implemented aliases; each shows; an unknown alias is 404."""
    _, body = await api.req("GET", "/extensions", api.member, status=200)
    assert sorted(e["alias"] for e in body["extensions"]) == sorted(a for a, *_ in EXTENSIONS)
    _, one = await api.req("GET", "/extensions/provider", api.member, status=200)
    assert one["extension"]["name"] == "Provider Network"
    _, err = await api.req("GET", "/extensions/qos", api.member, status=404)
    assert err["NeutronError"]["type"] == "HTTPNotFound"


async def test_security_groups_floating_ips_and_routers_answer_cleanly(api: Api) -> None:
    """Each project sees its one default group (show by id, 404 for another id);
    floating IPs and routers are empty lists."""
    _, mine = await api.req("GET", "/security-groups", api.member, status=200)
    _, theirs = await api.req("GET", "/security-groups", api.other, status=200)
    (group,) = mine["security_groups"]
    assert group["name"] == "default" and group["id"] != theirs["security_groups"][0]["id"]
    _, shown = await api.req("GET", f"/security-groups/{group['id']}", api.member,
                             status=200)
    assert shown["security_group"]["id"] == group["id"]
    _, err = await api.req("GET", f"/security-groups/{theirs['security_groups'][0]['id']}",
                           api.member, status=404)
    assert err["NeutronError"]["type"] == "SecurityGroupNotFound"
    _, named = await api.req("GET", "/security-groups?name=other&fields=id", api.member,
                             status=200)
    assert named["security_groups"] == []
    for collection in ("floatingips", "routers"):
        _, body = await api.req("GET", f"/{collection}", api.member, status=200)
        assert body == {collection: []}


async def test_network_update_and_who_may(api: Api) -> None:
    """The owner renames, describes and disables its network (revision grows); sharing
    is admin-only (403 for the owner, no event); an admin shares it."""
    net = await api.network(api.member)
    _, body = await api.req("PUT", f"/networks/{net['id']}", api.member, status=200, json={
        "network": {"name": "renamed", "description": "d", "admin_state_up": False}})
    got = body["network"]
    assert (got["name"], got["description"], got["admin_state_up"]) == ("renamed", "d", False)
    assert got["revision_number"] > net["revision_number"]
    err = await api.error("PUT", f"/networks/{net['id']}", api.member, 403,
                          json={"network": {"shared": True}})
    assert err["type"] == "PolicyNotAuthorized"
    await api.error("PUT", f"/networks/{net['id']}", api.member, 400,
                    json={"network": {"mtu": 1400, "bogus": 1}})
    _, body = await api.req("PUT", f"/networks/{net['id']}", api.admin, status=200,
                            json={"network": {"shared": True}})
    assert body["network"]["shared"] is True


async def test_a_shared_network_serves_other_projects_but_stays_its_owners(
        api: Api) -> None:
    """An admin's shared network: another project lists and shows it, sees its subnet and
    makes ports on it, but may not update or delete it, or add a subnet (403)."""
    net = await api.network(api.admin, shared=True, name="public")
    sub = await api.subnet(api.admin, net["id"], cidr="192.168.50.0/24")
    _, listed = await api.req("GET", "/networks?shared=true", api.other, status=200)
    assert [n["id"] for n in listed["networks"]] == [net["id"]]
    _, subs = await api.req("GET", f"/subnets?network_id={net['id']}", api.other,
                            status=200)
    assert [s["id"] for s in subs["subnets"]] == [sub["id"]]
    port = await api.port(api.other, net["id"])
    assert port["fixed_ips"][0]["subnet_id"] == sub["id"]
    await api.error("PUT", f"/networks/{net['id']}", api.other, 403,
                    json={"network": {"name": "mine"}})
    await api.error("DELETE", f"/networks/{net['id']}", api.other, 403)
    await api.error("POST", "/subnets", api.other, 403, json={"subnet": {
        "network_id": net["id"], "cidr": "192.168.51.0/24", "ip_version": 4}})
    _, mine = await api.req("GET", "/ports", api.other, status=200)
    assert [p["id"] for p in mine["ports"]] == [port["id"]]


async def test_network_list_filters(api: Api) -> None:
    """``id``, ``shared``, ``project_id`` and ``status`` narrow the list (status ACTIVE is
    every network, any other status none); several ids mean any of them."""
    a = await api.network(api.member, name="a")
    b = await api.network(api.member, name="b")
    shared = await api.network(api.admin, name="s", shared=True)

    async def ids(query: str, token: str = api.member) -> list[str]:
        _, body = await api.req("GET", f"/networks?{query}", token, status=200)
        return sorted(n["id"] for n in body["networks"])

    assert await ids(f"id={a['id']}") == [a["id"]]
    assert await ids(f"id={a['id']}&id={b['id']}") == sorted([a["id"], b["id"]])
    assert await ids("shared=true") == [shared["id"]]
    assert await ids("shared=false") == sorted([a["id"], b["id"]])
    assert await ids(f"project_id={a['project_id']}") == sorted([a["id"], b["id"]])
    assert await ids("status=ACTIVE") == sorted([a["id"], b["id"], shared["id"]])
    assert await ids("status=DOWN") == []


async def test_subnet_options_and_update(api: Api) -> None:
    """``gateway_ip: null`` gives no gateway and the whole range as pool; DNS servers and
    host routes are kept and shown; an update changes name, DNS servers and routes, and
    bad or duplicate ones are 400 with nothing written, on create and on update."""
    net = await api.network(api.member)
    routes = [{"destination": "172.16.0.0/16", "nexthop": "10.0.0.254"}]
    sub = await api.subnet(api.member, net["id"], gateway_ip=None,
                           dns_nameservers=["192.0.2.53"], host_routes=routes)
    assert sub["gateway_ip"] is None
    assert sub["allocation_pools"] == [{"start": "10.0.0.1", "end": "10.0.0.254"}]
    assert (sub["dns_nameservers"], sub["host_routes"]) == (["192.0.2.53"], routes)
    new_routes = [{"destination": "0.0.0.0/0", "nexthop": "10.0.0.253"}]
    _, body = await api.req("PUT", f"/subnets/{sub['id']}", api.member, status=200, json={
        "subnet": {"name": "s2", "dns_nameservers": ["192.0.2.1", "192.0.2.2"],
                   "host_routes": new_routes}})
    got = body["subnet"]
    assert (got["name"], got["dns_nameservers"], got["host_routes"]) == (
        "s2", ["192.0.2.1", "192.0.2.2"], new_routes)
    bad: list[dict[str, Any]] = [
        {"dns_nameservers": ["not-an-ip"]},
        {"dns_nameservers": ["192.0.2.1", "192.0.2.1"]},
        {"host_routes": [{"destination": "nowhere", "nexthop": "10.0.0.1"}]},
        {"host_routes": [{"destination": "10.1.0.0/16", "nexthop": "10.0.0.999"}]},
        {"host_routes": [{"destination": "10.1.0.0/16", "nexthop": "10.0.0.9"}] * 2},
    ]
    for fields in bad:
        err = await api.error("PUT", f"/subnets/{sub['id']}", api.member, 400,
                              json={"subnet": fields})
        assert err["message"].startswith("Invalid input for"), err
        await api.error("POST", "/subnets", api.member, 400, json={"subnet": {
            "network_id": net["id"], "cidr": "10.1.0.0/24", "ip_version": 4, **fields}})


async def test_overlapping_subnet_is_neutrons_invalid_input(api: Api) -> None:
    """Neutron answers an overlapping CIDR with type InvalidInput and its message."""
    net = await api.network(api.member)
    await api.subnet(api.member, net["id"], cidr="10.0.0.0/24")
    err = await api.error("POST", "/subnets", api.member, 400, json={"subnet": {
        "network_id": net["id"], "cidr": "10.0.0.0/25", "ip_version": 4}})
    assert err["type"] == "InvalidInput"
    assert err["message"] == (f"Invalid input for operation: Requested subnet with cidr: "
                              f"10.0.0.0/25 for network: {net['id']} overlaps with another "
                              "subnet.")


async def test_port_update_fixed_ips_and_device_id(api: Api) -> None:
    """A port moves to an explicit address (the old one is free again for the next
    port) and gets a device id; an address already taken is 409 with nothing written."""
    net = await api.network(api.member)
    sub = await api.subnet(api.member, net["id"])
    port = await api.port(api.member, net["id"])
    old = port["fixed_ips"][0]["ip_address"]
    _, body = await api.req("PUT", f"/ports/{port['id']}", api.member, status=200, json={
        "port": {"fixed_ips": [{"subnet_id": sub["id"], "ip_address": "10.0.0.100"}],
                 "device_id": "d-1", "device_owner": "compute:nova"}})
    got = body["port"]
    assert got["fixed_ips"] == [{"subnet_id": sub["id"], "ip_address": "10.0.0.100"}]
    assert (got["device_id"], got["device_owner"]) == ("d-1", "compute:nova")
    await api.cloud.settled()
    again = await api.port(api.member, net["id"], fixed_ips=[{"ip_address": old}])
    assert again["fixed_ips"][0]["ip_address"] == old
    err = await api.error("PUT", f"/ports/{again['id']}", api.member, 409, json={
        "port": {"fixed_ips": [{"ip_address": "10.0.0.100"}]}})
    assert err["type"] == "IpAddressAlreadyAllocated"


async def test_a_port_may_take_the_gateway_address_as_in_neutron(api: Api) -> None:
    """Neutron checks a fixed IP against the subnet's range only (not the gateway: a
    service VM may be the gateway), so an explicit gateway address is given."""
    net = await api.network(api.member)
    sub = await api.subnet(api.member, net["id"])
    port = await api.port(api.member, net["id"], fixed_ips=[
        {"subnet_id": sub["id"], "ip_address": sub["gateway_ip"]}])
    assert port["fixed_ips"][0]["ip_address"] == "10.0.0.1"


async def test_port_filters_and_fields(api: Api) -> None:
    """Ports filter by ``device_owner``, ``name`` and ``fixed_ips=subnet_id=…``; subnets
    and ports show only the ``fields=`` asked for, in lists and shows."""
    net = await api.network(api.member)
    one = await api.subnet(api.member, net["id"], cidr="10.0.0.0/24")
    two = await api.subnet(api.member, net["id"], cidr="10.0.1.0/24")
    a = await api.port(api.member, net["id"], name="a",
                       fixed_ips=[{"subnet_id": one["id"]}])
    b = await api.port(api.member, net["id"], name="b", device_owner="compute:nova",
                       fixed_ips=[{"subnet_id": two["id"]}])

    async def ids(query: str) -> list[str]:
        _, body = await api.req("GET", f"/ports?network_id={net['id']}&{query}", api.admin,
                                status=200)
        return sorted(p["id"] for p in body["ports"])

    assert await ids("device_owner=compute:nova") == [b["id"]]
    assert await ids("name=a") == [a["id"]]
    assert await ids(f"fixed_ips=subnet_id={two['id']}&name=b") == [b["id"]]
    assert a["id"] in await ids(f"fixed_ips=subnet_id={one['id']}")
    _, body = await api.req("GET", f"/ports/{a['id']}?fields=id&fields=mac_address",
                            api.member, status=200)
    assert body["port"] == {"id": a["id"], "mac_address": a["mac_address"]}
    _, body = await api.req("GET", f"/subnets?network_id={net['id']}&fields=cidr",
                            api.member, status=200)
    assert sorted(s["cidr"] for s in body["subnets"]) == ["10.0.0.0/24", "10.0.1.0/24"]
    assert all(set(s) == {"cidr"} for s in body["subnets"])
    _, body = await api.req("GET", f"/subnets/{one['id']}?fields=gateway_ip", api.member,
                            status=200)
    assert body["subnet"] == {"gateway_ip": "10.0.0.1"}


async def test_a_bulk_network_create_that_fails_leaves_nothing(api: Api) -> None:
    """Two VLAN networks asking for the same VLAN id: the second is refused (409), and
    the first, already made, is removed with its segment, so the id can be had again."""
    provider = {"provider:network_type": "vlan", "provider:physical_network": "physnet1",
                "provider:segmentation_id": 300}
    _, err = await api.req("POST", "/networks", api.admin, status=409, json={"networks": [
        {"name": "first", **provider}, {"name": "second", **provider}]})
    assert set(err) == {"NeutronError"}
    await api.cloud.settled()
    _, body = await api.req("GET", "/networks", api.admin, status=200)
    assert body["networks"] == []
    again = await api.network(api.admin, **provider)
    assert again["provider:segmentation_id"] == 300
