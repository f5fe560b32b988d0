"""The storage host wire protocol: volume files made, grown and removed on ``compute.<host>``.

A storage host (``orrery storaged``) serves its host queue like hostd does, with these
commands from the ``volume`` actors. Each is idempotent (a redelivery or a retry finds the
work done and answers the same). A successful Reply's ``result`` is the JSON of the
volume's `VolumeFile`; ``delete`` answers with no result.

Failure ``error_type``: ``not_found`` (no such volume), ``bad_request`` (a shrink, or an
image larger than the volume), ``storage_error`` (qemu-img failed), ``unavailable``
(retryable: the tool did not answer in time), ``image_error`` (the image could not be
brought to the host) and ``deadline_exceeded``.
"""

from __future__ import annotations

import msgspec

from schemas.hostd import ImageRef, VolumeFormat


class VolumeFile(msgspec.Struct, frozen=True, kw_only=True):
    """Where a volume lives on its storage host: ``path`` in ``format``, ``size_gb`` GiB
    as the guest sees it."""

    volume_id: str
    path: str
    format: VolumeFormat
    size_gb: int


class CreateVolumeFile(msgspec.Struct, frozen=True, kw_only=True, tag="storage.create"):
    """Make the volume's file of ``size_gb`` GiB, empty or holding ``image``'s bytes."""

    volume_id: str
    size_gb: int
    image: ImageRef | None = None


class ExtendVolumeFile(msgspec.Struct, frozen=True, kw_only=True, tag="storage.extend"):
    """Grow the volume's file to ``size_gb`` GiB (the same size again is no error)."""

    volume_id: str
    size_gb: int


class DeleteVolumeFile(msgspec.Struct, frozen=True, kw_only=True, tag="storage.delete"):
    """Remove the volume's file; an unknown volume is no error."""

    volume_id: str


StorageCommand = CreateVolumeFile | ExtendVolumeFile | DeleteVolumeFile
STORAGE_COMMANDS: tuple[type[msgspec.Struct], ...] = (
    CreateVolumeFile, ExtendVolumeFile, DeleteVolumeFile,
)
STORAGE_COMMAND_DECODER: msgspec.json.Decoder[StorageCommand] = msgspec.json.Decoder(
    StorageCommand)
VOLUME_FILE_DECODER = msgspec.json.Decoder(VolumeFile)
