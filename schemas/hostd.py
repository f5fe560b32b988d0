"""What a host's hypervisor is asked to run and what it reports: specs, states, observations."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Literal

import msgspec

#: The disk image formats a domain can boot from.
DiskFormat = Literal["qcow2", "raw"]


class DomainState(enum.StrEnum):
    """The power state of a domain as the hypervisor reports it.

    ``missing`` means the hypervisor does not know the domain at all.
    """

    RUNNING = "running"
    SHUTOFF = "shutoff"
    PAUSED = "paused"
    CRASHED = "crashed"
    MISSING = "missing"


class ShutdownOutcome(enum.StrEnum):
    """How a graceful shutdown ended: the guest stopped itself, it had to be destroyed
    after the timeout, or it was not running in the first place."""

    GRACEFUL = "graceful"
    DESTROYED = "destroyed"
    ALREADY_OFF = "already_off"


class DomainSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A domain to define, built from an instance's flavor and image.

    ``uuid`` is the instance id and names the domain on the host; ``name`` is the
    instance's display name (free text, kept as the domain's title).
    """

    uuid: str
    name: str
    vcpus: int
    ram_mb: int
    disk_gb: int
    image_path: str
    image_format: DiskFormat = "qcow2"


class Capacity(msgspec.Struct, frozen=True, kw_only=True):
    """What a host offers: physical CPUs, memory in MiB, instance disk in GiB."""

    vcpus: int
    ram_mb: int
    disk_gb: int


class Observation(msgspec.Struct, frozen=True, kw_only=True):
    """One lifecycle change the hypervisor saw, whoever caused it.

    ``event`` is what happened (``defined``, ``undefined``, ``started``, ``stopped``,
    ``suspended``, ``resumed``, ``shutdown``, ``crashed``, ``pmsuspended``), ``detail``
    why (``booted``, ``destroyed``, ``shutdown``, ...), ``state`` the domain's state
    right after it.
    """

    uuid: str
    event: str
    state: DomainState
    detail: str = ""
    observed_at: dt.datetime = msgspec.field(default_factory=lambda: dt.datetime.now(dt.UTC))
