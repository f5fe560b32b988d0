"""The ``instance`` actor kind: one server's whole lifecycle, and the boot saga it owns.

State follows Nova: ``vm_state`` (building, active, stopped, error, deleted), ``task_state``
(what is in progress) and ``power_state`` (what the hypervisor last said). The API status
is derived from them by ``status()``.

The boot saga, every step an event and every transitional step under a deadline:

    instance.created        BUILD/scheduling   -> effect Place (the scheduler claims a host)
    instance.scheduled      BUILD/spawning     -> effect hostd.spawn on that host
    instance.image_ready    BUILD/spawning     (the image is on the host: an interim answer
                                                when the host had to fetch it, else recorded
                                                with the spawn, in the same append)
    instance.spawned        ACTIVE

A refused claim (someone took the room first) is ``instance.claim_refused`` and the next
placement leaves that host out; after ``MAX_PLACEMENTS`` refusals, no valid host. Any
failure, or a deadline passing, is ``instance.failed``: vm_state error with a fault the
user can read. The host actor reacts to ``instance.failed`` and ``instance.deleted`` by
releasing the claim, so usage is always the fold of the log. One durable timer per
transitional state (re-armed while the state moves on) enforces the deadlines.

Stop, start and reboot send the matching hostd command and end in ``instance.stopped`` /
``instance.started`` / ``instance.rebooted``, or ``instance.action_failed`` (the state is
kept, the action records the error, as Nova does). Delete always completes: without an
answer from the host before the deadline the instance is deleted anyway, and the host
removes the orphan domain when it reconciles.

Every request the actor makes carries an id recorded in its state (``awaiting``); an
answer to anything else is stale and ignored.

Volumes are attached and detached by the attach saga in actors.instance_volumes, which
this kind runs beside the boot saga (its own steps, deadlines and timer).
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Sequence

import msgspec

from actors import holds, instance_volumes as saga
from actors.holds import CheckHold
from actors.instance_messages import (  # the kind's messages, re-exported
    ACTIVE as ACTIVE,
    BUILDING as BUILDING,
    CRASHED as CRASHED,
    DEADLINE_TIMER as DEADLINE_TIMER,
    DELETED as DELETED,
    DELETING as DELETING,
    ERROR as ERROR,
    KIND as KIND,
    MAX_PLACEMENTS as MAX_PLACEMENTS,
    NOSTATE as NOSTATE,
    PAUSED as PAUSED,
    POWERING_OFF as POWERING_OFF,
    POWERING_ON as POWERING_ON,
    REBOOTING as REBOOTING,
    REBOOTING_HARD as REBOOTING_HARD,
    RUNNING as RUNNING,
    SCHEDULING as SCHEDULING,
    SHUTDOWN as SHUTDOWN,
    SPAWNING as SPAWNING,
    STOPPED as STOPPED,
    CreateInstance as CreateInstance,
    Deadlines as Deadlines,
    DeleteInstance as DeleteInstance,
    Fault as Fault,
    FlavorInfo as FlavorInfo,
    ImageInfo as ImageInfo,
    InstanceActionDone as InstanceActionDone,
    InstanceActionFailed as InstanceActionFailed,
    InstanceActionStarted as InstanceActionStarted,
    InstanceClaimRefused as InstanceClaimRefused,
    InstanceCreated as InstanceCreated,
    InstanceDeleted as InstanceDeleted,
    InstanceDeleting as InstanceDeleting,
    InstanceFailed as InstanceFailed,
    InstanceImageReady as InstanceImageReady,
    InstancePowerSynced as InstancePowerSynced,
    InstanceRetried as InstanceRetried,
    InstanceScheduled as InstanceScheduled,
    InstanceSpawned as InstanceSpawned,
    NicInfo as NicInfo,
    Place as Place,
    RebootInstance as RebootInstance,
    StartInstance as StartInstance,
    StopInstance as StopInstance,
    status as status,
)
from actors.kind import ActorKind, Context, Events, Rejected, Tell, TellHost
from actors.port import KIND as PORT_KIND, BindPort, DeletePort, PlugPort, UnbindPort
from actors.volume_messages import CheckVolumeAttachment
from schemas import Reply, TimerCancelled, TimerFired, TimerSet
from schemas.hostd import (
    DestroyDomain,
    DiskFormat,
    DomainSpec,
    DomainState,
    ImageRef,
    InstanceObserved,
    Nic,
    RebootDomain,
    SpawnDomain,
    StartDomain,
    StopDomain,
)
from schemas.hostnet import PortSpec

_POWER = {
    DomainState.RUNNING: RUNNING, DomainState.PAUSED: PAUSED,
    DomainState.SHUTOFF: SHUTDOWN, DomainState.CRASHED: CRASHED,
    DomainState.MISSING: NOSTATE,
}


INSTANCE_COMMANDS: tuple[type[msgspec.Struct], ...] = (
    CreateInstance, StopInstance, StartInstance, RebootInstance, DeleteInstance,
    InstanceObserved, *saga.VOLUME_COMMANDS,
)
INSTANCE_EVENTS: tuple[type[msgspec.Struct], ...] = (
    InstanceCreated, InstanceClaimRefused, InstanceScheduled, InstanceImageReady,
    InstanceSpawned, InstanceFailed, InstanceActionStarted, InstanceActionDone,
    InstanceActionFailed, InstancePowerSynced, InstanceDeleting, InstanceDeleted,
    InstanceRetried, *saga.VOLUME_EVENTS,
)


class InstanceState(msgspec.Struct, kw_only=True):
    """The fold of one instance's stream."""

    exists: bool = False
    name: str = ""
    project_id: str = ""
    user_id: str = ""
    flavor: FlavorInfo | None = None
    image: ImageInfo | None = None
    vm_state: str = BUILDING
    task_state: str | None = None
    power_state: int = NOSTATE
    host: str | None = None
    fault: Fault | None = None
    awaiting: str | None = None
    action: str | None = None
    refused: list[str] = []
    retried: list[str] = []
    deadline: dt.datetime | None = None
    timer: str | None = None
    timer_at: dt.datetime | None = None
    created_at: dt.datetime | None = None
    launched_at: dt.datetime | None = None
    #: the boot recorded its image on the host (instance.image_ready)
    image_ready: bool = False
    #: when the last task or power change happened: a reconciliation that listed the
    #: host's domains before it says nothing about the server now
    changed_at: dt.datetime | None = None
    nics: list[NicInfo] = []
    #: attached volumes and attaches/detaches in flight, by volume id
    volumes: dict[str, saga.VolumeSlot] = {}
    volume_timer: str | None = None
    volume_timer_at: dt.datetime | None = None


# -- decide ----------------------------------------------------------------------------------

_ACTIONS = {"stop": POWERING_OFF, "start": POWERING_ON}


class InstanceDecider:
    """decide / on_reply / on_timer / effects of the instance kind, with its deadlines."""

    def __init__(self, deadlines: Deadlines) -> None:
        self.deadlines = deadlines

    # commands

    def decide(self, state: InstanceState, command: msgspec.Struct, ctx: Context) -> Events:
        if isinstance(command, CreateInstance):
            return self._create(state, command, ctx)
        if not state.exists or state.vm_state == DELETED:
            if isinstance(command, InstanceObserved):
                return []
            raise Rejected("not_found", f"Instance {ctx.actor_id} could not be found.")
        match command:
            case StopInstance():
                self._require(state, "stop", ACTIVE, ERROR)
                return self._start_action(state, "stop", POWERING_OFF, ctx)
            case StartInstance():
                self._require(state, "start", STOPPED)
                return self._start_action(state, "start", POWERING_ON, ctx)
            case RebootInstance(hard=hard):
                allowed = (ACTIVE, STOPPED, ERROR) if hard else (ACTIVE,)
                self._require(state, "reboot", *allowed)
                return self._start_action(state, "reboot",
                                          REBOOTING_HARD if hard else REBOOTING, ctx, hard=hard)
            case DeleteInstance():
                return self._delete(state, ctx)
            case InstanceObserved():
                return self._observed(state, command, ctx)
            case saga.AttachInstanceVolume():
                return saga.decide_attach(state, command, ctx, self.deadlines.attaching)
            case saga.DetachInstanceVolume():
                return saga.decide_detach(state, command, ctx, self.deadlines.detaching)
        raise Rejected("bad_request", f"instance has no command {type(command).__name__}")

    def _create(self, state: InstanceState, cmd: CreateInstance, ctx: Context) -> Events:
        if state.exists:
            raise Rejected("conflict", f"Instance {ctx.actor_id} already exists.")
        fields = msgspec.structs.asdict(cmd)
        nic_error = fields.pop("nic_error")
        created = InstanceCreated(instance_id=ctx.actor_id, request=ctx.derive_id(),
                                  at=ctx.now, **fields)
        if nic_error is not None:  # nothing claimed yet: the ports it got are given back
            return [created, InstanceFailed(
                instance_id=ctx.actor_id, host=None, task=SCHEDULING, at=ctx.now,
                fault=Fault(code=500, created=ctx.now, message=f"Build of instance"
                            f" {ctx.actor_id} aborted: {nic_error}"))]
        return [created, self._arm(ctx.now + self._limit(SCHEDULING), ctx)]

    @staticmethod
    def _require(state: InstanceState, action: str, *vm_states: str) -> None:
        if state.task_state is not None or state.vm_state not in vm_states \
                or state.host is None:
            shown = status(state.vm_state, state.task_state)
            task = f" (task_state {state.task_state})" if state.task_state else ""
            raise Rejected("conflict", f"Cannot '{action}' instance {_short(state)} while it"
                           f" is in vm_state {state.vm_state}{task}, status {shown}")

    def _start_action(self, state: InstanceState, action: str, task: str, ctx: Context,
                      *, hard: bool = False) -> Events:
        return [InstanceActionStarted(action=action, task=task, request=ctx.derive_id(),
                                      hard=hard, at=ctx.now),
                *self._rearm(state, task, ctx)]

    def _delete(self, state: InstanceState, ctx: Context) -> Events:
        if state.task_state == DELETING:
            return []  # already under way; its deadline guarantees it ends
        if state.task_state == SCHEDULING:
            # a claim may be on its way: wait for the placement's answer to release it
            assert state.awaiting is not None
            return [InstanceDeleting(request=state.awaiting, at=ctx.now),
                    *self._rearm(state, DELETING, ctx)]
        if state.host is None:
            return [*self._disarm(state),
                    InstanceDeleted(instance_id=ctx.actor_id, host=None, at=ctx.now)]
        return [InstanceDeleting(request=ctx.derive_id(), at=ctx.now),
                *self._rearm(state, DELETING, ctx)]

    def _observed(self, state: InstanceState, obs: InstanceObserved, ctx: Context) -> Events:
        """Power-state sync: only for a settled server on the host that reports."""
        if state.task_state is not None or obs.host != state.host:
            return []
        if state.vm_state not in (ACTIVE, STOPPED):
            return []
        if obs.reconcile and state.changed_at is not None and obs.observed_at < state.changed_at:
            return []  # the domains were listed before the server's last change (its spawn)
        if obs.state == DomainState.MISSING:
            if not obs.reconcile:
                return []  # an undefine we did not ask for shows up at reconciliation
            return [InstanceFailed(
                instance_id=ctx.actor_id, host=state.host, task=None, at=ctx.now,
                fault=Fault(code=500, created=ctx.now,
                            message=f"The domain of this server is missing on host"
                                    f" {obs.host}"))]
        power = _POWER[obs.state]
        if state.vm_state == ACTIVE and obs.state in (DomainState.SHUTOFF,
                                                     DomainState.CRASHED):
            return [InstancePowerSynced(vm_state=STOPPED, power_state=power, at=ctx.now,
                                        reason=f"domain {obs.event or 'found'}"
                                               f" {obs.detail or obs.state.value} on host")]
        if state.vm_state == STOPPED and obs.state == DomainState.RUNNING:
            return [InstancePowerSynced(vm_state=ACTIVE, power_state=power, at=ctx.now,
                                        reason="domain found running on host")]
        if power != state.power_state and state.vm_state == ACTIVE:
            return [InstancePowerSynced(vm_state=ACTIVE, power_state=power, at=ctx.now,
                                        reason=f"domain {obs.state.value} on host")]
        return []

    # answers

    def on_reply(self, state: InstanceState, reply: Reply, ctx: Context) -> Events:
        volume_step = saga.on_reply(state, reply, ctx, self.deadlines.attaching)
        if volume_step is not None:
            return volume_step
        request, _, host = reply.command_id.partition("@")
        if state.awaiting is None or request != state.awaiting:
            return []  # stale: an answer to a request we no longer wait for
        match state.task_state:
            case "scheduling":
                return self._placed(state, reply, host, ctx)
            case "spawning":
                return self._spawn_answer(state, reply, ctx)
            case "deleting":
                if state.host is None:  # deleted while scheduling: the placement answered
                    return [*self._disarm(state), InstanceDeleted(
                        instance_id=ctx.actor_id, host=host if reply.ok and host else None,
                        at=ctx.now)]
                if not reply.ok and reply.retryable:
                    return []  # the deadline completes it
                note = "" if reply.ok else f"host answered: {reply.error}"
                return [*self._disarm(state), InstanceDeleted(
                    instance_id=ctx.actor_id, host=state.host, note=note, at=ctx.now)]
            case None:
                return []
        return self._action_answer(state, reply, ctx)

    def _placed(self, state: InstanceState, reply: Reply, host: str, ctx: Context) -> Events:
        if reply.ok and host:
            return [InstanceScheduled(host=host, request=ctx.derive_id(), at=ctx.now),
                    *self._rearm(state, SPAWNING, ctx)]
        if reply.error_type == "no_valid_host" or not host:
            return self._fail(state, ctx, reply.error or "No valid host was found.")
        refused = [*state.refused, host]
        if len(refused) >= MAX_PLACEMENTS:
            return self._fail(state, ctx, "No valid host was found. Claims refused by "
                              + ", ".join(refused) + f"; last: {reply.error}")
        return [InstanceClaimRefused(host=host, reason=reply.error or "refused",
                                     request=ctx.derive_id(), at=ctx.now)]

    def _spawn_answer(self, state: InstanceState, reply: Reply, ctx: Context) -> Events:
        assert state.host is not None
        if reply.partial:
            if reply.ok and reply.result == "image_ready":
                return [InstanceImageReady(host=state.host, at=ctx.now)]
            return []
        if not reply.ok:
            return self._fail(state, ctx, f"Build of instance {ctx.actor_id} failed on host"
                              f" {state.host}: {reply.error}")
        power = _POWER.get(DomainState(reply.result or "running"), RUNNING)
        # a host that had the image cached says so only by spawning from it: the saga's
        # image step is recorded with the spawn, in the same append
        ready = [] if state.image_ready or state.image is None or not state.image.sha512 \
            else [InstanceImageReady(host=state.host, at=ctx.now)]
        return [*ready, InstanceSpawned(host=state.host, power_state=power, at=ctx.now),
                *self._disarm(state)]

    def _action_answer(self, state: InstanceState, reply: Reply, ctx: Context) -> Events:
        action = state.action or "action"
        if reply.partial:
            return []
        if not reply.ok:
            return [InstanceActionFailed(action=action, message=reply.error or "failed",
                                         at=ctx.now), *self._disarm(state)]
        domain = DomainState(reply.result or "running")
        power = _POWER.get(domain, NOSTATE)
        vm_state = STOPPED if domain in (DomainState.SHUTOFF, DomainState.CRASHED) \
            else ACTIVE
        return [InstanceActionDone(action=action, vm_state=vm_state, power_state=power,
                                   at=ctx.now), *self._disarm(state)]

    # deadlines

    def on_timer(self, state: InstanceState, fired: TimerFired, ctx: Context) -> Events:
        if fired.name == saga.TIMER:
            return saga.on_timer(state, fired, ctx)
        if fired.name != DEADLINE_TIMER or state.task_state is None or state.deadline is None:
            return []
        if ctx.now < state.deadline:  # the task moved on since: wait for its own deadline
            return [self._arm(state.deadline, ctx)]
        task = state.task_state
        if task == DELETING:
            return [InstanceDeleted(instance_id=ctx.actor_id, host=state.host, at=ctx.now,
                                    note="the host did not confirm in time; it removes the"
                                         " domain when it reconciles")]
        if task in (SCHEDULING, SPAWNING) and task not in state.retried:
            return [InstanceRetried(task=task, at=ctx.now),
                    self._arm(ctx.now + self._limit(task), ctx)]
        if task in (SCHEDULING, SPAWNING):
            where = f" on host {state.host}" if state.host else ""
            return self._fail(state, ctx, f"Timed out while {task}{where}, twice"
                              f" {self._limit(task).total_seconds():g} s", timer_fired=True)
        return [InstanceActionFailed(action=state.action or task, at=ctx.now,
                                     message=f"Timed out while {task} after"
                                             f" {self._limit(task).total_seconds():g} s")]

    def _fail(self, state: InstanceState, ctx: Context, message: str, *,
              timer_fired: bool = False) -> Events:
        fault = Fault(code=500, message=message, created=ctx.now)
        failed = InstanceFailed(instance_id=ctx.actor_id, host=state.host,
                                task=state.task_state, fault=fault, at=ctx.now)
        return [failed] if timer_fired else [failed, *self._disarm(state)]

    def _limit(self, task: str) -> dt.timedelta:
        return dt.timedelta(seconds=self.deadlines.of(task))

    @staticmethod
    def _arm(fire_at: dt.datetime, ctx: Context) -> TimerSet:
        return TimerSet(timer_id=ctx.derive_id(7), name=DEADLINE_TIMER, fire_at=fire_at)

    def _rearm(self, state: InstanceState, task: str, ctx: Context) -> Events:
        """A new transitional task; evolve records its deadline. A pending timer due no
        later than that deadline is kept (when it fires early it is re-armed to the
        deadline), so a saga's steps need one timer, not one each."""
        deadline = ctx.now + self._limit(task)
        if state.timer is not None and state.timer_at is not None \
                and state.timer_at <= deadline:
            return []
        return [*self._disarm(state), self._arm(deadline, ctx)]

    @staticmethod
    def _disarm(state: InstanceState) -> Events:
        return [TimerCancelled(timer_id=state.timer)] if state.timer else []

    # effects

    def effects(self, state: InstanceState, events: Events, ctx: Context) -> Sequence[object]:
        out: list[object] = []
        for event in events:
            match event:
                case InstanceCreated() | InstanceClaimRefused() if state.vm_state == BUILDING:
                    out.append(self._place(state, ctx))
                case InstanceRetried(task="scheduling"):
                    out.append(self._place(state, ctx))
                case InstanceRetried(task="spawning") if state.host and state.awaiting:
                    out.append(TellHost(host=state.host, command=self._spawn(state, ctx),
                                        request_id=state.awaiting,
                                        timeout=self.deadlines.spawning))
                case InstanceScheduled(host=host, request=request):
                    out += _to_ports(state, ctx, "bind", BindPort(
                        host_id=host, device_id=ctx.actor_id))
                    out.append(TellHost(host=host, command=self._spawn(state, ctx),
                                        request_id=request,
                                        timeout=self.deadlines.spawning))
                case InstanceSpawned() if state.host:
                    out += _to_ports(state, ctx, "plug", PlugPort(host_id=state.host))
                case InstanceActionStarted(action=action, request=request, hard=hard):
                    assert state.host is not None
                    out.append(TellHost(host=state.host, request_id=request,
                                        command=self._action(action, ctx.actor_id, hard),
                                        timeout=self.deadlines.of(state.task_state or "")))
                case InstanceDeleting(request=request) if state.host:
                    out.append(TellHost(host=state.host, request_id=request,
                                        command=self._destroy(state, ctx),
                                        timeout=self.deadlines.deleting))
                case InstanceDeleted():
                    out += _release_ports(state, ctx)
                    out += saga.release_all(state, ctx)
                case InstanceFailed(host=host, task=task) if task in (SCHEDULING, SPAWNING):
                    # a failed build gives its ports back (as Nova's build cleanup does),
                    # and a late spawn must not leave a domain behind
                    out += _release_ports(state, ctx)
                    if host is not None:
                        out.append(TellHost(host=host, request_id=f"{ctx.message_id}/cleanup",
                                            command=self._destroy(state, ctx),
                                            timeout=self.deadlines.deleting))
                case _:
                    out += saga.effects(state, event, ctx, self.deadlines.attaching)
        return out

    @staticmethod
    def _destroy(state: InstanceState, ctx: Context) -> DestroyDomain:
        return DestroyDomain(instance_id=ctx.actor_id,
                             ports=tuple(nic.port_id for nic in state.nics))

    @staticmethod
    def _place(state: InstanceState, ctx: Context) -> Place:
        assert state.flavor is not None and state.image is not None and state.awaiting
        nets = [nic.network for nic in state.nics]
        return Place(instance_id=ctx.actor_id, request=state.awaiting, vcpus=state.flavor.vcpus,
                     ram_mb=state.flavor.ram, disk_gb=state.flavor.disk,
                     image_size=state.image.size, exclude=tuple(state.refused),
                     network_types=tuple(sorted({n.type for n in nets})),
                     physical_networks=tuple(sorted({n.physical_network for n in nets
                                                     if n.physical_network})))

    @staticmethod
    def _spawn(state: InstanceState, ctx: Context) -> SpawnDomain:
        assert state.flavor is not None and state.image is not None
        image = state.image
        disk_format: DiskFormat = "raw" if image.disk_format == "raw" else "qcow2"
        spec = DomainSpec(uuid=ctx.actor_id, name=state.name, vcpus=state.flavor.vcpus,
                          ram_mb=state.flavor.ram, disk_gb=state.flavor.disk,
                          image_path="", image_format=disk_format)
        ref = ImageRef(image_id=image.id, sha512=image.sha512, disk_format=disk_format,
                       size=image.size) if image.sha512 else None
        networks = {nic.network_id: nic.network for nic in state.nics}
        return SpawnDomain(
            instance_id=ctx.actor_id, image=ref, networks=tuple(networks.values()),
            spec=msgspec.structs.replace(spec, nics=tuple(
                Nic(mac=nic.mac, device=nic.device) for nic in state.nics)),
            ports=tuple(PortSpec(port_id=nic.port_id, network_id=nic.network_id, mac=nic.mac,
                                 ips=nic.ips, device=nic.device) for nic in state.nics))

    def _action(self, action: str, instance_id: str, hard: bool) -> msgspec.Struct:
        if action == "stop":
            return StopDomain(instance_id=instance_id, timeout=self.deadlines.stop_timeout)
        if action == "start":
            return StartDomain(instance_id=instance_id)
        return RebootDomain(instance_id=instance_id, hard=hard)


def _to_ports(state: InstanceState, ctx: Context, verb: str,
              command: msgspec.Struct) -> list[Tell]:
    """``command`` to each of the server's ports (answers are not waited for: binding and
    plugging only report where the port is)."""
    return [Tell(kind=PORT_KIND, actor_id=nic.port_id, command=command,
                 request_id=f"{ctx.message_id}/{verb}/{nic.port_id}") for nic in state.nics]


def _release_ports(state: InstanceState, ctx: Context) -> list[Tell]:
    """The server is gone or never came: the ports its boot created are deleted (their
    addresses and MACs go back to their owners), the ports it was given are unbound."""
    return [Tell(kind=PORT_KIND, actor_id=nic.port_id,
                 command=DeletePort() if nic.created else UnbindPort(device_id=ctx.actor_id),
                 request_id=f"{ctx.message_id}/release/{nic.port_id}") for nic in state.nics]


def _short(state: InstanceState) -> str:
    return state.name or "(unnamed)"


# -- evolve ----------------------------------------------------------------------------------


class InstanceEvolver:
    """evolve of the instance kind: needs the deadlines to record each task's."""

    def __init__(self, deadlines: Deadlines) -> None:
        self.deadlines = deadlines

    def _task(self, state: InstanceState, task: str | None, at: dt.datetime) -> None:
        state.task_state, state.changed_at = task, at
        state.deadline = None if task is None else \
            at + dt.timedelta(seconds=self.deadlines.of(task))

    def evolve(self, state: InstanceState, event: msgspec.Struct) -> InstanceState:
        if saga.evolve(state, event, (self.deadlines.attaching, self.deadlines.detaching)):
            return state
        match event:
            case InstanceCreated():
                state.exists = True
                state.name, state.project_id, state.user_id = (
                    event.name, event.project_id, event.user_id)
                state.flavor, state.image = event.flavor, event.image
                state.nics = list(event.nics)
                state.vm_state, state.awaiting = BUILDING, event.request
                state.created_at = event.at
                self._task(state, SCHEDULING, event.at)
            case InstanceClaimRefused(host=host, request=request):
                state.refused = [*state.refused, host]
                state.awaiting = request
            case InstanceScheduled(host=host, request=request, at=at):
                state.host, state.awaiting = host, request
                self._task(state, SPAWNING, at)
            case InstanceImageReady():
                state.image_ready = True
            case InstanceSpawned(power_state=power, at=at):
                state.vm_state, state.power_state = ACTIVE, power
                state.launched_at, state.awaiting = at, None
                self._task(state, None, at)
            case InstanceFailed(fault=fault, at=at):
                # the host releases the claim when it sees this event
                state.vm_state, state.fault, state.awaiting = ERROR, fault, None
                state.host, state.power_state = None, NOSTATE
                self._task(state, None, at)
            case InstanceActionStarted(action=action, task=task, request=request, at=at):
                state.action, state.awaiting = action, request
                self._task(state, task, at)
            case InstanceActionDone(vm_state=vm_state, power_state=power, at=at):
                state.vm_state, state.power_state = vm_state, power
                state.action, state.awaiting = None, None
                if vm_state != ERROR:
                    state.fault = None
                self._task(state, None, at)
            case InstanceActionFailed(at=at):
                state.action, state.awaiting = None, None
                self._task(state, None, at)
            case InstancePowerSynced(vm_state=vm_state, power_state=power, at=at):
                state.vm_state, state.power_state = vm_state, power
                state.changed_at = at
            case InstanceRetried(task=task, at=at):
                state.retried = [*state.retried, task]
                self._task(state, task, at)
            case InstanceDeleting(request=request, at=at):
                state.awaiting = request
                self._task(state, DELETING, at)
            case InstanceDeleted(at=at):
                state.vm_state, state.awaiting, state.host = DELETED, None, None
                self._task(state, None, at)
            case TimerSet(timer_id=tid, name=name, fire_at=at) if name == DEADLINE_TIMER:
                state.timer, state.timer_at = tid, at
            case TimerFired(timer_id=tid) | TimerCancelled(timer_id=tid) if tid == state.timer:
                state.timer, state.timer_at = None, None
        return state


def initial(_actor_id: str) -> InstanceState:
    return InstanceState()


def answer(state: InstanceState, query: CheckHold | CheckVolumeAttachment,
           ctx: Context) -> str:
    """A port made or reserved for this server asks whether the server has it: ``held``
    while the server exists (not deleted) with that port among its NICs. A volume asks
    what the server has of its attachment (see actors.instance_volumes)."""
    live = state.exists and state.vm_state != DELETED
    if isinstance(query, CheckVolumeAttachment):
        return saga.answer(state, query, gone=not live)
    return holds.answer_held(live and any(n.port_id == query.owner_id for n in state.nics))


def make_instance_kind(deadlines: Deadlines | None = None, *,
                       snapshot_every: int = 100) -> ActorKind[InstanceState]:
    """The ``instance`` kind with these deadlines."""
    limits = deadlines or Deadlines()
    decider = InstanceDecider(limits)
    return ActorKind(
        name=KIND,
        state_type=InstanceState,
        initial=initial,
        decide=decider.decide,
        evolve=InstanceEvolver(limits).evolve,
        commands=INSTANCE_COMMANDS,
        events=INSTANCE_EVENTS,
        on_timer=decider.on_timer,
        on_reply=decider.on_reply,
        effects=decider.effects,
        queries=(CheckHold, CheckVolumeAttachment),
        answer=answer,
        snapshot_every=snapshot_every,
        creates=(CreateInstance,),
    )


def deadlines_from_env() -> Deadlines:
    """``ORRERY_INSTANCE_DEADLINES``: ``task=seconds,...`` overrides (e.g. for tests)."""
    raw = os.environ.get("ORRERY_INSTANCE_DEADLINES", "")
    overrides: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in raw.split(","))):
        key, _, value = part.partition("=")
        overrides[key.strip().replace("-", "_")] = float(value)
    return Deadlines(**overrides)


#: the instance kind with the configured deadlines (``--kind actors.instance:INSTANCE``)
INSTANCE = make_instance_kind(deadlines_from_env())
