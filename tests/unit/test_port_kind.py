"""The port kind's binding decisions, pure: a port is taken by one device at a time
(reserve, bind), given back only by the device that has it (unbind), and given back
after a lease when the server it was made or reserved for never came."""

from __future__ import annotations

import datetime as dt

import pytest

from actors.holds import CheckHold, HoldConfirmed, HoldReleased
from actors.instance import InstanceState, NicInfo, answer as instance_answer
from actors.kind import Context, Events, Rejected, Tell
from actors.port import (
    BindPort,
    CreatePort,
    DeletePort,
    FixedIp,
    PortBound,
    PortDecider,
    PortDeleted,
    PortIpReleased,
    PortState,
    PortUnbound,
    PortUpdated,
    ReservePort,
    UnbindPort,
    decide,
    evolve,
)
from schemas import Reply, TimerFired, TimerSet
from schemas.hostnet import NetworkSpec

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


def test_a_port_made_for_a_server_that_never_came_is_deleted_after_its_lease() -> None:
    """Made for s1 (the API died before creating it): after the lease the port asks the
    instance; ``free`` deletes the port and gives its address back; ``held`` keeps it."""
    decider = PortDecider(lease=60)
    state, events = PortState(), decider.decide(PortState(), CreatePort(
        network_id="n", project_id="p", mac_address="fa:16:3e:00:00:01", device_id="s1",
        device_owner="compute:nova", for_server=True,
        fixed_ips=[FixedIp(subnet_id="sub", ip_address="10.0.0.5")]), ctx())
    for event in events:
        state = evolve(state, event)
    assert any(isinstance(e, TimerSet) for e in events)
    later = Context(actor_id="p1", message_id="t", correlation_id="c",
                    now=NOW + dt.timedelta(seconds=61))
    checking = decider.on_timer(state, TimerFired(timer_id="x", name="holds"), later)
    for event in checking:
        state = evolve(state, event)
    (ask,) = decider.effects(state, checking, later)
    assert isinstance(ask, Tell) and (ask.kind, ask.actor_id) == ("instance", "s1")
    assert isinstance(ask.command, CheckHold)
    held = decider.on_reply(state, Reply(command_id=ask.request_id, ok=True,
                                         result="held"), later)
    assert [type(e) for e in held] == [HoldConfirmed]
    free = decider.on_reply(state, Reply(command_id=ask.request_id, ok=True,
                                         result="free"), later)
    assert [type(e) for e in free] == [HoldReleased, PortIpReleased, PortDeleted]


def test_a_bound_port_is_settled_and_a_reserved_one_is_freed_if_unclaimed() -> None:
    """Binding by the server confirms the hold (nothing is asked later); a reserved port
    whose server never came is freed, not deleted: it is the user's."""
    decider = PortDecider(lease=60)

    def run_d(state: PortState, command: object) -> PortState:
        for event in decider.decide(state, command, ctx()):  # type: ignore[arg-type]
            state = evolve(state, event)
        return state

    reserved1 = run_d(created(), ReservePort(device_id="s1"))
    assert reserved1.ledger.timer is not None
    bound = run_d(reserved1, BindPort(host_id="h1", device_id="s1"))
    assert all(h.confirmed for h in bound.ledger.holds.values())
    assert bound.ledger.timer is None  # nothing left to ask about: the timer is cancelled
    reserved = run_d(created(), ReservePort(device_id="s2"))
    later = Context(actor_id="p1", message_id="t", correlation_id="c",
                    now=NOW + dt.timedelta(seconds=61))
    checking = decider.on_timer(reserved, TimerFired(timer_id="x", name="holds"), later)
    for event in checking:
        reserved = evolve(reserved, event)
    (ask,) = decider.effects(reserved, checking, later)
    assert isinstance(ask, Tell)
    free = decider.on_reply(reserved, Reply(command_id=ask.request_id, ok=True,
                                            result="free"), later)
    assert [type(e) for e in free] == [HoldReleased, PortUpdated]
    assert isinstance(free[1], PortUpdated) and free[1].device_id == ""


def test_the_instance_holds_a_port_while_it_exists_with_it() -> None:
    """The instance's answer to a port's ``hold.check``: held only for a live server that
    has the port among its NICs."""
    nic = NicInfo(port_id="p1", network_id="n", network_name="net", mac="fa:16:3e:00:00:01",
                  device="otpp1", network=NetworkSpec(network_id="n", type="vxlan",
                                                      segmentation_id=5))
    ask = CheckHold(owner_kind="port", owner_id="p1", key="server:created")
    live = InstanceState(exists=True, nics=[nic])
    assert instance_answer(live, ask, ctx()) == "held"
    assert instance_answer(InstanceState(), ask, ctx()) == "free"
    assert instance_answer(InstanceState(exists=True, vm_state="deleted", nics=[nic]), ask,
                           ctx()) == "free"
    other = CheckHold(owner_kind="port", owner_id="p2", key="server:created")
    assert instance_answer(live, other, ctx()) == "free"
