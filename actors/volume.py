"""The ``volume`` actor kind: one Cinder volume, its file on a storage host, its attachments.

Statuses follow Cinder:

    creating -> available -> attaching -> in-use -> detaching -> available
    available -> extending -> available          available|error -> deleting -> (gone)
    creating -> error (with a reason)            deleting -> error_deleting

Create: ``volume.created`` (creating) -> effect PlaceVolume (the scheduler claims block
storage on the storage host with most room) -> ``volume.scheduled`` -> the storage host
makes the file (``storage.create``, filled from the image for a volume from an image) ->
``volume.made`` (available). Extend grows the host's claim first (``host.claim`` with
``resize``), then the file. Delete removes the file and releases the claim (the host
reacts to ``volume.deleted``); it is refused while attached or in a transitional state.

Attach and detach belong to the attach saga of the instance (actors.instance_volumes),
which tells the volume each step: reserve (attaching; refused unless available, so of
many servers asking at once exactly one gets it), attach done (in-use), unreserve
(available), begin detach (detaching), detach done (available), rollback detach. A
pending attach or detach has a lease: when it runs out the volume asks the server
(``instance.check_volume``) and settles on its answer, so a lost message never leaves a
volume attaching or detaching forever.

Every transitional status has a deadline (one durable timer): a create that misses it
fails (error), an extend goes back to available at its old size, a delete ends in
error_deleting.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Sequence

import msgspec

from actors.host import KIND as HOST_KIND, Claim
from actors.kind import ActorKind, Context, Events, Rejected, Tell, TellHost
from actors.volume_messages import (
    VOLUME_COMMANDS,
    VOLUME_EVENTS,
    Attachment,
    BeginDetach,
    CheckVolumeAttachment,
    CompleteAttach,
    CompleteDetach,
    Connection,
    CreateVolume,
    DeleteVolume,
    ExtendVolume,
    PlaceVolume,
    ReserveVolume,
    RollbackDetach,
    Unreserve,
    UpdateVolume,
    VolumeAttached,
    VolumeAttachmentChecking,
    VolumeClaimRefused,
    VolumeCreated,
    VolumeDeleted,
    VolumeDeleteFailed,
    VolumeDeleting,
    VolumeDetached,
    VolumeDetaching,
    VolumeDetachRolledBack,
    VolumeExtendClaimed,
    VolumeExtended,
    VolumeExtendFailed,
    VolumeExtending,
    VolumeFailed,
    VolumeImage,
    VolumeMade,
    VolumeReserved,
    VolumeScheduled,
    VolumeUnreserved,
    VolumeUpdated,
)
from schemas import ENCODER, Reply, TimerCancelled, TimerFired, TimerSet
from schemas.hostd import ImageRef, VolumeFormat
from schemas.storage import (
    VOLUME_FILE_DECODER,
    CreateVolumeFile,
    DeleteVolumeFile,
    ExtendVolumeFile,
)

KIND = "volume"
DEADLINE_TIMER = "deadline"
INSTANCE_KIND = "instance"
MAX_PLACEMENTS = 3

CREATING, AVAILABLE, ATTACHING, IN_USE = "creating", "available", "attaching", "in-use"
DETACHING, EXTENDING, DELETING, DELETED = "detaching", "extending", "deleting", "deleted"
ERROR, ERROR_DELETING = "error", "error_deleting"
#: statuses a volume may be deleted in (Cinder's, of those we have)
DELETABLE = (AVAILABLE, ERROR, ERROR_DELETING)
IN_USE_REFUSAL = (
    "Invalid volume: Volume status must be available or error or error_restoring or"
    " error_extending or error_managing and must not be migrating, attached, belong to a"
    " group, have snapshots, awaiting a transfer, or be disassociated from snapshots after"
    " volume transfer.")


class VolumeDeadlines(msgspec.Struct, frozen=True, kw_only=True):
    """Seconds each transitional status may take; ``lease`` is how long an attach or a
    detach may stay pending before the volume asks its server (longer than the
    instance's own attach deadline)."""

    creating: float = 600.0
    extending: float = 120.0
    deleting: float = 120.0
    lease: float = 180.0

    def of(self, status: str) -> float:
        if status in (ATTACHING, DETACHING):
            return self.lease
        return float(getattr(self, status))


class VolumeState(msgspec.Struct, kw_only=True):
    """The fold of one volume's stream."""

    exists: bool = False
    project_id: str = ""
    name: str = ""
    description: str | None = None
    metadata: dict[str, str] = {}
    size: int = 0
    status: str = CREATING
    image: VolumeImage | None = None
    host: str | None = None
    path: str = ""
    format: VolumeFormat = "raw"
    attachments: list[Attachment] = []
    #: the attach (server, attachment id) pending while attaching
    pending: tuple[str, str] | None = None
    detaching: str | None = None
    new_size: int = 0
    awaiting: str | None = None
    refused: list[str] = []
    deadline: dt.datetime | None = None
    timer: str | None = None


def _attachment(state: VolumeState, attachment_id: str) -> Attachment | None:
    return next((a for a in state.attachments if a.attachment_id == attachment_id), None)


class VolumeDecider:
    """decide / on_reply / on_timer / effects of the volume kind, with its deadlines."""

    def __init__(self, deadlines: VolumeDeadlines) -> None:
        self.deadlines = deadlines

    def decide(self, state: VolumeState, command: msgspec.Struct, ctx: Context) -> Events:
        if isinstance(command, CreateVolume):
            if state.exists:
                raise Rejected("conflict", f"Volume {ctx.actor_id} already exists.")
            fields = msgspec.structs.asdict(command)
            return [VolumeCreated(volume_id=ctx.actor_id, request=ctx.derive_id(), at=ctx.now,
                                  **fields), *self._arm(state, CREATING, ctx)]
        if not state.exists or state.status == DELETED:
            if isinstance(command, CompleteDetach | Unreserve | RollbackDetach):
                return []  # a late word about a volume that went
            raise Rejected("not_found", f"Volume {ctx.actor_id} could not be found.")
        match command:
            case UpdateVolume(name=name, description=description, metadata=metadata):
                return [VolumeUpdated(
                    name=state.name if name is None else name,
                    description=state.description if description is None else description,
                    metadata=state.metadata if metadata is None else metadata, at=ctx.now)]
            case ExtendVolume(new_size=new_size):
                return self._extend(state, new_size, ctx)
            case DeleteVolume():
                return self._delete(state, ctx)
        return self._attach_step(state, command, ctx)

    def _extend(self, state: VolumeState, new_size: int, ctx: Context) -> Events:
        if state.status != AVAILABLE:
            raise Rejected("bad_request", f"Invalid volume: Volume status must be available"
                           f" to extend, but current status is: {state.status}.")
        if new_size <= state.size:
            raise Rejected("bad_request", "Invalid input received: New size for extend must"
                           " be greater than current size. (current: "
                           f"{state.size}, extended: {new_size}).")
        return [VolumeExtending(new_size=new_size, request=ctx.derive_id(), at=ctx.now),
                *self._arm(state, EXTENDING, ctx)]

    def _delete(self, state: VolumeState, ctx: Context) -> Events:
        if state.status not in DELETABLE or state.attachments or state.pending:
            raise Rejected("bad_request", IN_USE_REFUSAL)
        if state.host is None:
            return [*self._disarm(state),
                    VolumeDeleted(volume_id=ctx.actor_id, host=None, at=ctx.now)]
        return [VolumeDeleting(request=ctx.derive_id(), at=ctx.now),
                *self._arm(state, DELETING, ctx)]

    def _attach_step(self, state: VolumeState, command: msgspec.Struct,
                     ctx: Context) -> Events:
        """The instance saga's steps, each idempotent for its attachment id."""
        match command:
            case ReserveVolume(server_id=server, attachment_id=aid):
                if state.pending == (server, aid) or _attachment(state, aid) is not None:
                    return []
                if state.status != AVAILABLE:
                    raise Rejected("bad_request", f"Invalid volume: volume {ctx.actor_id}"
                                   f" status must be 'available'. Currently in"
                                   f" '{state.status}'")
                return [VolumeReserved(server_id=server, attachment_id=aid, at=ctx.now),
                        *self._arm(state, ATTACHING, ctx)]
            case CompleteAttach(attachment_id=aid):
                if _attachment(state, aid) is not None:
                    return []
                if state.pending is None or state.pending[1] != aid:
                    raise Rejected("conflict", f"Volume {ctx.actor_id} has no pending"
                                   f" attachment {aid}")
                return [*self._disarm(state), VolumeAttached(at=ctx.now, attachment=Attachment(
                    attachment_id=aid, server_id=command.server_id,
                    host_name=command.host_name, device=command.device, attached_at=ctx.now))]
            case Unreserve(attachment_id=aid):
                if state.pending is None or state.pending[1] != aid:
                    return []
                return [*self._disarm(state), VolumeUnreserved(attachment_id=aid, at=ctx.now)]
            case BeginDetach(attachment_id=aid):
                if state.detaching == aid:
                    return []
                if _attachment(state, aid) is None or state.status != IN_USE:
                    raise Rejected("bad_request", f"Invalid volume: Volume {ctx.actor_id}"
                                   f" must be in-use with attachment {aid} to detach,"
                                   f" but it is {state.status}.")
                return [VolumeDetaching(attachment_id=aid, at=ctx.now),
                        *self._arm(state, DETACHING, ctx)]
            case CompleteDetach(attachment_id=aid, delete=delete):
                return self._detached(state, aid, delete, ctx)
            case RollbackDetach(attachment_id=aid):
                if state.detaching != aid:
                    return []
                return [*self._disarm(state), VolumeDetachRolledBack(attachment_id=aid,
                                                                     at=ctx.now)]
        raise Rejected("bad_request", f"volume has no command {type(command).__name__}")

    def _detached(self, state: VolumeState, aid: str, delete: bool, ctx: Context) -> Events:
        events: list[msgspec.Struct] = []
        if state.pending is not None and state.pending[1] == aid:
            events.append(VolumeUnreserved(attachment_id=aid, reason="server gone",
                                           at=ctx.now))
        elif _attachment(state, aid) is not None:
            events.append(VolumeDetached(attachment_id=aid, at=ctx.now))
        else:
            return []
        events = [*self._disarm(state), *events]
        if delete and len(state.attachments) <= 1 and state.host is not None:
            return [*events, VolumeDeleting(request=ctx.derive_id(), at=ctx.now),
                    self._timer(ctx, DELETING)]
        return events

    # answers

    def on_reply(self, state: VolumeState, reply: Reply, ctx: Context) -> Events:
        request, _, host = reply.command_id.partition("@")
        if state.awaiting is None or request != state.awaiting or reply.partial:
            return []
        match state.status:
            case "creating" if state.host is None:
                return self._placed(state, reply, host, ctx)
            case "creating":
                if reply.ok and reply.result:
                    made = VOLUME_FILE_DECODER.decode(reply.result)
                    return [*self._disarm(state),
                            VolumeMade(path=made.path, format=made.format, at=ctx.now)]
                return self._fail(state, ctx, f"The storage host {state.host} could not"
                                  f" make the volume: {reply.error}")
            case "extending":
                return self._extend_answer(state, reply, ctx)
            case "deleting":
                if reply.ok:
                    return [*self._disarm(state), VolumeDeleted(
                        volume_id=ctx.actor_id, host=state.host, at=ctx.now)]
                if reply.retryable:
                    return []  # the deadline ends it
                return [*self._disarm(state),
                        VolumeDeleteFailed(reason=reply.error or "failed", at=ctx.now)]
            case "attaching" | "detaching":
                return self._checked(state, reply, ctx)
        return []

    def _placed(self, state: VolumeState, reply: Reply, host: str, ctx: Context) -> Events:
        if reply.ok and host:
            return [VolumeScheduled(host=host, request=ctx.derive_id(), at=ctx.now)]
        if reply.error_type == "no_valid_host" or not host:
            return self._fail(state, ctx, "No valid backend was found. "
                              + (reply.error or "").removeprefix("No valid host was found. "))
        refused = [*state.refused, host]
        if len(refused) >= MAX_PLACEMENTS:
            return self._fail(state, ctx, "No valid backend was found. Claims refused by "
                              + ", ".join(refused) + f"; last: {reply.error}")
        return [VolumeClaimRefused(host=host, reason=reply.error or "refused",
                                   request=ctx.derive_id(), at=ctx.now)]

    def _extend_answer(self, state: VolumeState, reply: Reply, ctx: Context) -> Events:
        claimed = "/grow" in (state.awaiting or "")
        if not reply.ok:
            return [*self._disarm(state), VolumeExtendFailed(
                reason=reply.error or "failed", claimed=claimed, at=ctx.now)]
        if not claimed:
            return [VolumeExtendClaimed(request=f"{ctx.derive_id()}/grow", at=ctx.now)]
        return [*self._disarm(state), VolumeExtended(size=state.new_size, at=ctx.now)]

    def _checked(self, state: VolumeState, reply: Reply, ctx: Context) -> Events:
        """The server's answer about an overdue attach or detach."""
        if not reply.ok:
            return []  # asked again when the lease runs out once more
        answer = (reply.result or "gone").split(" ")
        attaching = state.pending
        if state.status == ATTACHING and attaching is not None:
            if answer[0] == "attached":
                host = answer[1] if len(answer) > 1 and answer[1] != "-" else None
                return [*self._disarm(state), VolumeAttached(at=ctx.now, attachment=Attachment(
                    attachment_id=attaching[1], server_id=attaching[0], host_name=host,
                    device=answer[2] if len(answer) > 2 else "", attached_at=ctx.now))]
            if answer[0] == "gone":
                return [*self._disarm(state), VolumeUnreserved(
                    attachment_id=attaching[1], reason="the server does not have it",
                    at=ctx.now)]
        if state.status == DETACHING and state.detaching is not None:
            if answer[0] == "attached":
                return [*self._disarm(state), VolumeDetachRolledBack(
                    attachment_id=state.detaching, at=ctx.now)]
            if answer[0] == "gone":
                return [*self._disarm(state), VolumeDetached(attachment_id=state.detaching,
                                                             at=ctx.now)]
        return []

    # deadlines

    def on_timer(self, state: VolumeState, fired: TimerFired, ctx: Context) -> Events:
        if fired.name != DEADLINE_TIMER or state.deadline is None:
            return []
        if ctx.now < state.deadline:
            return [self._timer(ctx, state.status, at=state.deadline)]
        match state.status:
            case "creating":
                where = f" on {state.host}" if state.host else " (scheduling)"
                return self._fail(state, ctx, f"Timed out creating the volume{where} after"
                                  f" {self.deadlines.creating:g} s", timer_fired=True)
            case "extending":
                return [VolumeExtendFailed(reason="timed out", at=ctx.now,
                                           claimed="/grow" in (state.awaiting or ""))]
            case "deleting":
                return [VolumeDeleteFailed(reason=f"The storage host {state.host} did not"
                                           " confirm the delete in time", at=ctx.now)]
            case "attaching" | "detaching":
                aid = state.pending[1] if state.pending else state.detaching
                server = state.pending[0] if state.pending else next(
                    (a.server_id for a in state.attachments if a.attachment_id == aid), "")
                if aid is None or not server:
                    return []
                return [VolumeAttachmentChecking(attachment_id=aid, server_id=server,
                                                 request=ctx.derive_id(), at=ctx.now),
                        self._timer(ctx, state.status)]
        return []

    def _fail(self, state: VolumeState, ctx: Context, reason: str, *,
              timer_fired: bool = False) -> Events:
        failed = VolumeFailed(volume_id=ctx.actor_id, host=state.host, reason=reason,
                              at=ctx.now)
        return [failed] if timer_fired else [*self._disarm(state), failed]

    def _arm(self, state: VolumeState, status: str, ctx: Context) -> Events:
        return [*self._disarm(state), self._timer(ctx, status)]

    def _timer(self, ctx: Context, status: str, at: dt.datetime | None = None) -> TimerSet:
        fire_at = at or ctx.now + dt.timedelta(seconds=self.deadlines.of(status))
        return TimerSet(timer_id=ctx.derive_id(7), name=DEADLINE_TIMER, fire_at=fire_at)

    @staticmethod
    def _disarm(state: VolumeState) -> Events:
        return [TimerCancelled(timer_id=state.timer)] if state.timer else []

    # effects

    def effects(self, state: VolumeState, events: Events, ctx: Context) -> Sequence[object]:
        out: list[object] = []
        for event in events:
            match event:
                case VolumeCreated() | VolumeClaimRefused() if state.status == CREATING:
                    assert state.awaiting is not None
                    out.append(PlaceVolume(volume_id=ctx.actor_id, request=state.awaiting,
                                           size_gb=state.size, exclude=tuple(state.refused)))
                case VolumeScheduled(host=host, request=request):
                    out.append(TellHost(host=host, request_id=request,
                                        timeout=self.deadlines.creating,
                                        command=CreateVolumeFile(
                                            volume_id=ctx.actor_id, size_gb=state.size,
                                            image=_image_ref(state.image))))
                case VolumeFailed(host=host) if host is not None:
                    out.append(TellHost(host=host, request_id=f"{ctx.message_id}/cleanup",
                                        command=DeleteVolumeFile(volume_id=ctx.actor_id),
                                        timeout=self.deadlines.deleting))
                case VolumeExtending(new_size=size, request=request) if state.host:
                    out.append(Tell(kind=HOST_KIND, actor_id=state.host, request_id=request,
                                    command=Claim(instance_id=ctx.actor_id, volume_gb=size,
                                                  resize=True)))
                case VolumeExtendClaimed(request=request) if state.host:
                    out.append(TellHost(host=state.host, request_id=request,
                                        timeout=self.deadlines.extending,
                                        command=ExtendVolumeFile(volume_id=ctx.actor_id,
                                                                 size_gb=state.new_size)))
                case VolumeExtendFailed(claimed=True) if state.host:
                    out.append(Tell(kind=HOST_KIND, actor_id=state.host,
                                    request_id=f"{ctx.message_id}/shrink",
                                    command=Claim(instance_id=ctx.actor_id,
                                                  volume_gb=state.size, resize=True)))
                case VolumeDeleting(request=request) if state.host:
                    out.append(TellHost(host=state.host, request_id=request,
                                        command=DeleteVolumeFile(volume_id=ctx.actor_id),
                                        timeout=self.deadlines.deleting))
                case VolumeAttachmentChecking(server_id=server, request=request,
                                              attachment_id=aid):
                    out.append(Tell(kind=INSTANCE_KIND, actor_id=server, request_id=request,
                                    command=CheckVolumeAttachment(volume_id=ctx.actor_id,
                                                                  attachment_id=aid)))
        return out


def _image_ref(image: VolumeImage | None) -> ImageRef | None:
    if image is None or not image.sha512:
        return None
    return ImageRef(image_id=image.id, sha512=image.sha512, disk_format=image.disk_format,
                    size=image.size)


# -- evolve ----------------------------------------------------------------------------------


class VolumeEvolver:
    """evolve of the volume kind: needs the deadlines to record each status's."""

    def __init__(self, deadlines: VolumeDeadlines) -> None:
        self.deadlines = deadlines

    def _status(self, state: VolumeState, status: str, at: dt.datetime) -> None:
        state.status = status
        transitional = status in (CREATING, EXTENDING, DELETING, ATTACHING, DETACHING)
        state.deadline = at + dt.timedelta(seconds=self.deadlines.of(status)) \
            if transitional else None

    def evolve(self, state: VolumeState, event: msgspec.Struct) -> VolumeState:
        match event:
            case VolumeCreated():
                state.exists, state.project_id, state.name = True, event.project_id, event.name
                state.description, state.metadata = event.description, event.metadata
                state.size, state.image, state.awaiting = event.size, event.image, event.request
                self._status(state, CREATING, event.at)
            case VolumeClaimRefused(host=host, request=request):
                state.refused, state.awaiting = [*state.refused, host], request
            case VolumeScheduled(host=host, request=request):
                state.host, state.awaiting = host, request
            case VolumeMade(path=path, format=fmt, at=at):
                state.path, state.format, state.awaiting = path, fmt, None
                self._status(state, AVAILABLE, at)
            case VolumeFailed(at=at):
                state.awaiting = None
                self._status(state, ERROR, at)
            case VolumeUpdated(name=name, description=description, metadata=metadata):
                state.name, state.description, state.metadata = name, description, metadata
            case VolumeExtending(new_size=size, request=request, at=at):
                state.new_size, state.awaiting = size, request
                self._status(state, EXTENDING, at)
            case VolumeExtendClaimed(request=request):
                state.awaiting = request
            case VolumeExtended(size=size, at=at):
                state.size, state.awaiting = size, None
                self._status(state, AVAILABLE, at)
            case VolumeExtendFailed(at=at):
                state.awaiting = None
                self._status(state, AVAILABLE, at)
            case VolumeReserved(server_id=server, attachment_id=aid, at=at):
                state.pending = (server, aid)
                self._status(state, ATTACHING, at)
            case VolumeAttached(attachment=attachment, at=at):
                state.attachments = [*state.attachments, attachment]
                state.pending, state.awaiting = None, None
                self._status(state, IN_USE, at)
            case VolumeUnreserved(at=at):
                state.pending, state.awaiting = None, None
                self._status(state, IN_USE if state.attachments else AVAILABLE, at)
            case VolumeDetaching(attachment_id=aid, at=at):
                state.detaching = aid
                self._status(state, DETACHING, at)
            case VolumeDetached(attachment_id=aid, at=at):
                state.attachments = [a for a in state.attachments if a.attachment_id != aid]
                state.detaching, state.awaiting = None, None
                self._status(state, IN_USE if state.attachments else AVAILABLE, at)
            case VolumeDetachRolledBack(at=at):
                state.detaching, state.awaiting = None, None
                self._status(state, IN_USE, at)
            case VolumeAttachmentChecking(request=request):
                state.awaiting = request
            case VolumeDeleting(request=request, at=at):
                state.awaiting = request
                self._status(state, DELETING, at)
            case VolumeDeleteFailed(at=at):
                state.awaiting = None
                self._status(state, ERROR_DELETING, at)
            case VolumeDeleted(at=at):
                state.awaiting, state.attachments, state.pending = None, [], None
                self._status(state, DELETED, at)
            case TimerSet(timer_id=tid, name=name) if name == DEADLINE_TIMER:
                state.timer = tid
            case TimerFired(timer_id=tid) | TimerCancelled(timer_id=tid) if tid == state.timer:
                state.timer = None
        return state


def result(state: VolumeState, command: msgspec.Struct, ctx: Context) -> str | None:
    """A reservation answers with how to reach the volume (JSON `Connection`)."""
    if isinstance(command, ReserveVolume) and state.host:
        return ENCODER.encode(Connection(host=state.host, path=state.path,
                                         format=state.format, size=state.size)).decode()
    return None


def initial(_actor_id: str) -> VolumeState:
    return VolumeState()


def make_volume_kind(deadlines: VolumeDeadlines | None = None, *,
                     snapshot_every: int = 100) -> ActorKind[VolumeState]:
    """The ``volume`` kind with these deadlines."""
    limits = deadlines or VolumeDeadlines()
    decider = VolumeDecider(limits)
    return ActorKind(
        name=KIND, state_type=VolumeState, initial=initial, decide=decider.decide,
        evolve=VolumeEvolver(limits).evolve, commands=VOLUME_COMMANDS, events=VOLUME_EVENTS,
        on_timer=decider.on_timer, on_reply=decider.on_reply, effects=decider.effects,
        result=result, snapshot_every=snapshot_every)


def deadlines_from_env() -> VolumeDeadlines:
    """``ORRERY_VOLUME_DEADLINES``: ``status=seconds,...`` overrides (e.g. for tests)."""
    raw = os.environ.get("ORRERY_VOLUME_DEADLINES", "")
    overrides: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in raw.split(","))):
        key, _, value = part.partition("=")
        overrides[key.strip()] = float(value)
    return VolumeDeadlines(**overrides)


#: the volume kind with the configured deadlines
VOLUME = make_volume_kind(deadlines_from_env())
