"""The ``flavor`` actor kind: one Nova flavor (a hardware template), created then deleted.

A flavor is immutable in Nova: its only life events are ``flavor.created`` and
``flavor.deleted``. The actor id is the flavor id (Nova's ``flavorid``: devstack's "1".."4"
or a generated UUID), so a second create of a live id is a conflict decided by the single
writer. A deleted id may be created again, as Nova (which hard-deletes flavors) allows.

Names are unique cloud-wide, as in Nova. A flavor actor cannot see its siblings, so the
gateway takes a claim on the identity kinds' ``identity_name`` actor keyed
``flavor_name_key(name)`` before a create and releases it after a delete (the same
race-free claim Keystone names use). `check` is the one validation rule, shared by
``decide`` and the gateway (which validates before it claims a name).
"""

from __future__ import annotations

import re

import msgspec

from actors.kind import ActorKind, Context, Events, Rejected

KIND = "flavor"
MAX_INT = 2147483647  # Nova's db.MAX_INT: the largest ram, vcpus, disk, swap, ephemeral
_ID = re.compile(r"^(?! )[a-zA-Z0-9. _-]+(?<! )$")  # Nova's flavor id pattern


class CreateFlavor(msgspec.Struct, frozen=True, kw_only=True, tag="flavor.create"):
    """Create the flavor whose id is the actor id."""

    name: str
    ram: int  # MiB
    vcpus: int
    disk: int  # root disk, GiB
    ephemeral: int = 0  # GiB
    swap: int = 0  # MiB
    rxtx_factor: float = 1.0
    is_public: bool = True
    description: str | None = None


class DeleteFlavor(msgspec.Struct, frozen=True, kw_only=True, tag="flavor.delete"):
    pass


class FlavorCreated(msgspec.Struct, frozen=True, kw_only=True, tag="flavor.created"):
    """Every field of the new flavor (a fold needs no lookup)."""

    flavor_id: str
    name: str
    ram: int
    vcpus: int
    disk: int
    ephemeral: int
    swap: int
    rxtx_factor: float
    is_public: bool
    description: str | None = None


class FlavorDeleted(msgspec.Struct, frozen=True, kw_only=True, tag="flavor.deleted"):
    flavor_id: str
    name: str  # the name it held, so whoever follows the log can free it


class FlavorState(msgspec.Struct, kw_only=True):
    """The fold of one flavor's stream."""

    exists: bool = False
    deleted: bool = False
    name: str = ""

    @property
    def live(self) -> bool:
        return self.exists and not self.deleted


#: devstack's default flavors: (id, name, vcpus, ram MiB, disk GiB)
DEFAULT_FLAVORS: tuple[tuple[str, str, int, int, int], ...] = (
    ("1", "m1.tiny", 1, 512, 1),
    ("2", "m1.small", 1, 2048, 20),
    ("3", "m1.medium", 2, 4096, 40),
    ("4", "m1.large", 4, 8192, 80),
)


def default_flavors() -> list[tuple[str, CreateFlavor]]:
    """(flavor id, its create command) for each of devstack's default flavors."""
    return [(fid, CreateFlavor(name=name, ram=ram, vcpus=vcpus, disk=disk))
            for fid, name, vcpus, ram, disk in DEFAULT_FLAVORS]


def flavor_name_key(name: str) -> str:
    """The id of the ``identity_name`` actor that guards the flavor name ``name``."""
    return f"compute/flavor/{name}"


def check_id(flavor_id: str) -> str | None:
    """Why ``flavor_id`` is not a valid Nova flavor id (None: it is)."""
    if not 1 <= len(flavor_id) <= 255 or not _ID.match(flavor_id):
        return (f"Invalid input for field/attribute id. Value: {flavor_id}. It must be 1 to "
                "255 letters, digits, '.', '_', '-' or inner spaces.")
    return None


def check(command: CreateFlavor) -> str | None:
    """Why ``command`` is not a valid flavor (None: it is), in Nova's words."""
    name = command.name
    if not 1 <= len(name) <= 255 or name != name.strip() or not name.isprintable():
        return (f"Invalid input for field/attribute name. Value: {name}. It must be 1 to 255 "
                "printable characters with no leading or trailing whitespace.")
    for field, value, low in (("ram", command.ram, 1), ("vcpus", command.vcpus, 1),
                              ("disk", command.disk, 0), ("swap", command.swap, 0),
                              ("OS-FLV-EXT-DATA:ephemeral", command.ephemeral, 0)):
        if not low <= value <= MAX_INT:
            return (f"Invalid input for field/attribute {field}. Value: {value}. "
                    f"It must be an integer from {low} to {MAX_INT}.")
    if not 0 < command.rxtx_factor <= 3.40282e38:
        return (f"Invalid input for field/attribute rxtx_factor. Value: "
                f"{command.rxtx_factor}. It must be greater than 0.")
    if command.description is not None and len(command.description) > 65535:
        return "Invalid input for field/attribute description: longer than 65535."
    return None


def initial(_actor_id: str) -> FlavorState:
    return FlavorState()


def decide(state: FlavorState, command: msgspec.Struct, ctx: Context) -> Events:
    match command:
        case CreateFlavor():
            if state.live:
                raise Rejected("conflict", f"Flavor with ID {ctx.actor_id} already exists.")
            problem = check_id(ctx.actor_id) or check(command)
            if problem is not None:
                raise Rejected("bad_request", problem)
            return [FlavorCreated(
                flavor_id=ctx.actor_id, name=command.name, ram=command.ram,
                vcpus=command.vcpus, disk=command.disk, ephemeral=command.ephemeral,
                swap=command.swap, rxtx_factor=command.rxtx_factor,
                is_public=command.is_public, description=command.description,
            )]
        case DeleteFlavor():
            if not state.live:
                raise Rejected("not_found", f"Flavor {ctx.actor_id} could not be found.")
            return [FlavorDeleted(flavor_id=ctx.actor_id, name=state.name)]
    raise Rejected("bad_request", f"flavor has no command {type(command).__name__}")


def evolve(state: FlavorState, event: msgspec.Struct) -> FlavorState:
    match event:
        case FlavorCreated(name=name):
            state.exists, state.deleted, state.name = True, False, name
        case FlavorDeleted():
            state.deleted = True
    return state


FLAVOR_EVENTS: tuple[type[msgspec.Struct], ...] = (FlavorCreated, FlavorDeleted)

FLAVOR = ActorKind(
    name=KIND, state_type=FlavorState, initial=initial, decide=decide, evolve=evolve,
    commands=(CreateFlavor, DeleteFlavor), events=FLAVOR_EVENTS,
)
