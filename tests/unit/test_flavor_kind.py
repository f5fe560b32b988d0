"""The flavor kind as pure functions, and the pure parts of the compute API around it."""

from __future__ import annotations

import datetime as dt

import msgspec
import pytest

from actors.flavor import (
    FLAVOR,
    CreateFlavor,
    DeleteFlavor,
    FlavorCreated,
    FlavorDeleted,
    FlavorState,
    check,
    check_id,
    default_flavors,
)
from actors.kind import Context, Rejected
from gateway.compute import FlavorRequest, create_command, hypervisor_id
from gateway.discovery import APIVersion
from gateway.errors import ApiError
from gateway.json import decode

TINY = CreateFlavor(name="m1.tiny", ram=512, vcpus=1, disk=1)


def ctx(actor_id: str = "f1") -> Context:
    return Context(actor_id=actor_id, message_id="m1", correlation_id="req-1",
                   now=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))


def fold(*commands: msgspec.Struct, actor_id: str = "f1") -> FlavorState:
    state = FLAVOR.initial(actor_id)
    for command in commands:
        for event in FLAVOR.decide(state, command, ctx(actor_id)):
            state = FLAVOR.evolve(state, event)
    return state


def refusal(state: FlavorState, command: msgspec.Struct, actor_id: str = "f1") -> Rejected:
    with pytest.raises(Rejected) as refused:
        FLAVOR.decide(state, command, ctx(actor_id))
    return refused.value


def test_create_records_every_field_of_the_flavor() -> None:
    """A create decides one flavor.created carrying the id and every field, defaults filled."""
    (event,) = FLAVOR.decide(FlavorState(), TINY, ctx("1"))
    assert event == FlavorCreated(flavor_id="1", name="m1.tiny", ram=512, vcpus=1, disk=1,
                                  ephemeral=0, swap=0, rxtx_factor=1.0, is_public=True)
    state = FLAVOR.evolve(FlavorState(), event)
    assert state.live and state.name == "m1.tiny"


def test_second_create_of_a_live_id_is_a_conflict_in_novas_words() -> None:
    """The single writer refuses a second create of the same id: 'Flavor with ID … exists'."""
    refused = refusal(fold(TINY), CreateFlavor(name="other", ram=1, vcpus=1, disk=0))
    assert refused.code == "conflict"
    assert refused.message == "Flavor with ID f1 already exists."


def test_delete_records_the_name_and_a_deleted_id_can_be_created_again() -> None:
    """Delete carries the name it frees; after it a second delete is not_found and the id
    may be reused, as Nova (which hard-deletes flavors) allows."""
    state = fold(TINY)
    (event,) = FLAVOR.decide(state, DeleteFlavor(), ctx())
    assert event == FlavorDeleted(flavor_id="f1", name="m1.tiny")
    state = FLAVOR.evolve(state, event)
    assert refusal(state, DeleteFlavor()).message == "Flavor f1 could not be found."
    again = fold(TINY, DeleteFlavor(), CreateFlavor(name="new", ram=1, vcpus=1, disk=0))
    assert again.live and again.name == "new"


def test_delete_of_a_never_created_flavor_is_not_found() -> None:
    """Deleting an id that was never created is refused with not_found."""
    assert refusal(FlavorState(), DeleteFlavor()).code == "not_found"


@pytest.mark.parametrize(("change", "field"), [
    ({"ram": 0}, "ram"), ({"vcpus": 0}, "vcpus"), ({"disk": -1}, "disk"),
    ({"swap": -1}, "swap"), ({"ephemeral": -1}, "OS-FLV-EXT-DATA:ephemeral"),
    ({"ram": 2**31}, "ram"), ({"rxtx_factor": 0.0}, "rxtx_factor"),
    ({"name": ""}, "name"), ({"name": " padded"}, "name"), ({"name": "x" * 256}, "name"),
])
def test_invalid_fields_are_refused_naming_the_field(change: dict[str, object],
                                                     field: str) -> None:
    """Each out-of-range field is a bad_request whose message names it; no event."""
    command = msgspec.structs.replace(TINY, **change)
    problem = check(command)
    assert problem is not None and f"attribute {field}." in problem
    assert refusal(FlavorState(), command).code == "bad_request"


def test_flavor_ids_follow_novas_pattern() -> None:
    """Ids are 1-255 of letters, digits, '.', '_', '-' and inner spaces."""
    assert check_id("1") is None and check_id("a b.c_d-e") is None
    assert all(check_id(bad) for bad in ("", " lead", "trail ", "a/b", "x" * 256))
    assert refusal(FlavorState(), TINY, actor_id="a/b").code == "bad_request"


def test_default_flavors_are_devstacks_m1_tiny_to_m1_large() -> None:
    """Ids "1".."4" with devstack's vCPU, RAM and disk; every one valid."""
    flavors = {fid: (c.name, c.vcpus, c.ram, c.disk) for fid, c in default_flavors()}
    assert flavors == {"1": ("m1.tiny", 1, 512, 1), "2": ("m1.small", 1, 2048, 20),
                       "3": ("m1.medium", 2, 4096, 40), "4": ("m1.large", 4, 8192, 80)}
    assert all(check(c) is None for _, c in default_flavors())


def body(**flavor: object) -> FlavorRequest:
    return decode(msgspec.json.encode({"flavor": flavor}), FlavorRequest)


def test_request_body_as_openstackclient_sends_it_becomes_a_command() -> None:
    """OSC's body (id null, swap 0, ephemeral, is_public) maps onto CreateFlavor."""
    request = body(name="f1", ram=512, vcpus=1, disk=1, id=None, swap=0,
                   **{"OS-FLV-EXT-DATA:ephemeral": 2, "os-flavor-access:is_public": False})
    command = create_command(request.flavor, APIVersion(2, 1))
    assert command == CreateFlavor(name="f1", ram=512, vcpus=1, disk=1, ephemeral=2,
                                   is_public=False)


def test_numbers_may_come_as_digit_strings_and_swap_as_empty_string() -> None:
    """Nova's schema takes "512" for 512 and swap "" for 0; "lots" is a 400."""
    command = create_command(body(name="f", ram="512", vcpus="2", disk="0", swap="").flavor,
                             APIVersion(2, 1))
    assert (command.ram, command.vcpus, command.disk, command.swap) == (512, 2, 0, 0)
    with pytest.raises(ApiError) as bad:
        create_command(body(name="f", ram="lots", vcpus=1, disk=0).flavor, APIVersion(2, 1))
    assert bad.value.code == "bad_request" and "ram" in bad.value.message


def test_unknown_fields_and_description_before_2_55_are_refused() -> None:
    """additionalProperties is false: an unknown field is a 400, and so is description
    at 2.1; at 2.55 description is accepted."""
    with pytest.raises(ApiError):
        body(name="f", ram=1, vcpus=1, disk=0, colour="red")
    described = body(name="f", ram=1, vcpus=1, disk=0, description="d").flavor
    with pytest.raises(ApiError) as early:
        create_command(described, APIVersion(2, 1))
    assert "description" in early.value.message
    assert create_command(described, APIVersion(2, 55)).description == "d"


def test_hypervisor_ids_are_stable_integers_then_uuids_from_2_53() -> None:
    """The same host always gets the same positive integer id (below 2.53) and UUID."""
    first = hypervisor_id("compute-1")
    assert isinstance(first, int) and first > 0 and first == hypervisor_id("compute-1")
    assert first != hypervisor_id("compute-2")
    as_uuid = hypervisor_id("compute-1", APIVersion(2, 53))
    assert isinstance(as_uuid, str) and len(as_uuid) == 36
