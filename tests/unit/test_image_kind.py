"""The image kind as pure functions, and the pure JSON-patch and filter helpers."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import msgspec
import pytest

from actors.image import (
    IMAGE,
    CreateImage,
    DeleteImage,
    FailUpload,
    FinishUpload,
    ImageActivated,
    ImageCreated,
    ImageDeleted,
    ImageFields,
    ImageState,
    ImageUpdated,
    StartUpload,
    UpdateImage,
    UploadFailed,
    UploadStarted,
)
from actors.kind import Context, Rejected
from gateway.errors import ApiError
from gateway.image_docs import apply_patch, list_filters

NOW = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
FIELDS = ImageFields(name="cirros", disk_format="raw", properties={"os_distro": "cirros"})
DONE = FinishUpload(size=3, checksum="md5", os_hash_algo="sha512", os_hash_value="sha")


def ctx() -> Context:
    return Context(actor_id="img-1", message_id="m", correlation_id="req-1", now=NOW)


def run(commands: Sequence[msgspec.Struct]) -> tuple[ImageState, list[msgspec.Struct]]:
    """Decide and fold ``commands`` in order; the final state and every event."""
    state, events = IMAGE.initial("img-1"), []
    for command in commands:
        for event in IMAGE.decide(state, command, ctx()):
            events.append(event)
            state = IMAGE.evolve(state, event)
    return state, events


def rejected(commands: Sequence[msgspec.Struct], last: msgspec.Struct) -> str:
    state, _ = run(commands)
    with pytest.raises(Rejected) as info:
        IMAGE.decide(state, last, ctx())
    return info.value.code


def test_create_records_owner_fields_and_a_glance_timestamp() -> None:
    """CreateImage gives one ImageCreated; the image is queued, owned by the project."""
    state, events = run([CreateImage(owner="p1", fields=FIELDS)])
    assert events == [ImageCreated(image_id="img-1", owner="p1", fields=FIELDS,
                                   at="2026-01-02T03:04:05Z")]
    assert (state.status, state.owner) == ("queued", "p1")


def test_the_same_create_again_is_a_no_op_and_a_different_one_a_conflict() -> None:
    """A redelivered create appends nothing; another create of the same id is a conflict."""
    create = CreateImage(owner="p1", fields=FIELDS)
    assert run([create, create])[1][1:] == []
    assert rejected([create], CreateImage(owner="p2", fields=FIELDS)) == "conflict"


def test_upload_moves_queued_to_saving_to_active() -> None:
    """StartUpload then FinishUpload: saving, then active with the size."""
    state, events = run([CreateImage(owner="p", fields=FIELDS), StartUpload(), DONE])
    assert [type(e) for e in events] == [ImageCreated, UploadStarted, ImageActivated]
    assert (state.status, state.size) == ("active", 3)


def test_a_failed_upload_returns_to_queued_and_may_be_retried() -> None:
    """FailUpload from saving goes back to queued; a new upload can start."""
    state, events = run([CreateImage(owner="p", fields=FIELDS), StartUpload(),
                         FailUpload(reason="ImageTooLarge"), StartUpload()])
    assert isinstance(events[2], UploadFailed) and state.status == "saving"


def test_data_is_written_once() -> None:
    """An upload to an active image, or finishing one not saving, is a conflict."""
    create = CreateImage(owner="p", fields=FIELDS)
    assert rejected([create, StartUpload(), DONE], StartUpload()) == "conflict"
    assert rejected([create], DONE) == "conflict"
    assert rejected([create, StartUpload()], StartUpload()) == "conflict"


def test_protected_images_cannot_be_deleted() -> None:
    """DeleteImage of a protected image is forbidden; unprotected it is deleted."""
    guarded = CreateImage(owner="p", fields=ImageFields(protected=True))
    assert rejected([guarded], DeleteImage()) == "forbidden"
    state, events = run([guarded, UpdateImage(fields=ImageFields()), DeleteImage()])
    assert isinstance(events[1], ImageUpdated) and isinstance(events[2], ImageDeleted)
    assert state.status == "deleted"


def test_a_missing_or_deleted_image_is_not_found() -> None:
    """Commands to an image never created, or deleted, are not_found."""
    assert rejected([], UpdateImage(fields=FIELDS)) == "not_found"
    created = CreateImage(owner="p", fields=FIELDS)
    assert rejected([created, DeleteImage()], StartUpload()) == "not_found"


def test_an_update_that_changes_nothing_appends_nothing() -> None:
    """UpdateImage with the current fields decides no event."""
    assert run([CreateImage(owner="p", fields=FIELDS), UpdateImage(fields=FIELDS)])[1][1:] == []


def test_reserved_properties_and_bad_minimums_are_refused() -> None:
    """An extra property named like a core attribute is forbidden; negative min_ram is bad."""
    bad_prop = ImageFields(properties={"status": "active"})
    assert rejected([], CreateImage(owner="p", fields=bad_prop)) == "forbidden"
    assert rejected([], CreateImage(owner="p", fields=ImageFields(min_ram=-1))) == "bad_request"


def test_json_patch_applies_replace_add_remove_in_order() -> None:
    """Glance's patch: replace a core attribute, add then remove extra properties."""
    fields = apply_patch(FIELDS, [
        {"op": "replace", "path": "/name", "value": "new"},
        {"op": "add", "path": "/a~1b", "value": "1"},
        {"op": "remove", "path": "/os_distro"}])
    assert fields.name == "new" and fields.properties == {"a/b": "1"}


@pytest.mark.parametrize(("op", "status"), [
    ({"op": "replace", "path": "/size", "value": 1}, 403),
    ({"op": "replace", "path": "/missing", "value": "x"}, 409),
    ({"op": "add", "path": "/k", "value": 1}, 400),
    ({"op": "move", "path": "/name"}, 400),
    ({"op": "add", "path": "/visibility", "value": "shared"}, 400),
])
def test_json_patch_errors_have_glance_statuses(op: dict[str, object], status: int) -> None:
    """Read-only 403, missing property 409, non-string value / bad op / bad enum 400."""
    with pytest.raises(ApiError) as info:
        apply_patch(FIELDS, [op])
    assert info.value.status == status


def test_list_filters_understand_in_lists_and_ignore_visibility_all() -> None:
    """``id=in:a,b`` is an IN over both; ``visibility=all`` filters nothing."""
    where, args = list_filters({"id": "in:a,b", "visibility": "all", "status": "active"})
    assert where == ["id IN ($1, $2)", "status IN ($3)"] and args == ["a", "b", "active"]
