"""The attach saga: an instance attaches and detaches volumes, owning both sides.

The instance actor records every step and tells the volume and its host what to do;
the volume actor (actors.volume) only ever moves when the saga tells it, so the server's
attachment and the volume's status always agree once a step is done:

    attach  instance.volume_attaching  (reserving)  -> volume.reserve (attaching; or refused)
            instance.volume_reserved   (attaching)  -> hostd.attach_volume on the server's host
            instance.volume_attached   (attached)   -> volume.attach_done (in-use)
    detach  instance.volume_detaching  (detaching)  -> volume.begin_detach, hostd.detach_volume
            instance.volume_detached                -> volume.detach_done (available)

A refusal, a failure or a missed deadline ends the attach in
``instance.volume_attach_failed``: the volume is unreserved and, when the host may have
attached the disk after all, the host is told to detach it. A failed detach is
``instance.volume_detach_failed``: the volume goes back to in-use. One durable timer
(``volumes``) is due at the earliest deadline of the steps in flight. Deleting the server
releases every attachment (``volume.detach_done``, with ``delete`` for
delete_on_termination) or gives up a pending one.

The device is the one asked for (``vdb`` .. ``vdz``) or, when none is, the first free
one after the boot disk ``vda``, as Nova's libvirt driver picks it.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import TYPE_CHECKING

import msgspec

from actors.kind import Context, Events, Rejected, Tell, TellHost
from actors.volume_messages import (
    BeginDetach,
    CheckVolumeAttachment,
    CompleteAttach,
    CompleteDetach,
    Connection,
    ReserveVolume,
    RollbackDetach,
    Unreserve,
)
from schemas import Reply, TimerCancelled, TimerFired, TimerSet
from schemas.hostd import AttachVolume, DetachVolume, VolumeDisk

if TYPE_CHECKING:
    from actors.instance import InstanceState

VOLUME_KIND = "volume"
TIMER = "volumes"
RESERVING, ATTACHING, ATTACHED, DETACHING = "reserving", "attaching", "attached", "detaching"
_ATTACHABLE = ("active", "stopped")
_DEVICE = re.compile(r"^(?:/dev/)?(vd[a-z])$")
_CONNECTION = msgspec.json.Decoder(Connection)
#: seconds a host may take to get to detaching a disk an attach left behind
CLEANUP_TIMEOUT = 600.0


class VolumeSlot(msgspec.Struct, kw_only=True):
    """One volume of the server (Nova's block device mapping) and its step in flight."""

    volume_id: str
    attachment_id: str
    device: str
    state: str
    delete_on_termination: bool = False
    tag: str | None = None
    storage_host: str = ""
    path: str = ""
    format: str = "raw"
    awaiting: str | None = None
    deadline: dt.datetime | None = None


# -- commands --------------------------------------------------------------------------------


class AttachInstanceVolume(msgspec.Struct, frozen=True, kw_only=True,
                           tag="instance.attach_volume"):
    """Attach volume ``volume_id`` as attachment ``attachment_id`` (on ``device``, or the
    next free one)."""

    volume_id: str
    attachment_id: str
    device: str | None = None
    delete_on_termination: bool = False
    tag: str | None = None


class DetachInstanceVolume(msgspec.Struct, frozen=True, kw_only=True,
                           tag="instance.detach_volume"):
    volume_id: str


# -- events ----------------------------------------------------------------------------------


class InstanceVolumeAttaching(msgspec.Struct, frozen=True, kw_only=True,
                             tag="instance.volume_attaching"):
    """The attach began: the volume is asked to reserve itself as ``request``."""

    volume_id: str
    attachment_id: str
    device: str
    delete_on_termination: bool = False
    tag: str | None = None
    request: str
    at: dt.datetime


class InstanceVolumeReserved(msgspec.Struct, frozen=True, kw_only=True,
                             tag="instance.volume_reserved"):
    """The volume is ours; the host attaches its file as ``request``."""

    volume_id: str
    storage_host: str
    path: str
    format: str
    request: str
    at: dt.datetime


class InstanceVolumeAttached(msgspec.Struct, frozen=True, kw_only=True,
                             tag="instance.volume_attached"):
    volume_id: str
    at: dt.datetime


class InstanceVolumeAttachFailed(msgspec.Struct, frozen=True, kw_only=True,
                                 tag="instance.volume_attach_failed"):
    """The attach was refused, failed or timed out; ``cleanup``: the host may have the
    disk and is told to detach it."""

    volume_id: str
    attachment_id: str
    device: str
    reason: str
    cleanup: bool = False
    at: dt.datetime


class InstanceVolumeDetaching(msgspec.Struct, frozen=True, kw_only=True,
                              tag="instance.volume_detaching"):
    """The detach began: the host detaches the disk as ``request``."""

    volume_id: str
    request: str
    at: dt.datetime


class InstanceVolumeDetached(msgspec.Struct, frozen=True, kw_only=True,
                             tag="instance.volume_detached"):
    volume_id: str
    attachment_id: str
    at: dt.datetime


class InstanceVolumeDetachFailed(msgspec.Struct, frozen=True, kw_only=True,
                                 tag="instance.volume_detach_failed"):
    """The detach failed or timed out: the volume stays attached."""

    volume_id: str
    attachment_id: str
    reason: str
    at: dt.datetime


VOLUME_COMMANDS: tuple[type[msgspec.Struct], ...] = (AttachInstanceVolume,
                                                     DetachInstanceVolume)
VOLUME_EVENTS: tuple[type[msgspec.Struct], ...] = (
    InstanceVolumeAttaching, InstanceVolumeReserved, InstanceVolumeAttached,
    InstanceVolumeAttachFailed, InstanceVolumeDetaching, InstanceVolumeDetached,
    InstanceVolumeDetachFailed,
)


# -- decide ----------------------------------------------------------------------------------


def _limit(seconds: float) -> dt.timedelta:
    return dt.timedelta(seconds=seconds)


def _in_flight(state: InstanceState) -> list[VolumeSlot]:
    return [s for s in state.volumes.values() if s.state != ATTACHED]


def _arm(state: InstanceState, deadline: dt.datetime, ctx: Context) -> Events:
    """The timer due at ``deadline`` unless one is due sooner."""
    if state.volume_timer_at is not None and state.volume_timer_at <= deadline:
        return []
    cancel = [TimerCancelled(timer_id=state.volume_timer)] if state.volume_timer else []
    return [*cancel, TimerSet(timer_id=ctx.derive_id(8), name=TIMER, fire_at=deadline)]


def _settled(state: InstanceState, volume_id: str) -> Events:
    """Cancel the timer when the step of ``volume_id`` was the last in flight."""
    rest = [s for s in _in_flight(state) if s.volume_id != volume_id]
    return [TimerCancelled(timer_id=state.volume_timer)] if state.volume_timer and not rest \
        else []


def _require(state: InstanceState, action: str, server: str) -> None:
    if state.vm_state not in _ATTACHABLE or state.task_state is not None:
        task = f" (task_state {state.task_state})" if state.task_state else ""
        raise Rejected("conflict", f"Cannot '{action}' instance {server} while it is in"
                       f" vm_state {state.vm_state}{task}")


def pick_device(state: InstanceState, asked: str | None) -> str:
    """The guest device for a new volume: ``asked`` (``/dev/vdc`` or ``vdc``) when free,
    else the first free after the boot disk; Rejected bad_request when none is."""
    used = {"vda", *(s.device for s in state.volumes.values())}
    if asked:
        match = _DEVICE.match(asked)
        if match is None:
            raise Rejected("bad_request", f"The supplied device path ({asked}) is invalid.")
        if match.group(1) in used:
            raise Rejected("bad_request", f"The supplied device path ({asked}) is in use.")
        return match.group(1)
    for letter in "bcdefghijklmnopqrstuvwxyz":
        if f"vd{letter}" not in used:
            return f"vd{letter}"
    raise Rejected("bad_request", "No free disk device names for prefix 'vd'")


def decide_attach(state: InstanceState, cmd: AttachInstanceVolume, ctx: Context,
                  limit: float) -> Events:
    held = state.volumes.get(cmd.volume_id)
    if held is not None and held.attachment_id == cmd.attachment_id:
        return []  # a redelivery: under way or done
    _require(state, "attach_volume", ctx.actor_id)
    if held is not None:
        raise Rejected("bad_request", f"Invalid volume: volume {cmd.volume_id} is already"
                       f" attached to server {ctx.actor_id}")
    if state.host is None:
        raise Rejected("conflict", f"Cannot 'attach_volume' instance {ctx.actor_id}: it"
                       " runs on no host")
    device = pick_device(state, cmd.device)
    return [InstanceVolumeAttaching(
        volume_id=cmd.volume_id, attachment_id=cmd.attachment_id, device=device,
        delete_on_termination=cmd.delete_on_termination, tag=cmd.tag,
        request=ctx.derive_id(3), at=ctx.now), *_arm(state, ctx.now + _limit(limit), ctx)]


def decide_detach(state: InstanceState, cmd: DetachInstanceVolume, ctx: Context,
                  limit: float) -> Events:
    slot = state.volumes.get(cmd.volume_id)
    if slot is None:
        raise Rejected("not_found", f"volume_id not found: {cmd.volume_id}")
    if slot.state == DETACHING:
        return []
    _require(state, "detach_volume", ctx.actor_id)
    if slot.state != ATTACHED:
        raise Rejected("conflict", f"Cannot 'detach_volume' volume {cmd.volume_id} of"
                       f" instance {ctx.actor_id} while it is {slot.state}")
    detaching = InstanceVolumeDetaching(volume_id=cmd.volume_id, request=ctx.derive_id(3),
                                        at=ctx.now)
    if state.host is None:  # no domain to take it from
        return [detaching, InstanceVolumeDetached(volume_id=cmd.volume_id, at=ctx.now,
                                                  attachment_id=slot.attachment_id)]
    return [detaching, *_arm(state, ctx.now + _limit(limit), ctx)]


def on_reply(state: InstanceState, reply: Reply, ctx: Context,
             limit: float) -> Events | None:
    """The answer to a step of the saga (None: not one of ours)."""
    slot = next((s for s in state.volumes.values() if s.awaiting == reply.command_id), None)
    if slot is None:
        return None
    if reply.partial:
        return []
    vid = slot.volume_id
    if slot.state == RESERVING:
        connection = _CONNECTION.decode(reply.result) if reply.ok and reply.result else None
        if connection is None or state.host is None:
            why = reply.error or "the volume gave no connection"
            return [*_settled(state, vid), _attach_failed(slot, why, ctx)]
        return [InstanceVolumeReserved(
            volume_id=vid, storage_host=connection.host, path=connection.path,
            format=connection.format, request=ctx.derive_id(3), at=ctx.now),
            *_arm(state, ctx.now + _limit(limit), ctx)]
    if slot.state == ATTACHING:
        if not reply.ok:
            return [*_settled(state, vid), _attach_failed(slot, f"The host could not attach"
                                                          f" the volume: {reply.error}", ctx)]
        return [*_settled(state, vid), InstanceVolumeAttached(volume_id=vid, at=ctx.now)]
    if slot.state == DETACHING:
        if not reply.ok:
            return [*_settled(state, vid), InstanceVolumeDetachFailed(
                volume_id=vid, attachment_id=slot.attachment_id, at=ctx.now,
                reason=f"The host could not detach the volume: {reply.error}")]
        return [*_settled(state, vid), InstanceVolumeDetached(
            volume_id=vid, attachment_id=slot.attachment_id, at=ctx.now)]
    return []


def _attach_failed(slot: VolumeSlot, reason: str, ctx: Context, *,
                   cleanup: bool = False) -> InstanceVolumeAttachFailed:
    return InstanceVolumeAttachFailed(volume_id=slot.volume_id,
                                      attachment_id=slot.attachment_id, device=slot.device,
                                      reason=reason, cleanup=cleanup, at=ctx.now)


def on_timer(state: InstanceState, fired: TimerFired, ctx: Context) -> Events:
    """Every step past its deadline fails; the timer is set again for the next one."""
    if fired.name != TIMER or fired.timer_id != state.volume_timer:
        return []
    events: list[msgspec.Struct] = []
    later: list[dt.datetime] = []
    for slot in _in_flight(state):
        if slot.deadline is None or slot.deadline > ctx.now:
            if slot.deadline is not None:
                later.append(slot.deadline)
            continue
        if slot.state == DETACHING:
            events.append(InstanceVolumeDetachFailed(
                volume_id=slot.volume_id, attachment_id=slot.attachment_id, at=ctx.now,
                reason="Timed out detaching the volume"))
        else:
            events.append(_attach_failed(slot, f"Timed out {slot.state} the volume", ctx,
                                         cleanup=slot.state == ATTACHING))
    if later:
        events.append(TimerSet(timer_id=ctx.derive_id(8), name=TIMER, fire_at=min(later)))
    return events


# -- effects ---------------------------------------------------------------------------------


def effects(state: InstanceState, event: msgspec.Struct, ctx: Context,
            timeout: float) -> list[object]:
    """What to send once ``event`` is recorded (``state`` is after it)."""
    sid = ctx.actor_id
    match event:
        case InstanceVolumeAttaching(volume_id=vid, attachment_id=aid, request=request):
            return [Tell(kind=VOLUME_KIND, actor_id=vid, request_id=request, timeout=timeout,
                         command=ReserveVolume(server_id=sid, attachment_id=aid))]
        case InstanceVolumeReserved(volume_id=vid, request=request) if state.host:
            slot = state.volumes[vid]
            disk = VolumeDisk(device=slot.device, path=slot.path, serial=vid,
                              format="qcow2" if slot.format == "qcow2" else "raw")
            return [TellHost(host=state.host, request_id=request, timeout=timeout,
                             command=AttachVolume(instance_id=sid, volume_id=vid, disk=disk))]
        case InstanceVolumeAttached(volume_id=vid):
            slot = state.volumes[vid]
            return [Tell(kind=VOLUME_KIND, actor_id=vid, request_id=f"{ctx.message_id}/done",
                         command=CompleteAttach(attachment_id=slot.attachment_id,
                                                server_id=sid, host_name=state.host,
                                                device=f"/dev/{slot.device}"))]
        case InstanceVolumeAttachFailed(volume_id=vid, attachment_id=aid, device=device,
                                        cleanup=cleanup):
            out: list[object] = [Tell(kind=VOLUME_KIND, actor_id=vid,
                                      request_id=f"{ctx.message_id}/unreserve/{vid}",
                                      command=Unreserve(attachment_id=aid))]
            if cleanup and state.host:  # whenever the host gets to it, however late
                out.append(TellHost(host=state.host, timeout=CLEANUP_TIMEOUT,
                                    request_id=f"{ctx.message_id}/cleanup/{vid}",
                                    command=DetachVolume(instance_id=sid, volume_id=vid,
                                                         device=device)))
            return out
        case InstanceVolumeDetaching(volume_id=vid, request=request):
            slot = state.volumes[vid]
            out = [Tell(kind=VOLUME_KIND, actor_id=vid, request_id=f"{ctx.message_id}/begin",
                        command=BeginDetach(attachment_id=slot.attachment_id))]
            if state.host:
                out.append(TellHost(host=state.host, request_id=request, timeout=timeout,
                                    command=DetachVolume(instance_id=sid, volume_id=vid,
                                                         device=slot.device)))
            return out
        case InstanceVolumeDetached(volume_id=vid, attachment_id=aid):
            return [Tell(kind=VOLUME_KIND, actor_id=vid, request_id=f"{ctx.message_id}/done",
                         command=CompleteDetach(attachment_id=aid))]
        case InstanceVolumeDetachFailed(volume_id=vid, attachment_id=aid):
            return [Tell(kind=VOLUME_KIND, actor_id=vid, request_id=f"{ctx.message_id}/back",
                         command=RollbackDetach(attachment_id=aid))]
    return []


def release_all(state: InstanceState, ctx: Context) -> list[Tell]:
    """The server is gone: each volume it had is detached (deleted with it when
    delete_on_termination), each it was attaching is given up."""
    out: list[Tell] = []
    for slot in state.volumes.values():
        command: msgspec.Struct
        if slot.state in (RESERVING, ATTACHING):
            command = Unreserve(attachment_id=slot.attachment_id)
        else:
            command = CompleteDetach(attachment_id=slot.attachment_id,
                                     delete=slot.delete_on_termination)
        out.append(Tell(kind=VOLUME_KIND, actor_id=slot.volume_id, command=command,
                        request_id=f"{ctx.message_id}/release/{slot.volume_id}"))
    return out


# -- evolve and the query --------------------------------------------------------------------


def evolve(state: InstanceState, event: msgspec.Struct, limits: tuple[float, float]) -> bool:
    """Fold ``event`` if it is the saga's (True), else leave the state alone (False)."""
    attach, detach = (_limit(x) for x in limits)
    slots = state.volumes
    match event:
        case InstanceVolumeAttaching(volume_id=vid, at=at):
            state.volumes = {**slots, vid: VolumeSlot(
                volume_id=vid, attachment_id=event.attachment_id, device=event.device,
                state=RESERVING, delete_on_termination=event.delete_on_termination,
                tag=event.tag, awaiting=event.request, deadline=at + attach)}
        case InstanceVolumeReserved(volume_id=vid, request=request, at=at):
            slot = slots[vid]
            slot.state, slot.awaiting, slot.deadline = ATTACHING, request, at + attach
            slot.storage_host, slot.path, slot.format = event.storage_host, event.path, \
                event.format
        case InstanceVolumeAttached(volume_id=vid):
            slot = slots[vid]
            slot.state, slot.awaiting, slot.deadline = ATTACHED, None, None
        case InstanceVolumeAttachFailed(volume_id=vid) | InstanceVolumeDetached(volume_id=vid):
            state.volumes = {k: v for k, v in slots.items() if k != vid}
        case InstanceVolumeDetaching(volume_id=vid, request=request, at=at):
            slot = slots[vid]
            slot.state, slot.awaiting, slot.deadline = DETACHING, request, at + detach
        case InstanceVolumeDetachFailed(volume_id=vid):
            slot = slots[vid]
            slot.state, slot.awaiting, slot.deadline = ATTACHED, None, None
        case TimerSet(timer_id=tid, name=name, fire_at=at) if name == TIMER:
            state.volume_timer, state.volume_timer_at = tid, at
        case TimerFired(timer_id=tid) | TimerCancelled(timer_id=tid) \
                if tid == state.volume_timer:
            state.volume_timer, state.volume_timer_at = None, None
        case _:
            return False
    return True


def answer(state: InstanceState, query: CheckVolumeAttachment, gone: bool) -> str:
    """What the server has of attachment ``query.attachment_id``."""
    slot = state.volumes.get(query.volume_id)
    if gone or slot is None or slot.attachment_id != query.attachment_id:
        return "gone"
    if slot.state == ATTACHED:
        return f"attached {state.host or '-'} /dev/{slot.device}"
    return DETACHING if slot.state == DETACHING else ATTACHING
