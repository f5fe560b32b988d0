"""The attach saga's decisions on the instance, pure: reserve, attach on the host, record
both sides, roll both back on refusal, failure or timeout; detach; a deleted server's
volumes; the answer a volume gets when it asks."""

from __future__ import annotations

import pytest

from actors.instance import Deadlines, DeleteInstance, make_instance_kind
from actors.instance_volumes import AttachInstanceVolume, DetachInstanceVolume
from actors.kind import Rejected, Tell, TellHost
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
from schemas import ENCODER, Reply
from schemas.hostd import AttachVolume, DetachVolume
from tests.unit.test_instance_saga import IID, Saga
from tests.unit.test_volume_kind import Actor

KIND = make_instance_kind(Deadlines(attaching=10, detaching=10))
VOL = "5056b721-7766-429c-b218-f68e6e1b8ea5"
CONNECTION = ENCODER.encode(Connection(host="s1", path="/v/volume-1", format="raw",
                                       size=1)).decode()


def active() -> Actor:
    """An ACTIVE server on h1 (its boot replayed through the kind)."""
    server = Actor(KIND, IID)
    boot = Saga()
    boot.boot()
    server.state = boot.state
    return server


def attached(server: Actor, vid: str = VOL, aid: str = "a1", dot: bool = False) -> None:
    server.send(AttachInstanceVolume(volume_id=vid, attachment_id=aid,
                                     delete_on_termination=dot))
    reserve = server.only(Tell)
    server.answer(Reply(command_id=reserve.request_id, ok=True, result=CONNECTION))
    server.answer(Reply(command_id=server.only(TellHost).request_id, ok=True,
                        result="running"))


def test_attach_reserves_attaches_and_records_both_sides() -> None:
    """attaching -> volume.reserve; its connection -> hostd.attach_volume on h1 with the
    file as vdb (serial the volume id); done -> attached and volume.attach_done; the one
    timer of the saga is cancelled."""
    server = active()
    tags = server.send(AttachInstanceVolume(volume_id=VOL, attachment_id="a1"))
    assert tags == ["instance.volume_attaching", "timer.set"]
    reserve = server.only(Tell)
    assert (reserve.kind, reserve.actor_id) == ("volume", VOL)
    assert reserve.command == ReserveVolume(server_id=IID, attachment_id="a1")
    server.answer(Reply(command_id=reserve.request_id, ok=True, result=CONNECTION))
    attach = server.only(TellHost)
    assert attach.host == "h1" and isinstance(attach.command, AttachVolume)
    disk = attach.command.disk
    assert (disk.device, disk.path, disk.serial) == ("vdb", "/v/volume-1", VOL)
    tags = server.answer(Reply(command_id=attach.request_id, ok=True, result="running"))
    assert tags == ["timer.cancelled", "instance.volume_attached"]
    assert server.only(Tell).command == CompleteAttach(attachment_id="a1", server_id=IID,
                                                      host_name="h1", device="/dev/vdb")
    assert server.state.volumes[VOL].state == "attached" and not server.timers


def test_a_refused_reservation_ends_the_attach_without_the_host() -> None:
    server = active()
    server.send(AttachInstanceVolume(volume_id=VOL, attachment_id="a1"))
    tags = server.answer(Reply(command_id=server.only(Tell).request_id, ok=False,
                               error_type="bad_request", error="Invalid volume: in-use"))
    assert tags[-1] == "instance.volume_attach_failed" and server.state.volumes == {}
    assert server.only(Tell).command == Unreserve(attachment_id="a1")


def test_a_failed_or_late_host_rolls_the_volume_back() -> None:
    """The host refuses: the volume is unreserved. The host never answers: past the
    deadline the volume is unreserved and the host told to detach what it may have."""
    server = active()
    server.send(AttachInstanceVolume(volume_id=VOL, attachment_id="a1"))
    server.answer(Reply(command_id=server.only(Tell).request_id, ok=True, result=CONNECTION))
    server.answer(Reply(command_id=server.only(TellHost).request_id, ok=False, error="no"))
    assert server.state.volumes == {}
    assert server.only(Tell).command == Unreserve(attachment_id="a1")

    server = active()
    server.send(AttachInstanceVolume(volume_id=VOL, attachment_id="a2"))
    server.answer(Reply(command_id=server.only(Tell).request_id, ok=True, result=CONNECTION))
    tags = server.fire("volumes", 11)
    assert tags == ["instance.volume_attach_failed", "timer.fired"]
    unreserve, cleanup = server.effects
    assert isinstance(unreserve, Tell) and unreserve.command == Unreserve(attachment_id="a2")
    assert isinstance(cleanup, TellHost) and cleanup.command == DetachVolume(
        instance_id=IID, volume_id=VOL, device="vdb")


def test_devices_and_states_that_refuse_an_attach() -> None:
    """The next free device after vda; an asked one that is taken or not vdX is 400;
    the same volume twice is 400; a redelivered command is a no-op; a server that is
    stopping is 409."""
    server = active()
    attached(server)
    server.send(AttachInstanceVolume(volume_id="v2", attachment_id="a2"))
    assert server.state.volumes["v2"].device == "vdc"
    for device in ("/dev/vdb", "/dev/sda", "vdc"):
        with pytest.raises(Rejected) as refused:
            server.send(AttachInstanceVolume(volume_id="v3", attachment_id="a3",
                                             device=device))
        assert refused.value.code == "bad_request"
    with pytest.raises(Rejected):
        server.send(AttachInstanceVolume(volume_id=VOL, attachment_id="other"))
    assert server.send(AttachInstanceVolume(volume_id=VOL, attachment_id="a1")) == []
    server.state.task_state = "powering-off"
    with pytest.raises(Rejected) as refused:
        server.send(AttachInstanceVolume(volume_id="v4", attachment_id="a4"))
    assert refused.value.code == "conflict"


def test_detach_takes_the_disk_then_frees_the_volume() -> None:
    """detaching -> volume.begin_detach and hostd.detach_volume; done -> detached and
    volume.detach_done; a failed detach keeps it attached and rolls the volume back; a
    volume that is not attached is 404."""
    server = active()
    attached(server)
    assert server.send(DetachInstanceVolume(volume_id=VOL))[0] == "instance.volume_detaching"
    begin, detach = server.effects
    assert isinstance(begin, Tell) and begin.command == BeginDetach(attachment_id="a1")
    assert isinstance(detach, TellHost) and detach.command == DetachVolume(
        instance_id=IID, volume_id=VOL, device="vdb")
    server.answer(Reply(command_id=detach.request_id, ok=False, error="busy"))
    assert server.state.volumes[VOL].state == "attached"
    assert server.only(Tell).command == RollbackDetach(attachment_id="a1")
    server.send(DetachInstanceVolume(volume_id=VOL))
    _, detach = server.effects
    assert isinstance(detach, TellHost)
    server.answer(Reply(command_id=detach.request_id, ok=True, result="running"))
    assert server.state.volumes == {}
    assert server.only(Tell).command == CompleteDetach(attachment_id="a1")
    with pytest.raises(Rejected) as missing:
        server.send(DetachInstanceVolume(volume_id=VOL))
    assert missing.value.code == "not_found"


def test_a_deleted_server_detaches_or_deletes_its_volumes() -> None:
    """Delete: the attached volume with delete_on_termination is told to detach and
    delete, the plain one to detach, the one still being attached is unreserved."""
    server = active()
    attached(server, "keep", "a1")
    attached(server, "drop", "a2", dot=True)
    server.send(AttachInstanceVolume(volume_id="pending", attachment_id="a3"))
    server.send(DeleteInstance())
    destroy = next(e for e in server.effects if isinstance(e, TellHost))
    server.answer(Reply(command_id=destroy.request_id, ok=True, result="missing"))
    told = {e.actor_id: e.command for e in server.effects if isinstance(e, Tell)
            and e.kind == "volume"}
    assert told == {"keep": CompleteDetach(attachment_id="a1"),
                    "drop": CompleteDetach(attachment_id="a2", delete=True),
                    "pending": Unreserve(attachment_id="a3")}


def test_the_server_tells_a_volume_what_it_has() -> None:
    server = active()
    attached(server)
    assert KIND.answer is not None
    ask = CheckVolumeAttachment(volume_id=VOL, attachment_id="a1")
    assert KIND.answer(server.state, ask, server.ctx()) == "attached h1 /dev/vdb"
    other = CheckVolumeAttachment(volume_id=VOL, attachment_id="zzz")
    assert KIND.answer(server.state, other, server.ctx()) == "gone"
