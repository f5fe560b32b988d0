"""The ``volume`` kind's commands, events and the effect that places a volume (no logic).

Commands come from the gateway (create, update, extend, delete) and from the attach
saga of an instance (reserve, attach done, unreserve, begin detach, detach done,
rollback detach), which owns both sides of an attachment; see actors.volume.
"""

from __future__ import annotations

import datetime as dt

import msgspec

from schemas.hostd import DiskFormat, VolumeFormat


class VolumeImage(msgspec.Struct, frozen=True, kw_only=True):
    """The image a volume is made from, as the image service had it at create time."""

    id: str
    name: str = ""
    size: int = 0
    sha512: str = ""
    checksum: str = ""
    disk_format: DiskFormat = "raw"
    container_format: str = "bare"


class Attachment(msgspec.Struct, frozen=True, kw_only=True):
    """One attachment of a volume, as Cinder shows it: the server, the compute host the
    server runs on, the guest device and when it was attached."""

    attachment_id: str
    server_id: str
    host_name: str | None
    device: str
    attached_at: dt.datetime


# -- commands from the gateway ---------------------------------------------------------------


class CreateVolume(msgspec.Struct, frozen=True, kw_only=True, tag="volume.create"):
    """Create a volume of ``size`` GiB (empty, or holding ``image``)."""

    name: str = ""
    description: str | None = None
    project_id: str
    user_id: str
    size: int
    metadata: dict[str, str] = {}
    volume_type: str = "__DEFAULT__"
    availability_zone: str = "nova"
    image: VolumeImage | None = None


class UpdateVolume(msgspec.Struct, frozen=True, kw_only=True, tag="volume.update"):
    """Change name, description or metadata (None: unchanged)."""

    name: str | None = None
    description: str | None = None
    metadata: dict[str, str] | None = None


class ExtendVolume(msgspec.Struct, frozen=True, kw_only=True, tag="volume.extend"):
    """``os-extend``: grow the volume to ``new_size`` GiB."""

    new_size: int


class DeleteVolume(msgspec.Struct, frozen=True, kw_only=True, tag="volume.delete"):
    """Delete the volume (refused while attached or in a transitional state)."""


# -- commands from an instance's attach saga ---------------------------------------------------


class ReserveVolume(msgspec.Struct, frozen=True, kw_only=True, tag="volume.reserve"):
    """Take the volume for ``server_id`` as attachment ``attachment_id`` (attaching), or
    refuse; the Reply's result is the JSON `Connection` to attach it with."""

    server_id: str
    attachment_id: str


class CompleteAttach(msgspec.Struct, frozen=True, kw_only=True, tag="volume.attach_done"):
    """The disk is attached to the server's domain: in-use with this attachment."""

    attachment_id: str
    server_id: str
    host_name: str | None
    device: str


class Unreserve(msgspec.Struct, frozen=True, kw_only=True, tag="volume.unreserve"):
    """The attach of ``attachment_id`` was given up: available again (only when that
    attachment is the one pending)."""

    attachment_id: str


class BeginDetach(msgspec.Struct, frozen=True, kw_only=True, tag="volume.begin_detach"):
    """The server is detaching the volume: detaching."""

    attachment_id: str


class CompleteDetach(msgspec.Struct, frozen=True, kw_only=True, tag="volume.detach_done"):
    """The attachment is gone from the server (detached, or the server was deleted):
    available; with ``delete`` (the server's delete_on_termination), deleted after."""

    attachment_id: str
    delete: bool = False


class RollbackDetach(msgspec.Struct, frozen=True, kw_only=True,
                     tag="volume.detach_rollback"):
    """The detach failed on the host: in-use again."""

    attachment_id: str


class Connection(msgspec.Struct, frozen=True, kw_only=True):
    """How a compute host reaches a volume: its file on the storage host ``host``."""

    host: str
    path: str
    format: VolumeFormat
    size: int


# -- events ------------------------------------------------------------------------------------


class VolumeCreated(msgspec.Struct, frozen=True, kw_only=True, tag="volume.created"):
    """The volume exists (creating); ``request`` is the placement request id."""

    volume_id: str
    name: str
    description: str | None
    project_id: str
    user_id: str
    size: int
    metadata: dict[str, str] = {}
    volume_type: str
    availability_zone: str
    image: VolumeImage | None = None
    request: str
    at: dt.datetime


class VolumeClaimRefused(msgspec.Struct, frozen=True, kw_only=True,
                         tag="volume.claim_refused"):
    """The chosen storage host had no room after all; placement ``request`` tries others."""

    host: str
    reason: str
    request: str
    at: dt.datetime


class VolumeScheduled(msgspec.Struct, frozen=True, kw_only=True, tag="volume.scheduled"):
    """A claim on storage host ``host`` holds; its file is asked for as ``request``."""

    host: str
    request: str
    at: dt.datetime


class VolumeMade(msgspec.Struct, frozen=True, kw_only=True, tag="volume.made"):
    """The storage host made the file: available."""

    path: str
    format: VolumeFormat
    at: dt.datetime


class VolumeFailed(msgspec.Struct, frozen=True, kw_only=True, tag="volume.failed"):
    """The create failed or timed out: error with ``reason``; the claim on ``host`` (if
    any) is released."""

    volume_id: str
    host: str | None
    reason: str
    at: dt.datetime


class VolumeUpdated(msgspec.Struct, frozen=True, kw_only=True, tag="volume.updated"):
    """Name, description and metadata as they are now."""

    name: str
    description: str | None
    metadata: dict[str, str]
    at: dt.datetime


class VolumeExtending(msgspec.Struct, frozen=True, kw_only=True, tag="volume.extending"):
    """Extend to ``new_size`` asked: the storage host's claim grows first (``request``)."""

    new_size: int
    request: str
    at: dt.datetime


class VolumeExtendClaimed(msgspec.Struct, frozen=True, kw_only=True,
                          tag="volume.extend_claimed"):
    """The bigger claim holds; the file is grown as ``request``."""

    request: str
    at: dt.datetime


class VolumeExtended(msgspec.Struct, frozen=True, kw_only=True, tag="volume.extended"):
    """The volume is ``size`` GiB now: available."""

    size: int
    at: dt.datetime


class VolumeExtendFailed(msgspec.Struct, frozen=True, kw_only=True,
                         tag="volume.extend_failed"):
    """The extend failed or timed out: available at its old size (a grown claim shrinks
    back when ``claimed``)."""

    reason: str
    claimed: bool
    at: dt.datetime


class VolumeReserved(msgspec.Struct, frozen=True, kw_only=True, tag="volume.reserved"):
    """Taken for ``server_id`` as ``attachment_id``: attaching."""

    server_id: str
    attachment_id: str
    at: dt.datetime


class VolumeAttached(msgspec.Struct, frozen=True, kw_only=True, tag="volume.attached"):
    """The server has the disk: in-use with ``attachment``."""

    attachment: Attachment
    at: dt.datetime


class VolumeUnreserved(msgspec.Struct, frozen=True, kw_only=True, tag="volume.unreserved"):
    """The pending attach ``attachment_id`` was given up: available."""

    attachment_id: str
    reason: str = ""
    at: dt.datetime


class VolumeDetaching(msgspec.Struct, frozen=True, kw_only=True, tag="volume.detaching"):
    attachment_id: str
    at: dt.datetime


class VolumeDetached(msgspec.Struct, frozen=True, kw_only=True, tag="volume.detached"):
    """The attachment is gone: available."""

    attachment_id: str
    at: dt.datetime


class VolumeDetachRolledBack(msgspec.Struct, frozen=True, kw_only=True,
                             tag="volume.detach_rolled_back"):
    """The detach did not happen: in-use again."""

    attachment_id: str
    at: dt.datetime


class VolumeAttachmentChecking(msgspec.Struct, frozen=True, kw_only=True,
                               tag="volume.attachment_checking"):
    """A pending attach or detach outlived its lease: the server is asked (``request``)
    whether it has the attachment."""

    attachment_id: str
    server_id: str
    request: str
    at: dt.datetime


class VolumeDeleting(msgspec.Struct, frozen=True, kw_only=True, tag="volume.deleting"):
    """Delete asked; the storage host removes the file as ``request``."""

    request: str
    at: dt.datetime


class VolumeDeleteFailed(msgspec.Struct, frozen=True, kw_only=True,
                         tag="volume.delete_failed"):
    """The storage host could not remove the file, or did not answer: error_deleting
    (a delete may be asked again)."""

    reason: str
    at: dt.datetime


class VolumeDeleted(msgspec.Struct, frozen=True, kw_only=True, tag="volume.deleted"):
    """The volume is gone; its claim on ``host`` is released."""

    volume_id: str
    host: str | None
    at: dt.datetime


VOLUME_COMMANDS: tuple[type[msgspec.Struct], ...] = (
    CreateVolume, UpdateVolume, ExtendVolume, DeleteVolume, ReserveVolume, CompleteAttach,
    Unreserve, BeginDetach, CompleteDetach, RollbackDetach,
)
VOLUME_EVENTS: tuple[type[msgspec.Struct], ...] = (
    VolumeCreated, VolumeClaimRefused, VolumeScheduled, VolumeMade, VolumeFailed,
    VolumeUpdated, VolumeExtending, VolumeExtendClaimed, VolumeExtended, VolumeExtendFailed,
    VolumeReserved, VolumeAttached, VolumeUnreserved, VolumeDetaching, VolumeDetached,
    VolumeDetachRolledBack, VolumeAttachmentChecking, VolumeDeleting, VolumeDeleteFailed,
    VolumeDeleted,
)


class PlaceVolume(msgspec.Struct, frozen=True, kw_only=True):
    """An effect for the scheduler: claim ``size_gb`` of block storage for the volume on
    the storage host with the most free room not in ``exclude``. The claim's command id
    is ``request@host``; with no host for it, the answer is a Reply with
    ``error_type="no_valid_host"``."""

    volume_id: str
    request: str
    size_gb: int
    exclude: tuple[str, ...] = ()


class CheckVolumeAttachment(msgspec.Struct, frozen=True, kw_only=True,
                            tag="instance.check_volume"):
    """Asked of a server by a volume whose attach or detach is overdue: what of
    attachment ``attachment_id`` do you have? The answer is ``gone``, ``attaching``,
    ``detaching`` or ``attached <host> <device>``."""

    volume_id: str
    attachment_id: str
