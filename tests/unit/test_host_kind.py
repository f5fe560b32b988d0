"""The host kind's pure decide/evolve: capacity, liveness by one durable timer, claims."""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec
import pytest

from actors.codec import KindCodec
from actors.host import (
    AllocationRatios,
    Claim,
    Heartbeat,
    HostClaimed,
    HostDown,
    HostHeartbeat,
    HostInventoryChanged,
    HostRegistered,
    HostReleased,
    HostState,
    HostUp,
    Release,
    ReportCapacity,
    make_host_kind,
)
from actors.kind import ActorKind, Context, Rejected
from schemas import TimerFired, TimerSet
from schemas.envelope import ENCODER
from schemas.hostd import Capacity

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
CAP = Capacity(vcpus=4, ram_mb=8192, disk_gb=100)


class Host:
    """One host actor folded in memory the way the runtime's cell folds it."""

    def __init__(self, kind: ActorKind[HostState] | None = None) -> None:
        self.kind = kind or make_host_kind(down_after=30.0, record_every=10.0)
        self.state: HostState = self.kind.initial("h1")
        self.log: list[msgspec.Struct] = []
        self.n = 0

    def ctx(self, at: float) -> Context:
        self.n += 1
        return Context(actor_id="h1", message_id=f"m{self.n}", correlation_id="c",
                       now=T0 + dt.timedelta(seconds=at))

    def send(self, command: msgspec.Struct, at: float = 0.0) -> list[msgspec.Struct]:
        return self._record(list(self.kind.decide(self.state, command, self.ctx(at))))

    def fire(self, at: float) -> list[msgspec.Struct]:
        """The pending down timer goes off at ``at`` (seconds after T0)."""
        assert self.state.down_timer is not None and self.kind.on_timer is not None
        fired = TimerFired(timer_id=self.state.down_timer, name="down")
        return self._record([*self.kind.on_timer(self.state, fired, self.ctx(at)), fired])

    def _record(self, events: list[msgspec.Struct]) -> list[msgspec.Struct]:
        for event in events:
            self.state = self.kind.evolve(self.state, event)
        self.log += events
        return events

    def types(self, events: list[msgspec.Struct]) -> list[type[Any]]:
        return [type(e) for e in events]


def beat(at: float, capacity: Capacity = CAP) -> Heartbeat:
    return Heartbeat(capacity=capacity, at=T0 + dt.timedelta(seconds=at))


def claim(iid: str, vcpus: int = 1, ram_mb: int = 1024, disk_gb: int = 10) -> Claim:
    return Claim(instance_id=iid, vcpus=vcpus, ram_mb=ram_mb, disk_gb=disk_gb)


@pytest.fixture
def host() -> Host:
    h = Host()
    h.send(ReportCapacity(capacity=CAP, at=T0))
    return h


def test_first_report_registers_the_host_up_and_arms_the_down_timer() -> None:
    """host.registered carries capacity and ratios; a timer is due down_after later."""
    h = Host()
    registered, timer = h.send(ReportCapacity(capacity=CAP, at=T0), at=1)
    assert registered == HostRegistered(capacity=CAP, ratios=AllocationRatios(),
                                        at=T0 + dt.timedelta(seconds=1))
    assert isinstance(timer, TimerSet) and timer.name == "down"
    assert timer.fire_at == T0 + dt.timedelta(seconds=31)
    assert h.state.up and h.state.capacity == CAP


def test_unchanged_heartbeats_are_recorded_at_most_once_per_record_interval(host: Host) -> None:
    """Beats within record_every of the last recorded one append nothing."""
    assert host.send(beat(5), at=5) == []
    assert host.send(beat(9), at=9.9) == []
    (recorded,) = host.send(beat(10), at=10)
    assert isinstance(recorded, HostHeartbeat)
    assert host.state.last_heartbeat == T0 + dt.timedelta(seconds=10)
    assert host.send(beat(15), at=15) == []


def test_a_capacity_change_is_recorded_with_the_beat(host: Host) -> None:
    """A beat reporting a different capacity records host.inventory_changed at once."""
    bigger = Capacity(vcpus=8, ram_mb=8192, disk_gb=100)
    events = host.send(beat(2, bigger), at=2)
    assert host.types(events) == [HostInventoryChanged, HostHeartbeat]
    assert host.state.capacity == bigger


def test_timer_rearms_while_beats_are_recorded_and_downs_a_silent_host(host: Host) -> None:
    """At the deadline a host with a later recorded beat gets a new timer; one silent for
    down_after since its last recorded beat goes down."""
    host.send(beat(20), at=20)
    (rearm, fired) = host.fire(at=30)
    assert isinstance(rearm, TimerSet) and isinstance(fired, TimerFired)
    assert rearm.fire_at == T0 + dt.timedelta(seconds=50)
    (down, _) = host.fire(at=50)
    assert down == HostDown(at=T0 + dt.timedelta(seconds=50),
                            last_heartbeat=T0 + dt.timedelta(seconds=20))
    assert not host.state.up and host.state.down_timer is None


def test_a_beat_after_down_brings_the_host_up_with_a_new_timer(host: Host) -> None:
    """host.up, and liveness is watched again from that beat."""
    host.fire(at=30)
    up, timer = host.send(beat(100), at=100)
    assert up == HostUp(at=T0 + dt.timedelta(seconds=100))
    assert isinstance(timer, TimerSet) and timer.fire_at == T0 + dt.timedelta(seconds=130)
    assert host.state.up


def test_claim_that_fits_is_recorded_and_counted_in_usage(host: Host) -> None:
    """host.claimed; usage is the sum of claims."""
    (event,) = host.send(claim("i1", vcpus=2, ram_mb=2048, disk_gb=20))
    assert event == HostClaimed(instance_id="i1", vcpus=2, ram_mb=2048, disk_gb=20)
    host.send(claim("i2", vcpus=1, ram_mb=1024, disk_gb=5))
    assert (host.state.used.vcpus, host.state.used.ram_mb, host.state.used.disk_gb) == (
        3, 3072, 25)


def test_vcpus_are_overcommitted_by_the_cpu_ratio_and_ram_is_not(host: Host) -> None:
    """With cpu 4.0 a 4-core host takes 16 vCPUs; RAM stops at its physical size."""
    host.send(claim("big", vcpus=16, ram_mb=1024, disk_gb=1))
    with pytest.raises(Rejected) as cpu:
        host.send(claim("more", vcpus=1, ram_mb=1, disk_gb=1))
    assert cpu.value.code == "conflict" and "vCPUs" in cpu.value.message
    roomy = Host()
    roomy.send(ReportCapacity(capacity=CAP, at=T0))
    with pytest.raises(Rejected) as ram:
        roomy.send(claim("fat", vcpus=1, ram_mb=8193, disk_gb=1))
    assert "RAM" in ram.value.message


def test_ratios_are_configurable_in_the_kind_factory() -> None:
    """A RAM ratio of 1.5 lets claims reach 1.5 times the physical memory."""
    h = Host(make_host_kind(ratios=AllocationRatios(cpu=1.0, ram=1.5, disk=1.0)))
    h.send(ReportCapacity(capacity=CAP, at=T0))
    h.send(claim("a", vcpus=1, ram_mb=12288, disk_gb=1))
    with pytest.raises(Rejected):
        h.send(claim("b", vcpus=1, ram_mb=1, disk_gb=1))


def test_repeated_claim_for_the_same_instance_is_idempotent(host: Host) -> None:
    """The same claim again is accepted with no new event; a different one is a conflict."""
    host.send(claim("i1"))
    assert host.send(claim("i1")) == []
    with pytest.raises(Rejected) as exc:
        host.send(claim("i1", vcpus=2))
    assert exc.value.code == "conflict"
    assert host.state.used.vcpus == 1


def test_claims_on_a_down_or_unknown_host_are_refused(host: Host) -> None:
    """A down host takes no claim, nor one that never reported."""
    host.fire(at=30)
    with pytest.raises(Rejected, match="down"):
        host.send(claim("i1"))
    with pytest.raises(Rejected, match="never reported"):
        Host().send(claim("i1"))


def test_negative_claim_is_a_bad_request(host: Host) -> None:
    """Amounts below zero are refused as bad input."""
    with pytest.raises(Rejected) as exc:
        host.send(claim("i1", ram_mb=-1))
    assert exc.value.code == "bad_request"


def test_release_returns_the_claimed_room_and_unknown_release_records_nothing(
    host: Host,
) -> None:
    """host.released carries what was claimed; releasing again or an unknown id is a no-op."""
    host.send(claim("i1", vcpus=16, ram_mb=8192, disk_gb=100))
    (released,) = host.send(Release(instance_id="i1"))
    assert released == HostReleased(instance_id="i1", vcpus=16, ram_mb=8192, disk_gb=100)
    assert host.send(Release(instance_id="i1")) == []
    assert host.state.used.vcpus == 0 and host.state.claims == {}
    host.send(claim("i2", vcpus=16, ram_mb=8192, disk_gb=100))


def test_state_is_the_fold_of_the_log_and_survives_a_snapshot(host: Host) -> None:
    """Refolding the recorded events, or decoding an encoded state, gives the same state."""
    host.send(claim("i1"))
    host.send(claim("i2", vcpus=3))
    host.send(Release(instance_id="i1"))
    host.fire(at=30)
    refolded = host.kind.initial("h1")
    for event in host.log:
        refolded = host.kind.evolve(refolded, event)
    assert refolded == host.state
    codec = KindCodec(host.kind)
    assert codec.state.decode(ENCODER.encode(host.state)) == host.state
    decoded = [codec.events.decode(ENCODER.encode(e)) for e in host.log]
    assert decoded == host.log


def test_factory_refuses_a_record_interval_not_below_down_after() -> None:
    """record_every must leave room for beats to arrive before the deadline."""
    with pytest.raises(ValueError):
        make_host_kind(down_after=10.0, record_every=10.0)
