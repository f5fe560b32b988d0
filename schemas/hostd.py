"""What a host's hypervisor is asked to run and what it reports: specs, states, observations."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Literal

import msgspec

from schemas.hostnet import (
    Capabilities,
    DesiredHostNetwork,
    NetworkChange,
    NetworkSpec,
    PortChange,
    PortSpec,
)

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
    nics: tuple[Nic, ...] = ()


class Nic(msgspec.Struct, frozen=True, kw_only=True):
    """A network interface of a domain: the guest's ``mac`` on the host tap ``device``
    that hostd's network driver plugged into the network's bridge."""

    mac: str
    device: str


#: The formats of a volume's file on a storage host.
VolumeFormat = Literal["raw", "qcow2"]


class StorageCapacity(msgspec.Struct, frozen=True, kw_only=True):
    """What a storage host offers for volumes: ``total_gb`` GiB of block storage, new
    volumes made as ``format`` files by ``backend`` (``qemu-img`` or ``fake``)."""

    total_gb: int
    format: VolumeFormat = "raw"
    backend: str = "qemu-img"


class Capacity(msgspec.Struct, frozen=True, kw_only=True):
    """What a host offers: physical CPUs, memory in MiB, instance disk in GiB, and which
    network types it can carry (None: the host has no network driver). A storage host
    offers ``storage`` (and no CPUs or memory); a compute host has none."""

    vcpus: int
    ram_mb: int
    disk_gb: int
    networks: Capabilities | None = None
    storage: StorageCapacity | None = None

    @property
    def compute(self) -> bool:
        """Whether the host runs instances (a storage-only host offers no CPUs or RAM)."""
        return self.vcpus > 0 or self.ram_mb > 0 or self.storage is None


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


# -- the hostd wire protocol -------------------------------------------------------------
#
# hostd -> the ``host`` actor (kind "host", actor id = host name). Wire-compatible with
# actors.host.ReportCapacity / Heartbeat (same tags and fields): hostd may not import actors.

#: the actor kind hostd reports to
HOST_ACTOR_KIND = "host"


class CapacityReport(msgspec.Struct, frozen=True, kw_only=True, tag="host.report_capacity"):
    """hostd (re)started: what the host offers, measured at ``at`` (host clock)."""

    capacity: Capacity
    at: dt.datetime


class HostBeat(msgspec.Struct, frozen=True, kw_only=True, tag="host.beat"):
    """hostd is alive; ``capacity`` as it measures it now, sent at ``at`` (host clock)."""

    capacity: Capacity
    at: dt.datetime


# Commands to one host (envelope kind "compute", actor id = host name, queue
# ``compute.<host>``). Each is idempotent, so a redelivery or a retry is harmless.


class ImageRef(msgspec.Struct, frozen=True, kw_only=True):
    """The image a domain boots from, as the image service knows it: hostd fetches it into
    its cache (verified by ``sha512``) before it defines the domain."""

    image_id: str
    sha512: str
    disk_format: DiskFormat = "qcow2"
    size: int = 0


class SpawnDomain(msgspec.Struct, frozen=True, kw_only=True, tag="hostd.spawn"):
    """Define the domain and boot it; a domain that already runs is left alone.
    ``spec.uuid`` must equal ``instance_id``.

    With ``image``, hostd first makes sure the image is in its cache, answers with an
    interim Reply (``partial``, ``result="image_ready"``), and boots from the cached file
    (``spec.image_path`` is then ignored).
    """

    instance_id: str
    spec: DomainSpec
    image: ImageRef | None = None
    #: the plumbing of every network the instance has a port on, then its ports: each
    #: network is ensured and each port plugged before the domain is defined
    networks: tuple[NetworkSpec, ...] = ()
    ports: tuple[PortSpec, ...] = ()


class StopDomain(msgspec.Struct, frozen=True, kw_only=True, tag="hostd.stop"):
    """Ask the guest to power off, wait up to ``timeout`` seconds, then destroy it."""

    instance_id: str
    timeout: float = 60.0


class StartDomain(msgspec.Struct, frozen=True, kw_only=True, tag="hostd.start"):
    """Boot a defined domain; a running one is left alone."""

    instance_id: str


class RebootDomain(msgspec.Struct, frozen=True, kw_only=True, tag="hostd.reboot"):
    """Soft (guest reboots itself; the domain must be running) or hard (power cycle)."""

    instance_id: str
    hard: bool = False


class DestroyDomain(msgspec.Struct, frozen=True, kw_only=True, tag="hostd.destroy"):
    """Power off and forget the domain, then unplug ``ports`` (port ids); an unknown
    domain or port is no error."""

    instance_id: str
    ports: tuple[str, ...] = ()


class GetDomainState(msgspec.Struct, frozen=True, kw_only=True, tag="hostd.state"):
    """Report the domain's current power state (``missing`` if unknown)."""

    instance_id: str


class VolumeDisk(msgspec.Struct, frozen=True, kw_only=True):
    """A volume as a disk of a domain: the file ``path`` (on storage the host reaches at
    that path) in ``format``, as guest device ``device`` (``vdb``), with ``serial`` (the
    volume id, so the guest finds it under /dev/disk/by-id)."""

    device: str
    path: str
    format: VolumeFormat = "raw"
    serial: str = ""


class AttachVolume(msgspec.Struct, frozen=True, kw_only=True, tag="hostd.attach_volume"):
    """Attach ``disk`` to the domain, live (if it runs) and persistently; a disk already
    attached as that device with that file is no error."""

    instance_id: str
    volume_id: str
    disk: VolumeDisk


class DetachVolume(msgspec.Struct, frozen=True, kw_only=True, tag="hostd.detach_volume"):
    """Detach the domain's disk ``device`` (live and persistently); a device that is not
    attached, or a domain that is gone, is no error."""

    instance_id: str
    volume_id: str
    device: str


class SyncNetwork(msgspec.Struct, frozen=True, kw_only=True, tag="hostd.network"):
    """Make the host's network exactly ``desired`` (what the log says this host should
    carry), as of log ``position``: hostd ignores one older than what it last applied.
    Sent when a change of the log touches the host, and the answer to a
    ``hostnet.desired`` query. Not about one instance: no ``instance_id``.
    ``gone_ports``: ports deleted or unbound from this host since the last push, which
    go even if a spawn plugged them a moment ago (see hostd.netsync)."""

    desired: DesiredHostNetwork
    position: int = 0
    gone_ports: tuple[str, ...] = ()


class SyncNetworkDelta(msgspec.Struct, frozen=True, kw_only=True, tag="hostd.network_delta"):
    """What changed of the host's desired network as of log ``position``: only the
    networks and ports a change of the log touched, each as it is now (a push; its
    size follows the change, not the number of ports on the network). hostd applies
    each entry unless it has applied a newer one for the same network, port or DHCP
    entry; a delta it cannot apply on what it has (no set yet, a DHCP server it does
    not run, subnets that changed) makes it pull the whole set. ``gone_ports`` as in
    ``hostd.network``."""

    position: int
    networks: tuple[NetworkChange, ...] = ()
    ports: tuple[PortChange, ...] = ()
    gone_ports: tuple[str, ...] = ()


# hostd -> instance actors (kind "instance", actor id = instance id), and the one query
# hostd asks its host actor. Wire-compatible with the actors' own Structs.

#: the actor kind hostd tells what it observed about a domain
INSTANCE_ACTOR_KIND = "instance"


class InstanceObserved(msgspec.Struct, frozen=True, kw_only=True, tag="instance.observed"):
    """What hostd saw of the instance's domain on ``host``: a lifecycle event, or
    (``reconcile``) its state as found by a periodic reconciliation, ``missing`` if the
    hypervisor does not know it."""

    host: str
    state: DomainState
    event: str = ""
    detail: str = ""
    reconcile: bool = False
    observed_at: dt.datetime


class ExpectedDomains(msgspec.Struct, frozen=True, kw_only=True, tag="host.expected"):
    """Ask the host actor which instances hold a claim on it (the domains that should
    exist there). The answer's ``result`` is a JSON list of instance ids."""


#: where hostd asks what its network should be (kind of the query, actor id = host name)
HOSTNET_KIND = "hostnet"


class DesiredNetwork(msgspec.Struct, frozen=True, kw_only=True, tag="hostnet.desired"):
    """Ask the control plane what this host's network should be. The answer's ``result``
    is a JSON ``SyncNetwork`` (the desired set and the log position it was read at)."""


#: the actor kind of ports (hostd reports the DHCP ports it serves as plugged)
PORT_ACTOR_KIND = "port"


class DhcpPortPlugged(msgspec.Struct, frozen=True, kw_only=True, tag="port.plug"):
    """The network's DHCP server runs on ``host_id``: its DHCP port is ACTIVE.
    Wire-compatible with actors.port.PlugPort."""

    host_id: str


#: the commands about one instance's domain (each carries ``instance_id``)
InstanceCommand = SpawnDomain | StopDomain | StartDomain | RebootDomain | DestroyDomain \
    | GetDomainState | AttachVolume | DetachVolume
HostdCommand = InstanceCommand | SyncNetwork | SyncNetworkDelta
HOSTD_COMMANDS: tuple[type[msgspec.Struct], ...] = (
    SpawnDomain, StopDomain, StartDomain, RebootDomain, DestroyDomain, GetDomainState,
    AttachVolume, DetachVolume, SyncNetwork, SyncNetworkDelta,
)
HOSTD_COMMAND_DECODER: msgspec.json.Decoder[HostdCommand] = msgspec.json.Decoder(HostdCommand)
