"""The volume kind's decisions, pure: create on a storage host, extend, delete, and the
steps the attach saga tells it, with their deadlines and leases."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import msgspec
import pytest

from actors.host import Claim
from actors.kind import ActorKind, Context, Rejected, Tell, TellHost
from actors.volume import IN_USE_REFUSAL, VolumeDeadlines, make_volume_kind
from actors.volume_messages import (
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
    Unreserve,
    UpdateVolume,
    VolumeImage,
)
from schemas import ENCODER, Reply, TimerCancelled, TimerFired, TimerSet
from schemas.storage import CreateVolumeFile, DeleteVolumeFile, ExtendVolumeFile, VolumeFile

T0 = dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.UTC)
VID = "7c1aaa46-a76b-4e9c-a41b-bd3af9ae5a73"
KIND = make_volume_kind(VolumeDeadlines(creating=30, extending=20, deleting=20, lease=40))


class Actor:
    """One actor of ``kind``, decided and folded as the runtime would, with a clock."""

    def __init__(self, kind: ActorKind[Any], actor_id: str) -> None:
        self.kind, self.id = kind, actor_id
        self.state: Any = kind.initial(actor_id)
        self.now, self.n = T0, 0
        self.effects: list[object] = []
        self.timers: dict[str, tuple[str, dt.datetime]] = {}

    def ctx(self) -> Context:
        self.n += 1
        return Context(actor_id=self.id, message_id=f"m{self.n}", correlation_id="req-1",
                       now=self.now)

    def apply(self, events: Sequence[msgspec.Struct], ctx: Context) -> list[str]:
        for e in events:
            self.state = self.kind.evolve(self.state, e)
            if isinstance(e, TimerSet):
                self.timers[e.timer_id] = (e.name, e.fire_at)
            elif isinstance(e, TimerFired | TimerCancelled):
                self.timers.pop(e.timer_id, None)
        assert self.kind.effects is not None
        self.effects = list(self.kind.effects(self.state, events, ctx)) if events else []
        return [type(e).__struct_config__.tag for e in events]  # type: ignore[misc]

    def send(self, command: msgspec.Struct) -> list[str]:
        ctx = self.ctx()
        return self.apply(self.kind.decide(self.state, command, ctx), ctx)

    def result(self, command: msgspec.Struct) -> str | None:
        assert self.kind.result is not None
        return self.kind.result(self.state, command, self.ctx())

    def answer(self, reply: Reply) -> list[str]:
        ctx = self.ctx()
        assert self.kind.on_reply is not None
        return self.apply(self.kind.on_reply(self.state, reply, ctx), ctx)

    def fire(self, name: str, after: float) -> list[str]:
        """Move the clock ``after`` seconds on and fire the timer named ``name``."""
        self.now += dt.timedelta(seconds=after)
        (tid, (_, at)), = [(t, v) for t, v in self.timers.items() if v[0] == name]
        assert at <= self.now, "timer not due yet"
        ctx = self.ctx()
        assert self.kind.on_timer is not None
        fired = TimerFired(timer_id=tid, name=name)
        return self.apply([*self.kind.on_timer(self.state, fired, ctx), fired], ctx)

    def only(self, kind: type[Any]) -> Any:
        (effect,) = self.effects
        assert isinstance(effect, kind), effect
        return effect


def made(volume: Actor, size: int = 1, image: VolumeImage | None = None) -> TellHost:
    """Create the volume and have it placed on s1; the storage host's command."""
    volume.send(CreateVolume(name="v", project_id="p1", user_id="u1", size=size, image=image))
    place = volume.only(PlaceVolume)
    assert (place.volume_id, place.size_gb) == (VID, size)
    volume.answer(Reply(command_id=f"{place.request}@s1", ok=True))
    return volume.only(TellHost)  # type: ignore[no-any-return]


def available(size: int = 1) -> Actor:
    volume = Actor(KIND, VID)
    create = made(volume, size)
    result = ENCODER.encode(VolumeFile(volume_id=VID, path="/v/volume-x", format="qcow2",
                                       size_gb=size)).decode()
    assert volume.answer(Reply(command_id=create.request_id, ok=True, result=result)) == [
        "timer.cancelled", "volume.made"]
    assert volume.state.status == "available" and not volume.timers
    return volume


def test_create_is_placed_then_made_by_its_storage_host() -> None:
    """created (creating, one deadline timer) -> PlaceVolume -> scheduled on s1 ->
    storage.create there with the image's ref -> made: available, path and format kept."""
    volume = Actor(KIND, VID)
    image = VolumeImage(id="img", sha512="ab" * 64, size=100, disk_format="raw")
    create = made(volume, 2, image)
    assert create.host == "s1" and isinstance(create.command, CreateVolumeFile)
    assert create.command.size_gb == 2 and create.command.image is not None
    assert create.command.image.image_id == "img"
    assert volume.state.status == "creating" and len(volume.timers) == 1
    result = ENCODER.encode(VolumeFile(volume_id=VID, path="/v/f", format="raw",
                                       size_gb=2)).decode()
    volume.answer(Reply(command_id=create.request_id, ok=True, result=result))
    assert (volume.state.status, volume.state.path, volume.state.host) == (
        "available", "/v/f", "s1")


def test_no_storage_host_or_a_failed_file_is_error_with_the_claim_given_back() -> None:
    """no_valid_host: error "No valid backend was found."; three refused claims: error;
    a storage host that fails the file: error, and it is told to remove what it made."""
    volume = Actor(KIND, VID)
    volume.send(CreateVolume(name="v", project_id="p1", user_id="u1", size=1))
    place = volume.only(PlaceVolume)
    assert "volume.failed" in volume.answer(Reply(
        command_id=f"{place.request}@", ok=False, error_type="no_valid_host",
        error="No valid host was found. there are no hosts"))
    assert volume.state.status == "error" and not volume.timers

    volume = Actor(KIND, VID)
    volume.send(CreateVolume(name="v", project_id="p1", user_id="u1", size=1))
    for host in ("s1", "s2", "s3"):
        place = volume.only(PlaceVolume)
        assert place.exclude == tuple(["s1", "s2"][:("s1", "s2", "s3").index(host)])
        volume.answer(Reply(command_id=f"{place.request}@{host}", ok=False,
                            error_type="conflict", error="full"))
    assert volume.state.status == "error"

    volume = Actor(KIND, VID)
    create = made(volume)
    assert "volume.failed" in volume.answer(Reply(command_id=create.request_id, ok=False,
                                                  error="qemu-img failed"))
    cleanup = volume.only(TellHost)
    assert cleanup.host == "s1" and isinstance(cleanup.command, DeleteVolumeFile)


def test_a_create_past_its_deadline_fails() -> None:
    volume = Actor(KIND, VID)
    made(volume)
    assert volume.fire("deadline", 31) == ["volume.failed", "timer.fired"]
    assert volume.state.status == "error"
    assert isinstance(volume.only(TellHost).command, DeleteVolumeFile)


def test_reserve_gives_the_volume_to_exactly_one_server() -> None:
    """available -> attaching for the first server (its answer the connection); another
    server is refused with Cinder's words; the same attachment again changes nothing;
    attach done -> in-use; delete is refused while attached."""
    volume = available()
    first = ReserveVolume(server_id="srv-1", attachment_id="a1")
    assert volume.send(first)[0] == "volume.reserved"
    assert volume.state.status == "attaching" and len(volume.timers) == 1
    connection = msgspec.json.decode(volume.result(first) or "", type=Connection)
    assert (connection.host, connection.path, connection.format) == ("s1", "/v/volume-x",
                                                                     "qcow2")
    with pytest.raises(Rejected) as refused:
        volume.send(ReserveVolume(server_id="srv-2", attachment_id="a2"))
    assert refused.value.code == "bad_request" and "'attaching'" in refused.value.message
    assert volume.send(first) == []
    assert volume.send(CompleteAttach(attachment_id="a1", server_id="srv-1", host_name="h1",
                                      device="/dev/vdb")) == ["timer.cancelled",
                                                             "volume.attached"]
    assert volume.state.status == "in-use" and not volume.timers
    with pytest.raises(Rejected) as refused:
        volume.send(DeleteVolume())
    assert refused.value.message == IN_USE_REFUSAL


def test_detach_and_a_server_that_went_with_delete_on_termination() -> None:
    """begin detach -> detaching; detach done -> available; attached again, the server's
    delete with delete_on_termination detaches and deletes in one decision."""
    volume = available()
    volume.send(ReserveVolume(server_id="srv-1", attachment_id="a1"))
    volume.send(CompleteAttach(attachment_id="a1", server_id="srv-1", host_name="h1",
                               device="/dev/vdb"))
    assert volume.send(BeginDetach(attachment_id="a1"))[0] == "volume.detaching"
    assert volume.send(CompleteDetach(attachment_id="a1"))[-1] == "volume.detached"
    assert volume.state.status == "available" and volume.state.attachments == []
    volume.send(ReserveVolume(server_id="srv-2", attachment_id="a2"))
    volume.send(CompleteAttach(attachment_id="a2", server_id="srv-2", host_name="h1",
                               device="/dev/vdb"))
    tags = volume.send(CompleteDetach(attachment_id="a2", delete=True))
    assert tags[-3:] == ["volume.detached", "volume.deleting", "timer.set"]
    assert isinstance(volume.only(TellHost).command, DeleteVolumeFile)
    assert volume.send(CompleteDetach(attachment_id="a2", delete=True)) == []


def test_an_overdue_attach_asks_the_server_and_settles_on_its_answer() -> None:
    """Past the lease the volume asks the server (instance.check_volume); "gone" makes it
    available; "attached" makes it in-use with the server's host and device; "attaching"
    waits for the next lease."""
    for answer, status in (("gone", "available"), ("attached h1 /dev/vdc", "in-use"),
                           ("attaching", "attaching")):
        volume = available()
        volume.send(ReserveVolume(server_id="srv-1", attachment_id="a1"))
        assert volume.fire("deadline", 41)[:2] == ["volume.attachment_checking", "timer.set"]
        ask = volume.only(Tell)
        assert (ask.kind, ask.actor_id) == ("instance", "srv-1")
        assert ask.command == CheckVolumeAttachment(volume_id=VID, attachment_id="a1")
        volume.answer(Reply(command_id=ask.request_id, ok=True, result=answer))
        assert volume.state.status == status, answer
        if status == "in-use":
            (att,) = volume.state.attachments
            assert (att.host_name, att.device) == ("h1", "/dev/vdc")


def test_unreserve_only_frees_the_pending_attachment() -> None:
    volume = available()
    volume.send(ReserveVolume(server_id="srv-1", attachment_id="a1"))
    assert volume.send(Unreserve(attachment_id="other")) == []
    assert volume.send(Unreserve(attachment_id="a1"))[-1] == "volume.unreserved"
    assert volume.state.status == "available"


def test_extend_grows_the_claim_then_the_file() -> None:
    """extending: a resize claim on s1, then storage.extend, then 2 GiB available; a
    smaller size or one while not available is refused; a failed grow gives the bigger
    claim back."""
    volume = available()
    with pytest.raises(Rejected, match="greater than current size"):
        volume.send(ExtendVolume(new_size=1))
    assert volume.send(ExtendVolume(new_size=2))[0] == "volume.extending"
    claim = volume.only(Tell)
    assert claim.actor_id == "s1" and claim.command == Claim(
        instance_id=VID, volume_gb=2, resize=True)
    with pytest.raises(Rejected, match="must be available to extend"):
        volume.send(ExtendVolume(new_size=3))
    volume.answer(Reply(command_id=claim.request_id, ok=True))
    grow = volume.only(TellHost)
    assert grow.command == ExtendVolumeFile(volume_id=VID, size_gb=2)
    volume.answer(Reply(command_id=grow.request_id, ok=True))
    assert (volume.state.status, volume.state.size) == ("available", 2)

    volume.send(ExtendVolume(new_size=5))
    volume.answer(Reply(command_id=volume.only(Tell).request_id, ok=True))
    tags = volume.answer(Reply(command_id=volume.only(TellHost).request_id, ok=False,
                               error="disk full"))
    assert tags[-1] == "volume.extend_failed"
    assert (volume.state.status, volume.state.size) == ("available", 2)
    assert volume.only(Tell).command == Claim(instance_id=VID, volume_gb=2, resize=True)


def test_delete_removes_the_file_or_ends_in_error_deleting() -> None:
    """deleting -> storage.delete -> deleted; a storage host that never answers:
    error_deleting, from which a delete may be asked again."""
    volume = available()
    assert volume.send(DeleteVolume())[0] == "volume.deleting"
    remove = volume.only(TellHost)
    assert isinstance(remove.command, DeleteVolumeFile)
    assert volume.answer(Reply(command_id=remove.request_id, ok=True))[-1] == "volume.deleted"
    with pytest.raises(Rejected) as gone:
        volume.send(UpdateVolume(name="x"))
    assert gone.value.code == "not_found"

    volume = available()
    volume.send(DeleteVolume())
    assert volume.fire("deadline", 21)[0] == "volume.delete_failed"
    assert volume.state.status == "error_deleting"
    assert volume.send(DeleteVolume())[0] == "volume.deleting"


def test_update_changes_only_what_is_given() -> None:
    volume = available()
    volume.send(UpdateVolume(description="d", metadata={"k": "v"}))
    volume.send(UpdateVolume(name="renamed"))
    assert (volume.state.name, volume.state.description, volume.state.metadata) == (
        "renamed", "d", {"k": "v"})
