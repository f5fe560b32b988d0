"""IPAM as pure functions: free sets, subnet plans, the subnet pool, MACs, holds."""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec
import pytest

from actors import holds, ipam
from actors.holds import ReleaseHolds
from actors.kind import ActorKind, Context, Rejected
from actors.network import AddPort, AddSubnet, CreateNetwork, make_network_kind
from actors.subnet import Allocate, CreateSubnet, SubnetState, make_subnet_kind
from schemas import Reply, TimerFired

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
SUBNET = make_subnet_kind(lease=60)
NETWORK = make_network_kind(lease=60)


def ctx(actor_id: str, n: int = 0, now: dt.datetime = T0) -> Context:
    return Context(actor_id=actor_id, message_id=f"m{n}", correlation_id="req", now=now)


def run(kind: ActorKind[Any], state: Any, command: msgspec.Struct, c: Context) -> Any:
    for event in kind.decide(state, command, c):
        state = kind.evolve(state, event)
    return state


def subnet(cidr: str = "10.0.0.0/29", pools: ipam.Ranges | None = None) -> SubnetState:
    gw, ranges = ipam.plan_subnet(cidr, None, None, default_gateway=True)
    command = CreateSubnet(network_id="n1", project_id="p", cidr=cidr, gateway_ip=gw,
                           pools=pools or ranges)
    return run(SUBNET, SUBNET.initial("s1"), command, ctx("s1"))  # type: ignore[no-any-return]


def test_free_set_draws_lowest_and_merges_what_comes_back() -> None:
    """draw takes the lowest value; take splits a range; give merges neighbours."""
    free = [[2, 6]]
    value, free = ipam.draw(free) or (0, [])
    assert value == 2 and free == [[3, 6]]
    free = ipam.take(free, 5)
    assert free == [[3, 4], [6, 6]]
    assert ipam.give(ipam.give(free, 5), 2) == [[2, 6]]
    assert ipam.draw([]) is None


def test_plan_defaults_and_refusals() -> None:
    """Default gateway is the first host and the pool the rest; gateway null keeps every
    host in the pool; bad CIDR, pool outside the CIDR and gateway in a pool refused."""
    assert ipam.plan_subnet("10.0.0.0/24", None, None, default_gateway=True) == \
        ("10.0.0.1", [[ipam.parse_ip("10.0.0.2"), ipam.parse_ip("10.0.0.254")]])
    gw, pools = ipam.plan_subnet("10.0.0.0/24", None, None, default_gateway=False)
    assert gw is None and ipam.size(pools) == 254
    for cidr in ("10.0.0.1/24", "10.0.0.0", "300.0.0.0/8", "fe80::/64"):
        with pytest.raises(ipam.PlanError):
            ipam.plan_subnet(cidr, None, None, default_gateway=True)
    with pytest.raises(ipam.PlanError, match="spans beyond"):
        ipam.plan_subnet("10.0.0.0/24", None, [("10.0.1.1", "10.0.1.5")],
                         default_gateway=True)
    with pytest.raises(ipam.PlanError, match="conflicts with allocation pool"):
        ipam.plan_subnet("10.0.0.0/24", "10.0.0.3", [("10.0.0.2", "10.0.0.9")],
                         default_gateway=True)


def test_pool_drains_without_repeats_then_refuses() -> None:
    """A /29 has 5 addresses after the gateway: each handed out once, then 409
    IpAddressGenerationFailure; a released address comes back."""
    state = subnet()
    seen = []
    for n in range(5):
        state = run(SUBNET, state, Allocate(port_id=f"p{n}"), ctx("s1", n + 1))
        seen.append(state.last)
    assert seen == ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"]
    with pytest.raises(Rejected) as refused:
        SUBNET.decide(state, Allocate(port_id="p9"), ctx("s1", 9))
    assert refused.value.code == "IpAddressGenerationFailure"
    state = run(SUBNET, state, ReleaseHolds(holder="p2"), ctx("s1", 10))
    state = run(SUBNET, state, Allocate(port_id="p9"), ctx("s1", 11))
    assert state.last == "10.0.0.4"


def test_explicit_addresses() -> None:
    """A taken address 409 IpAddressAlreadyAllocated; outside the subnet 400
    InvalidIpForSubnet; an explicit one is never drawn again."""
    state = run(SUBNET, subnet(), Allocate(port_id="a", ip_address="10.0.0.2"), ctx("s1", 1))
    for ip, code in (("10.0.0.2", "IpAddressAlreadyAllocated"),
                     ("10.0.1.2", "InvalidIpForSubnet"), ("10.0.0.7", "InvalidIpForSubnet")):
        with pytest.raises(Rejected) as refused:
            SUBNET.decide(state, Allocate(port_id="b", ip_address=ip), ctx("s1", 2))
        assert refused.value.code == code
    state = run(SUBNET, state, Allocate(port_id="b"), ctx("s1", 3))
    assert state.last == "10.0.0.3"


def test_pool_is_the_fold_of_its_events() -> None:
    """Replaying a subnet's events gives the same free set and holds (rebuildable)."""
    state = subnet()
    events: list[msgspec.Struct] = []
    for n, command in enumerate([Allocate(port_id="a"), Allocate(port_id="b"),
                                 ReleaseHolds(holder="a"), Allocate(port_id="c")]):
        decided = SUBNET.decide(state, command, ctx("s1", n + 1))
        events += decided
        for e in decided:
            state = SUBNET.evolve(state, e)
    replay = subnet()
    for e in events:
        replay = SUBNET.evolve(replay, e)
    assert replay.free == state.free and replay.ledger.holds.keys() == {"10.0.0.2", "10.0.0.3"}


def test_unconfirmed_hold_is_asked_about_and_released_when_free() -> None:
    """A hold the port never confirms: after the lease the sweep asks the port; 'free'
    releases the address, 'held' confirms it."""
    state = run(SUBNET, subnet(), Allocate(port_id="a"), ctx("s1", 1))
    state = run(SUBNET, state, Allocate(port_id="b"), ctx("s1", 2))
    assert state.ledger.timer is not None
    later = ctx("s1", 3, now=T0 + dt.timedelta(seconds=61))
    assert SUBNET.on_timer is not None and SUBNET.on_reply is not None
    fired = TimerFired(timer_id=state.ledger.timer, name=holds.SWEEP_TIMER)
    events = SUBNET.on_timer(state, fired, later)
    checking = [e for e in events if isinstance(e, holds.HoldsChecking)]
    assert [c.holder for c in checking[0].checks] == ["a", "b"]
    for e in events:
        state = SUBNET.evolve(state, e)
    asks = SUBNET.effects(state, events, later) if SUBNET.effects else []
    answers = {"a": holds.FREE, "b": holds.HELD}
    for tell in asks:
        holder = tell.actor_id  # type: ignore[attr-defined]
        reply = Reply(command_id=tell.request_id, ok=True,  # type: ignore[attr-defined]
                      result=answers[holder])
        for e in SUBNET.on_reply(state, reply, later):
            state = SUBNET.evolve(state, e)
    assert list(state.ledger.holds) == ["10.0.0.3"]
    assert state.ledger.holds["10.0.0.3"].confirmed
    assert ipam.contains(state.free, ipam.parse_ip("10.0.0.2"))


def test_network_macs_and_overlaps() -> None:
    """A given MAC twice is 409 MacAddressInUse; derived MACs are under fa:16:3e and
    distinct; an overlapping CIDR is refused."""
    state = run(NETWORK, NETWORK.initial("n1"), CreateNetwork(
        project_id="p", network_type="vxlan", mtu=1450), ctx("n1"))
    state = run(NETWORK, state, AddPort(port_id="a", mac_address="fa:16:3e:00:00:01"),
                ctx("n1", 1))
    with pytest.raises(Rejected) as refused:
        NETWORK.decide(state, AddPort(port_id="b", mac_address="fa:16:3e:00:00:01"),
                       ctx("n1", 2))
    assert refused.value.code == "MacAddressInUse"
    macs = set()
    for n in range(20):
        state = run(NETWORK, state, AddPort(port_id=f"q{n}"), ctx("n1", 10 + n))
        macs |= {k for k in state.ledger.holds if k.startswith("mac:fa:16:3e")}
    assert len(macs) == 21
    state = run(NETWORK, state, AddSubnet(subnet_id="s1", cidr="10.0.0.0/24"), ctx("n1", 50))
    with pytest.raises(Rejected, match="overlaps with another subnet"):
        NETWORK.decide(state, AddSubnet(subnet_id="s2", cidr="10.0.0.0/16"), ctx("n1", 51))
