"""The port kind's binding decisions, pure: a port is taken by one device at a time
(reserve, bind), and given back only by the device that has it (unbind)."""

from __future__ import annotations

import datetime as dt

import pytest

from actors.kind import Context, Events, Rejected
from actors.port import (
    BindPort,
    CreatePort,
    DeletePort,
    PortBound,
    PortDeleted,
    PortState,
    PortUnbound,
    PortUpdated,
    ReservePort,
    UnbindPort,
    decide,
    evolve,
)

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def ctx(n: int = 0) -> Context:
    return Context(actor_id="p1", message_id=f"m{n}", correlation_id="c", now=NOW)


def run(state: PortState, *commands: object) -> tuple[PortState, Events]:
    events: Events = []
    for i, command in enumerate(commands):
        events = decide(state, command, ctx(i))  # type: ignore[arg-type]
        for event in events:
            state = evolve(state, event)
    return state, events


def created() -> PortState:
    state, _ = run(PortState(), CreatePort(network_id="n", project_id="p",
                                           mac_address="fa:16:3e:00:00:01"))
    return state


def test_a_reserved_port_is_refused_to_another_server_and_kept_for_its_own() -> None:
    """Reserving records the device; the same device again records nothing; another
    device is 409 PortInUse, for a reserve and for a bind alike."""
    state, events = run(created(), ReservePort(device_id="s1"))
    assert [type(e) for e in events] == [PortUpdated] and state.device_id == "s1"
    assert run(state, ReservePort(device_id="s1"))[1] == []
    for command in (ReservePort(device_id="s2"), BindPort(host_id="h", device_id="s2")):
        with pytest.raises(Rejected) as refused:
            decide(state, command, ctx())
        assert refused.value.code == "PortInUse"
    state, events = run(state, BindPort(host_id="h1", device_id="s1"))
    assert [type(e) for e in events] == [PortBound] and state.host_id == "h1"


def test_unbind_from_another_device_leaves_the_port_alone() -> None:
    """A server that lost the port (or is long gone) unbinding it changes nothing; the
    device that has it unbinds it (the event names the host it was bound to)."""
    state, _ = run(created(), ReservePort(device_id="s1"),
                   BindPort(host_id="h1", device_id="s1"))
    assert run(state, UnbindPort(device_id="s2"))[1] == []
    state, events = run(state, UnbindPort(device_id="s1"))
    assert events == [PortUnbound(port_id="p1", host_id="h1", at=NOW)]
    assert (state.device_id, state.host_id) == ("", "")


def test_a_deleted_bound_port_names_its_host() -> None:
    """So that the host can unplug it at once."""
    state, _ = run(created(), BindPort(host_id="h1", device_id="s1"))
    _, events = run(state, DeletePort())
    assert events == [PortDeleted(port_id="p1", network_id="n", host_id="h1", at=NOW)]
