"""The ``net_carriers`` projection (actors.net_carriers) on every backend: which hosts
carry which network, from port events alone, without reading a network's ports."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

import pytest

from actors.net_carriers import CarriersProjection, carried_by, carriers_of
from actors.port import (
    PORT_EVENTS,
    PortBound,
    PortCreated,
    PortDeleted,
    PortUnbound,
    PortUpdated,
)
from store.projections import ProjectionHost, ProjectionRunner
from store.protocol import ANY_VERSION
from store.registry import EventTypes
from tests.contract.conftest import open_store
from tests.support.events import new_event

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


@pytest.fixture
async def store(backend: tuple[str, str]) -> AsyncIterator[ProjectionHost]:
    opened = await open_store(backend, EventTypes(PORT_EVENTS))
    try:
        yield opened
    finally:
        await opened.close()


def created(port: str, net: str, owner: str = "compute:nova") -> PortCreated:
    return PortCreated(port_id=port, network_id=net, project_id="p", mac_address="m",
                       fixed_ips=[], name="", description="", admin_state_up=True,
                       device_id="", device_owner=owner, at=T0)


def bound(port: str, host: str, owner: str = "compute:nova") -> PortBound:
    return PortBound(port_id=port, host_id=host, device_id="d", device_owner=owner, at=T0)


PortEvent = PortCreated | PortUpdated | PortBound | PortUnbound | PortDeleted


async def fold(store: ProjectionHost, *events: PortEvent) -> None:
    for event in events:
        await store.append(f"port:{event.port_id}", [new_event(event)], ANY_VERSION)
    async with ProjectionRunner(store, CarriersProjection(), batch=3) as runner:
        assert await runner.wait_until(await store.head(), 10.0)


async def test_hosts_carry_a_network_while_a_guest_port_of_it_is_bound_there(
        store: ProjectionHost) -> None:
    """Two ports bound to h1 and one to h2 make both carriers; the DHCP port bound to h3
    makes h3 none. Unbinding one of h1's keeps h1, deleting the other drops it; a port
    moved to h3 makes h3 a carrier and leaves h2; a port that becomes the network's own
    stops counting."""
    await fold(store, created("a", "n1"), created("b", "n1"), created("c", "n1"),
               created("dhcp", "n1", "network:dhcp"), created("x", "n2"),
               bound("a", "h1"), bound("b", "h1"), bound("c", "h2"),
               bound("dhcp", "h3", "network:dhcp"), bound("x", "h2"))
    assert await carriers_of(store, ["n1", "n2", "n3"]) == {
        "n1": {"h1", "h2"}, "n2": {"h2"}, "n3": frozenset()}
    assert await carried_by(store, ["h2"]) == {"n1", "n2"}
    await fold(store, PortUnbound(port_id="a", at=T0, host_id="h1"))
    assert (await carriers_of(store, ["n1"]))["n1"] == {"h1", "h2"}
    await fold(store, PortDeleted(port_id="b", network_id="n1", at=T0, host_id="h1"),
               bound("c", "h3"))
    assert (await carriers_of(store, ["n1"]))["n1"] == {"h3"}
    await fold(store, PortUpdated(port_id="x", name="", description="", admin_state_up=True,
                                  device_id="d", device_owner="network:router_interface",
                                  fixed_ips=[], at=T0))
    assert await carried_by(store, ["h2"]) == set()
