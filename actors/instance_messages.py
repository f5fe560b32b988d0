"""The ``instance`` kind's states, commands, events and effects (no logic), and how Nova
shows its states (``status``); see actors.instance for the lifecycle and the boot saga."""

from __future__ import annotations

import datetime as dt

import msgspec

from schemas.hostnet import NetworkSpec

KIND = "instance"
DEADLINE_TIMER = "deadline"
#: how many hosts a boot tries before it gives up with "no valid host"
MAX_PLACEMENTS = 3

# vm_state
BUILDING, ACTIVE, STOPPED, ERROR, DELETED = "building", "active", "stopped", "error", "deleted"
# task_state
SCHEDULING, SPAWNING = "scheduling", "spawning"
POWERING_OFF, POWERING_ON = "powering-off", "powering-on"
REBOOTING, REBOOTING_HARD = "rebooting", "rebooting_hard"
DELETING = "deleting"
# power_state, as Nova numbers it
NOSTATE, RUNNING, PAUSED, SHUTDOWN, CRASHED = 0, 1, 3, 4, 6



class FlavorInfo(msgspec.Struct, frozen=True, kw_only=True):
    """The flavor as it was when the server was created (Nova embeds it, too)."""

    id: str
    name: str
    vcpus: int
    ram: int
    disk: int
    ephemeral: int = 0
    swap: int = 0
    extra_specs: dict[str, str] = {}


class ImageInfo(msgspec.Struct, frozen=True, kw_only=True):
    """The image the server boots from, as the image service had it at create time."""

    id: str
    name: str = ""
    size: int = 0
    sha512: str = ""
    disk_format: str = "qcow2"


class NicInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One network interface of the server: the port the gateway created for it
    (``created``: deleted with the server) or the user's port it was given (unbound when
    the server goes), its MAC and addresses, and the network's plumbing for hostd."""

    port_id: str
    network_id: str
    network_name: str
    mac: str
    ips: tuple[str, ...] = ()
    created: bool = True
    device: str
    network: NetworkSpec


class Fault(msgspec.Struct, frozen=True, kw_only=True):
    """Why a server is in ERROR, as Nova's ``fault``: code, message, details, created."""

    code: int
    message: str
    details: str = ""
    created: dt.datetime


class Deadlines(msgspec.Struct, frozen=True, kw_only=True):
    """Seconds each transitional task may take before it fails (or, delete, completes)."""

    scheduling: float = 30.0
    spawning: float = 600.0
    powering_off: float = 120.0
    powering_on: float = 60.0
    rebooting: float = 180.0
    deleting: float = 60.0
    #: how long hostd may spend on a graceful shutdown before it destroys the domain
    stop_timeout: float = 60.0
    #: each step of attaching (reserve, then attach on the host) and of detaching a volume
    attaching: float = 60.0
    detaching: float = 60.0

    def of(self, task: str) -> float:
        return float(getattr(self, task.replace("-", "_").replace("_hard", "")))


# -- commands ------------------------------------------------------------------------------


class CreateInstance(msgspec.Struct, frozen=True, kw_only=True, tag="instance.create"):
    """Create the server and boot it (the gateway has checked flavor and image)."""

    name: str
    project_id: str
    user_id: str
    flavor: FlavorInfo
    image: ImageInfo
    metadata: dict[str, str] = {}
    key_name: str | None = None
    user_data: str | None = None
    availability_zone: str | None = None
    description: str | None = None
    nics: list[NicInfo] = []
    #: why the gateway could not give the server its ports: the boot ends in ERROR
    nic_error: str | None = None


class StopInstance(msgspec.Struct, frozen=True, kw_only=True, tag="instance.stop"):
    """``os-stop``: power the server off."""


class StartInstance(msgspec.Struct, frozen=True, kw_only=True, tag="instance.start"):
    """``os-start``: power a stopped server on."""


class RebootInstance(msgspec.Struct, frozen=True, kw_only=True, tag="instance.reboot"):
    """``reboot`` SOFT (``hard`` false) or HARD."""

    hard: bool = False


class DeleteInstance(msgspec.Struct, frozen=True, kw_only=True, tag="instance.delete"):
    """Delete the server, whatever its state."""


# -- events --------------------------------------------------------------------------------


class InstanceCreated(msgspec.Struct, frozen=True, kw_only=True, tag="instance.created"):
    """The server exists (BUILD/scheduling); ``request`` is the placement request id."""

    instance_id: str
    name: str
    project_id: str
    user_id: str
    flavor: FlavorInfo
    image: ImageInfo
    metadata: dict[str, str] = {}
    key_name: str | None = None
    user_data: str | None = None
    availability_zone: str | None = None
    description: str | None = None
    nics: list[NicInfo] = []
    request: str
    at: dt.datetime


class InstanceClaimRefused(msgspec.Struct, frozen=True, kw_only=True,
                           tag="instance.claim_refused"):
    """The chosen host had no room after all; placement ``request`` tries the others."""

    host: str
    reason: str
    request: str
    at: dt.datetime


class InstanceScheduled(msgspec.Struct, frozen=True, kw_only=True, tag="instance.scheduled"):
    """A claim on ``host`` holds; spawn requested there as ``request``."""

    host: str
    request: str
    at: dt.datetime


class InstanceImageReady(msgspec.Struct, frozen=True, kw_only=True,
                         tag="instance.image_ready"):
    """The host has the image in its cache; the domain is being defined and started."""

    host: str
    at: dt.datetime


class InstanceSpawned(msgspec.Struct, frozen=True, kw_only=True, tag="instance.spawned"):
    """The domain runs: ACTIVE."""

    host: str
    power_state: int
    at: dt.datetime


class InstanceFailed(msgspec.Struct, frozen=True, kw_only=True, tag="instance.failed"):
    """The server is in ERROR with ``fault``; its claim on ``host`` (if any) is released."""

    instance_id: str
    host: str | None
    task: str | None
    fault: Fault
    at: dt.datetime


class InstanceActionStarted(msgspec.Struct, frozen=True, kw_only=True,
                            tag="instance.action_started"):
    """A user action (``stop``, ``start``, ``reboot``) began: task ``task``, asked as
    ``request`` (hostd command id)."""

    action: str
    task: str
    request: str
    hard: bool = False
    at: dt.datetime


class InstanceActionDone(msgspec.Struct, frozen=True, kw_only=True,
                         tag="instance.action_done"):
    """The action in progress succeeded; ``vm_state`` and ``power_state`` are now these."""

    action: str
    vm_state: str
    power_state: int
    at: dt.datetime


class InstanceActionFailed(msgspec.Struct, frozen=True, kw_only=True,
                           tag="instance.action_failed"):
    """The action in progress failed or timed out; the server keeps its state."""

    action: str
    message: str
    at: dt.datetime


class InstancePowerSynced(msgspec.Struct, frozen=True, kw_only=True,
                          tag="instance.power_synced"):
    """hostd found the domain in another power state than the log had (as Nova's power
    state sync): e.g. shut off behind Orrery's back -> SHUTOFF."""

    vm_state: str
    power_state: int
    reason: str
    at: dt.datetime


class InstanceRetried(msgspec.Struct, frozen=True, kw_only=True, tag="instance.retried"):
    """A build step passed its deadline without an answer: its request is sent once more
    (same request id: a claim and a spawn are idempotent per instance) under a new
    deadline. Covers a request lost with a worker that died between recording the step
    and sending it."""

    task: str
    at: dt.datetime


class InstanceDeleting(msgspec.Struct, frozen=True, kw_only=True, tag="instance.deleting"):
    """Delete asked; hostd destroys the domain as ``request``."""

    request: str
    at: dt.datetime


class InstanceDeleted(msgspec.Struct, frozen=True, kw_only=True, tag="instance.deleted"):
    """The server is gone (DELETED); its claim on ``host`` is released. ``note`` says why
    the host did not confirm, when it did not."""

    instance_id: str
    host: str | None
    note: str = ""
    at: dt.datetime


class Place(msgspec.Struct, frozen=True, kw_only=True):
    """An effect for the scheduler: claim room for the instance on the best host not in
    ``exclude`` that carries every network type and physical network of its NICs. The
    claim's command id is ``request@host``; when no host can take it, the answer is a
    Reply with ``error_type="no_valid_host"``."""

    instance_id: str
    request: str
    vcpus: int
    ram_mb: int
    disk_gb: int
    image_size: int = 0
    exclude: tuple[str, ...] = ()
    network_types: tuple[str, ...] = ()
    physical_networks: tuple[str, ...] = ()


def status(vm_state: str, task_state: str | None) -> str:
    """The API status Nova shows for these states."""
    if vm_state == ACTIVE:
        if task_state == REBOOTING:
            return "REBOOT"
        if task_state == REBOOTING_HARD:
            return "HARD_REBOOT"
        return "ACTIVE"
    return _STATUS.get(vm_state, "UNKNOWN")


#: the status of each vm_state but ACTIVE (whose status its task_state decides)
_STATUS = {BUILDING: "BUILD", STOPPED: "SHUTOFF", ERROR: "ERROR", DELETED: "DELETED"}
