"""The instance kind's decisions, pure: the boot saga, actions, deadlines and delete."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import msgspec
import pytest

from actors.instance import (
    ACTIVE,
    BUILDING,
    DELETED,
    ERROR,
    STOPPED,
    CreateInstance,
    Deadlines,
    DeleteInstance,
    FlavorInfo,
    ImageInfo,
    InstanceActionDone,
    InstanceActionFailed,
    InstanceClaimRefused,
    InstanceDeleted,
    InstanceDeleting,
    InstanceFailed,
    InstanceImageReady,
    InstancePowerSynced,
    InstanceState,
    NicInfo,
    Place,
    RebootInstance,
    StartInstance,
    StopInstance,
    make_instance_kind,
    status,
)
from actors.kind import Context, Rejected, Tell, TellHost
from schemas import Reply, TimerCancelled, TimerFired, TimerSet
from schemas.hostd import DestroyDomain, DomainState, InstanceObserved, SpawnDomain, StopDomain
from schemas.hostnet import NetworkSpec, port_device

T0 = dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.UTC)
IID = "2b7a6d55-0a4b-4f0e-9d43-0f5a3c9a1e11"
KIND = make_instance_kind(Deadlines(scheduling=10, spawning=20, powering_off=30))


class Saga:
    """One instance, decided and folded as the runtime would, with a settable clock."""

    def __init__(self) -> None:
        self.state: InstanceState = KIND.initial(IID)
        self.now = T0
        self.n = 0
        self.effects: list[object] = []
        self.timers: dict[str, dt.datetime] = {}

    def ctx(self) -> Context:
        self.n += 1
        return Context(actor_id=IID, message_id=f"m{self.n}", correlation_id="req-1",
                       now=self.now)

    def _apply(self, events: Sequence[msgspec.Struct], ctx: Context) -> list[msgspec.Struct]:
        for e in events:
            self.state = KIND.evolve(self.state, e)
            if isinstance(e, TimerSet):
                self.timers[e.timer_id] = e.fire_at
            elif isinstance(e, TimerFired | TimerCancelled):
                self.timers.pop(e.timer_id, None)
        assert KIND.effects is not None
        self.effects = list(KIND.effects(self.state, events, ctx)) if events else []
        return list(events)

    def send(self, command: msgspec.Struct) -> list[msgspec.Struct]:
        ctx = self.ctx()
        return self._apply(KIND.decide(self.state, command, ctx), ctx)

    def answer(self, reply: Reply) -> list[msgspec.Struct]:
        ctx = self.ctx()
        assert KIND.on_reply is not None
        return self._apply(KIND.on_reply(self.state, reply, ctx), ctx)

    def fire_due(self) -> list[msgspec.Struct]:
        """Fire the pending deadline timer (as the timer service would, when due)."""
        (timer_id, at), = self.timers.items()
        assert at <= self.now, "timer not due yet"
        ctx = self.ctx()
        assert KIND.on_timer is not None
        fired = TimerFired(timer_id=timer_id, name="deadline")
        return self._apply([*KIND.on_timer(self.state, fired, ctx), fired], ctx)

    def types(self, events: Sequence[msgspec.Struct]) -> list[str]:
        return [type(e).__struct_config__.tag for e in events]  # type: ignore[misc]

    # the saga's usual steps

    def create(self, sha512: str = "ab" * 64) -> Place:
        self.send(CreateInstance(
            name="vm1", project_id="p1", user_id="u1",
            flavor=FlavorInfo(id="1", name="m1.tiny", vcpus=1, ram=512, disk=1),
            image=ImageInfo(id="img-1", size=1024, sha512=sha512, disk_format="raw")))
        (place,) = self.effects
        assert isinstance(place, Place)
        return place

    def placed(self, place: Place, host: str = "h1") -> TellHost:
        self.answer(Reply(command_id=f"{place.request}@{host}", ok=True))
        (spawn,) = self.effects
        assert isinstance(spawn, TellHost)
        return spawn

    def boot(self) -> TellHost:
        spawn = self.placed(self.create())
        self.answer(Reply(command_id=spawn.request_id, ok=True, result="running"))
        assert self.state.vm_state == ACTIVE
        return spawn


def test_boot_goes_through_every_step_with_one_timer() -> None:
    saga = Saga()
    place = saga.create()
    assert saga.state.vm_state == BUILDING and saga.state.task_state == "scheduling"
    assert (place.vcpus, place.ram_mb, place.disk_gb, place.exclude) == (1, 512, 1, ())
    assert len(saga.timers) == 1
    spawn = saga.placed(place)
    assert spawn.host == "h1" and isinstance(spawn.command, SpawnDomain)
    assert spawn.command.image is not None and spawn.command.image.disk_format == "raw"
    assert saga.state.task_state == "spawning" and len(saga.timers) == 1
    ready = saga.answer(Reply(command_id=spawn.request_id, ok=True, partial=True,
                              result="image_ready"))
    assert saga.types(ready) == ["instance.image_ready"]
    done = saga.answer(Reply(command_id=spawn.request_id, ok=True, result="running"))
    assert saga.types(done) == ["instance.spawned", "timer.cancelled"]
    assert status(saga.state.vm_state, saga.state.task_state) == "ACTIVE"
    assert saga.state.host == "h1" and saga.state.power_state == 1 and not saga.timers


def test_a_host_with_the_image_cached_answers_once_and_both_steps_are_recorded() -> None:
    """No interim answer (the host had the image): the final one records the image step
    and the spawn together, in order; an image-less boot records no image step."""
    saga = Saga()
    spawn = saga.placed(saga.create())
    done = saga.answer(Reply(command_id=spawn.request_id, ok=True, result="running"))
    assert saga.types(done) == ["instance.image_ready", "instance.spawned", "timer.cancelled"]
    ready = done[0]
    assert isinstance(ready, InstanceImageReady) and ready.host == "h1"
    assert saga.state.image_ready and status(saga.state.vm_state, None) == "ACTIVE"

    bare = Saga()
    spawn = bare.placed(bare.create(sha512=""))
    assert isinstance(spawn.command, SpawnDomain) and spawn.command.image is None
    done = bare.answer(Reply(command_id=spawn.request_id, ok=True, result="running"))
    assert bare.types(done) == ["instance.spawned", "timer.cancelled"]


def test_a_stale_or_duplicate_answer_changes_nothing() -> None:
    saga = Saga()
    spawn = saga.placed(saga.create())
    assert saga.answer(Reply(command_id="someone-else", ok=True, result="running")) == []
    saga.answer(Reply(command_id=spawn.request_id, ok=True, result="running"))
    assert saga.answer(Reply(command_id=spawn.request_id, ok=True, result="running")) == []


def test_a_refused_claim_places_again_without_that_host_then_gives_up() -> None:
    saga = Saga()
    place = saga.create()
    for n, host in enumerate(["h1", "h2"]):
        events = saga.answer(Reply(command_id=f"{place.request}@{host}", ok=False,
                                   error_type="conflict", error="not enough RAM"))
        assert isinstance(events[0], InstanceClaimRefused)
        (place,) = saga.effects
        assert isinstance(place, Place) and len(place.exclude) == n + 1
    events = saga.answer(Reply(command_id=f"{place.request}@h3", ok=False,
                               error_type="conflict", error="not enough RAM"))
    assert isinstance(events[0], InstanceFailed)
    assert saga.state.vm_state == ERROR and saga.state.fault is not None
    assert "No valid host" in saga.state.fault.message and "h1, h2, h3" in saga.state.fault.message


def test_no_valid_host_is_an_error_with_the_schedulers_reasons() -> None:
    saga = Saga()
    place = saga.create()
    saga.answer(Reply(command_id=f"{place.request}@", ok=False, error_type="no_valid_host",
                      error="No valid host was found. 2 host(s) down"))
    assert saga.state.vm_state == ERROR and saga.state.fault is not None
    assert saga.state.fault.message == "No valid host was found. 2 host(s) down"
    assert not saga.timers and saga.effects == []


def test_a_failed_spawn_errors_releases_and_cleans_the_host() -> None:
    saga = Saga()
    spawn = saga.placed(saga.create())
    events = saga.answer(Reply(command_id=spawn.request_id, ok=False,
                               error_type="hypervisor_error", error="boom"))
    failed = events[0]
    assert isinstance(failed, InstanceFailed) and failed.host == "h1"  # host releases
    assert "boom" in failed.fault.message and saga.state.host is None
    (cleanup,) = saga.effects
    assert isinstance(cleanup, TellHost) and isinstance(cleanup.command, DestroyDomain)


@pytest.mark.parametrize("step", ["scheduling", "spawning"])
def test_every_build_step_has_a_deadline(step: str) -> None:
    saga = Saga()
    place = saga.create()
    if step == "spawning":
        saga.now += dt.timedelta(seconds=5)
        saga.placed(place)
        saga.now = T0 + dt.timedelta(seconds=10)  # the first timer fires early: re-armed
        events = saga.fire_due()
        assert saga.types(events) == ["timer.set", "timer.fired"]
        assert saga.state.vm_state == BUILDING
        saga.now = T0 + dt.timedelta(seconds=25)
    else:
        saga.now = T0 + dt.timedelta(seconds=10)
    events = saga.fire_due()  # the first deadline sends the step's request once more
    assert saga.types(events)[0] == "instance.retried" and saga.state.vm_state == BUILDING
    (again,) = saga.effects
    if step == "spawning":
        assert isinstance(again, TellHost) and isinstance(again.command, SpawnDomain)
        assert again.request_id == saga.state.awaiting
    else:
        assert isinstance(again, Place) and again.request == place.request
    saga.now += dt.timedelta(seconds=20)
    events = saga.fire_due()
    assert isinstance(events[0], InstanceFailed)
    assert saga.state.vm_state == ERROR and saga.state.fault is not None
    assert f"Timed out while {step}" in saga.state.fault.message and not saga.timers


def test_stop_start_reboot_and_wrong_states() -> None:
    saga = Saga()
    saga.boot()
    with pytest.raises(Rejected) as exc:
        saga.send(StartInstance())
    assert exc.value.code == "conflict"
    saga.send(StopInstance())
    (stop,) = saga.effects
    assert isinstance(stop, TellHost) and isinstance(stop.command, StopDomain)
    with pytest.raises(Rejected):
        saga.send(RebootInstance())  # a task is in progress
    saga.answer(Reply(command_id=stop.request_id, ok=True, result="shutoff"))
    assert status(saga.state.vm_state, saga.state.task_state) == "SHUTOFF"
    saga.send(StartInstance())
    (start,) = saga.effects
    assert isinstance(start, TellHost)
    saga.answer(Reply(command_id=start.request_id, ok=True, result="running"))
    saga.send(RebootInstance(hard=True))
    assert status(saga.state.vm_state, saga.state.task_state) == "HARD_REBOOT"
    (reboot,) = saga.effects
    assert isinstance(reboot, TellHost)
    events = saga.answer(Reply(command_id=reboot.request_id, ok=True, result="running"))
    assert isinstance(events[0], InstanceActionDone) and saga.state.vm_state == ACTIVE


def test_an_action_that_times_out_keeps_the_state() -> None:
    saga = Saga()
    saga.boot()
    saga.send(StopInstance())
    saga.now += dt.timedelta(seconds=30)
    events = saga.fire_due()
    assert isinstance(events[0], InstanceActionFailed)
    assert saga.state.vm_state == ACTIVE and saga.state.task_state is None


def test_delete_completes_even_when_the_host_never_answers() -> None:
    saga = Saga()
    saga.boot()
    saga.send(DeleteInstance())
    assert isinstance(saga.effects[0], TellHost)
    assert saga.send(DeleteInstance()) == []  # already deleting
    saga.now += dt.timedelta(minutes=2)
    events = saga.fire_due()
    deleted = events[0]
    assert isinstance(deleted, InstanceDeleted) and deleted.host == "h1" and deleted.note
    assert saga.state.vm_state == DELETED
    with pytest.raises(Rejected) as exc:
        saga.send(StopInstance())
    assert exc.value.code == "not_found"


def test_delete_while_scheduling_waits_for_the_claim_to_release_it() -> None:
    saga = Saga()
    place = saga.create()
    events = saga.send(DeleteInstance())
    assert isinstance(events[0], InstanceDeleting) and saga.effects == []
    events = saga.answer(Reply(command_id=f"{place.request}@h2", ok=True))
    deleted = next(e for e in events if isinstance(e, InstanceDeleted))
    assert deleted.host == "h2"  # the host sees it and releases the claim


def test_delete_of_an_error_instance_without_host_is_immediate() -> None:
    saga = Saga()
    place = saga.create()
    saga.answer(Reply(command_id=f"{place.request}@", ok=False, error_type="no_valid_host"))
    events = saga.send(DeleteInstance())
    assert saga.types(events) == ["instance.deleted"]


def test_power_sync_from_host_observations() -> None:
    saga = Saga()
    saga.boot()

    def observed(state: DomainState, host: str = "h1", reconcile: bool = False) -> list[object]:
        return list(saga.send(InstanceObserved(host=host, state=state, event="stopped",
                                               reconcile=reconcile, observed_at=saga.now)))

    assert observed(DomainState.SHUTOFF, host="other") == []
    events = observed(DomainState.SHUTOFF)
    assert isinstance(events[0], InstancePowerSynced) and saga.state.vm_state == STOPPED
    assert observed(DomainState.SHUTOFF) == []
    assert observed(DomainState.MISSING) == []  # only reconciliation reports missing
    events = observed(DomainState.MISSING, reconcile=True)
    assert isinstance(events[0], InstanceFailed) and saga.state.vm_state == ERROR
    assert saga.state.fault is not None and "missing" in saga.state.fault.message


def test_a_reconciliation_listed_before_the_last_change_is_ignored() -> None:
    """hostd listed the domains, then the server spawned (or was started) before the
    report arrived: a listing older than the server's last change tells nothing about
    it now, so a domain it lacked is not missing and its power state is not synced."""
    saga = Saga()
    listed_at = saga.now
    saga.now += dt.timedelta(seconds=1)
    saga.boot()
    for state in (DomainState.MISSING, DomainState.SHUTOFF):
        assert saga.send(InstanceObserved(host="h1", state=state, reconcile=True,
                                          observed_at=listed_at)) == []
    assert saga.state.vm_state == ACTIVE
    saga.now += dt.timedelta(seconds=1)
    events = saga.send(InstanceObserved(host="h1", state=DomainState.MISSING, reconcile=True,
                                        observed_at=saga.now))
    assert isinstance(events[0], InstanceFailed) and saga.state.vm_state == ERROR


def test_observations_during_a_task_are_left_to_the_task() -> None:
    saga = Saga()
    saga.boot()
    saga.send(StopInstance())
    assert saga.send(InstanceObserved(host="h1", state=DomainState.SHUTOFF,
                                      observed_at=saga.now)) == []


def test_create_twice_is_a_conflict_and_an_image_without_hash_boots_from_spec() -> None:
    saga = Saga()
    saga.create(sha512="")
    with pytest.raises(Rejected) as exc:
        saga.create()
    assert exc.value.code == "conflict"
    spawn = saga.placed(Place(instance_id=IID, request=saga.state.awaiting or "",
                              vcpus=1, ram_mb=1, disk_gb=1))
    assert isinstance(spawn.command, SpawnDomain) and spawn.command.image is None


def test_image_ready_event_only_from_the_interim_answer() -> None:
    saga = Saga()
    spawn = saga.placed(saga.create())
    events = saga.answer(Reply(command_id=spawn.request_id, ok=True, partial=True,
                               result="image_ready"))
    assert isinstance(events[0], InstanceImageReady) and events[0].host == "h1"
    assert saga.state.task_state == "spawning"
    assert saga.answer(Reply(command_id=spawn.request_id, ok=True, partial=True,
                             result="other")) == []


NIC_NET = NetworkSpec(network_id="net-1", type="vxlan", segmentation_id=7, mtu=1450)
NICS = [NicInfo(port_id="port-a", network_id="net-1", network_name="private",
                mac="fa:16:3e:00:00:0a", ips=("10.0.0.3",), created=True,
                device=port_device("port-a"), network=NIC_NET),
        NicInfo(port_id="port-b", network_id="net-1", network_name="private",
                mac="fa:16:3e:00:00:0b", ips=("10.0.0.4",), created=False,
                device=port_device("port-b"), network=NIC_NET)]


def _create_with(saga: Saga, **extra: object) -> list[msgspec.Struct]:
    return saga.send(CreateInstance(
        name="vm1", project_id="p1", user_id="u1",
        flavor=FlavorInfo(id="1", name="m1.tiny", vcpus=1, ram=512, disk=1),
        image=ImageInfo(id="img-1", size=1024, sha512="ab" * 64), **extra))


def _tells(effects: Sequence[object]) -> list[tuple[str, str]]:
    return [(e.actor_id, type(e.command).__name__) for e in effects if isinstance(e, Tell)]


def test_ports_are_bound_at_scheduling_plugged_at_spawn_and_given_back_at_delete() -> None:
    """The spawn carries the network once and both ports (and the NICs in the domain);
    scheduling binds each port to the host, the spawn's success plugs them, a delete
    deletes the port the boot made and unbinds the one it was given."""
    saga = Saga()
    _create_with(saga, nics=NICS)
    (place,) = saga.effects
    assert isinstance(place, Place)
    saga.answer(Reply(command_id=f"{place.request}@h1", ok=True))
    assert _tells(saga.effects) == [("port-a", "BindPort"), ("port-b", "BindPort")]
    (spawn,) = [e for e in saga.effects if isinstance(e, TellHost)]
    assert isinstance(spawn.command, SpawnDomain)
    assert spawn.command.networks == (NIC_NET,)
    assert [p.port_id for p in spawn.command.ports] == ["port-a", "port-b"]
    assert [n.device for n in spawn.command.spec.nics] == [n.device for n in NICS]
    saga.answer(Reply(command_id=spawn.request_id, ok=True, result="running"))
    assert _tells(saga.effects) == [("port-a", "PlugPort"), ("port-b", "PlugPort")]
    saga.send(DeleteInstance())
    (destroy,) = saga.effects
    assert isinstance(destroy, TellHost) and isinstance(destroy.command, DestroyDomain)
    assert destroy.command.ports == ("port-a", "port-b")
    saga.answer(Reply(command_id=destroy.request_id, ok=True))
    assert _tells(saga.effects) == [("port-a", "DeletePort"), ("port-b", "UnbindPort")]


def test_a_nic_error_ends_the_boot_in_error_without_a_placement() -> None:
    """The gateway could not make every port: the server is created and fails at once
    (Nova's "Build of instance … aborted" fault), nothing is placed, and the ports it did
    get go back."""
    saga = Saga()
    events = _create_with(saga, nics=NICS[:1], nic_error="No more IP addresses available.")
    assert saga.types(events) == ["instance.created", "instance.failed"]
    assert saga.state.vm_state == ERROR and saga.state.fault is not None
    assert "aborted: No more IP addresses" in saga.state.fault.message
    assert not any(isinstance(e, Place) for e in saga.effects)
    assert _tells(saga.effects) == [("port-a", "DeletePort")]
