"""The subscription actor's pure decisions: create, update, disable, replay, delete."""

from __future__ import annotations

import datetime as dt

import msgspec
import pytest

from actors.kind import Context, Rejected
from actors.subscription import (
    SUBSCRIPTION,
    CreateSubscription,
    DeleteSubscription,
    DisableSubscription,
    ReplayRequested,
    ReplaySubscription,
    SubscriptionCreated,
    SubscriptionDisabled,
    SubscriptionState,
    SubscriptionUpdated,
    UpdateSubscription,
    new_secret,
)

CTX = Context(actor_id="s1", message_id="m1", correlation_id="req-1",
              now=dt.datetime(2026, 1, 2, tzinfo=dt.UTC))
CREATE = CreateSubscription(project_id="p1", url="https://hooks.example/x",
                            event_types=("instance.*",), secret=new_secret())


def run(*commands: object) -> tuple[SubscriptionState, list[object]]:
    state, recorded = SUBSCRIPTION.initial("s1"), []
    for command in commands:
        for event in SUBSCRIPTION.decide(state, command, CTX):
            recorded.append(event)
            state = SUBSCRIPTION.evolve(state, event)
    return state, recorded


def test_create_records_everything_and_the_secret() -> None:
    """A create records the subscription enabled, with its secret (whsec_ + base64)."""
    state, [created] = run(CREATE)
    assert isinstance(created, SubscriptionCreated)
    assert created.secret.startswith("whsec_") and len(created.secret) > 30
    assert (state.live, state.enabled, state.url) == (True, True, CREATE.url)


@pytest.mark.parametrize("bad, says", [
    ({"url": "ftp://x/"}, "http"), ({"url": "http:///nohost"}, "host"),
    ({"url": "http://x:99999/"}, "valid"), ({"event_types": ()}, "at least one"),
    ({"event_types": ("instance..x",)}, "pattern"), ({"secret": "plain"}, "whsec_"),
    ({"description": "d" * 256}, "description"),
])
def test_a_bad_create_is_rejected(bad: dict[str, object], says: str) -> None:
    """Bad URLs, patterns, secrets and descriptions are refused, recording nothing."""
    command = msgspec.structs.replace(CREATE, **bad)
    with pytest.raises(Rejected, match=says) as caught:
        run(command)
    assert caught.value.code == "bad_request"


def test_update_records_all_values_and_nothing_when_unchanged() -> None:
    """An update records every value after it; the same values again record nothing."""
    state, events = run(CREATE, UpdateSubscription(enabled=False),
                        UpdateSubscription(enabled=False),
                        UpdateSubscription(url="https://other.example/"))
    assert [type(e) for e in events] == [SubscriptionCreated, SubscriptionUpdated,
                                         SubscriptionUpdated]
    last = events[-1]
    assert isinstance(last, SubscriptionUpdated)
    assert (last.url, last.enabled, last.event_types) == (
        "https://other.example/", False, ("instance.*",))
    assert not state.enabled


def test_disable_once_and_replay_only_while_enabled() -> None:
    """A 410 disables once; a disabled subscription cannot replay; a replay records its
    start."""
    _, events = run(CREATE, ReplaySubscription(from_position=5), DisableSubscription(
        reason="gone"), DisableSubscription(reason="gone again"))
    assert [type(e) for e in events] == [SubscriptionCreated, ReplayRequested,
                                         SubscriptionDisabled]
    with pytest.raises(Rejected) as caught:
        run(CREATE, DisableSubscription(reason="gone"), ReplaySubscription(from_position=1))
    assert caught.value.code == "conflict"


def test_a_deleted_or_unknown_subscription_is_not_found() -> None:
    """Commands to a subscription that does not exist (or no longer) are not_found; a
    second create is a conflict."""
    for commands in ([UpdateSubscription(enabled=True)],
                     [CREATE, DeleteSubscription(), DeleteSubscription()]):
        with pytest.raises(Rejected) as caught:
            run(*commands)
        assert caught.value.code == "not_found"
    with pytest.raises(Rejected) as again:
        run(CREATE, CREATE)
    assert again.value.code == "conflict"
