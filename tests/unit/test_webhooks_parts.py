"""The webhook deliverer's pure parts: signatures the reference library accepts, the
destination policy, the retry schedule, a lane's order and wake-ups, who a target may see,
and how the feed shows and redacts events."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import random
import uuid

import msgspec
import pytest
from standardwebhooks.webhooks import Webhook

from actors.event_feed import check_patterns, document, pattern_kinds, redact, visibility
from actors.subscription import new_secret
from schemas import EventEnvelope
from webhooks import signing
from webhooks.destinations import DestinationPolicy
from webhooks.outbox import Delivery, RetryPolicy
from webhooks.sender import Lane
from webhooks.targets import Target


def envelope(stream: str = "instance:i1", type_: str = "instance.created",
             project: str | None = "p1", data: bytes = b'{"a":1}') -> EventEnvelope:
    return EventEnvelope(event_id=uuid.uuid4(), stream=stream, version=1, position=7,
                         type=type_, data=msgspec.Raw(data),
                         occurred_at=dt.datetime.now(dt.UTC), project_id=project)


def test_our_signature_verifies_with_the_reference_library() -> None:
    """Headers made by webhooks.signing pass standardwebhooks' verify; a changed body
    does not."""
    secret, body = new_secret(), b'{"id": "e1", "data": {"x": "\\u00e9"}}'
    ts = int(dt.datetime.now(dt.UTC).timestamp())
    headers = signing.headers(signing.secret_key(secret), "e1", ts, body)
    assert Webhook(secret).verify(body, headers) == json.loads(body)
    with pytest.raises(Exception, match="signature"):
        Webhook(secret).verify(body + b" ", headers)


@pytest.mark.parametrize("address, loopback, private, refused", [
    ("127.0.0.1", False, False, True), ("127.0.0.1", True, False, False),
    ("::1", True, False, False), ("169.254.169.254", True, True, True),
    ("fe80::1", True, True, True), ("10.0.0.1", False, False, True),
    ("10.0.0.1", False, True, False), ("192.168.1.1", True, False, True),
    ("::ffff:127.0.0.1", False, False, True), ("0.0.0.0", False, False, True),
    ("8.8.8.8", False, False, False), ("2606:4700::1111", False, False, False),
])
def test_the_destination_policy(address: str, loopback: bool, private: bool,
                                refused: bool) -> None:
    """Loopback needs allow_loopback, private ranges allow_private, link-local never."""
    policy = DestinationPolicy(allow_loopback=loopback, allow_private=private)
    assert (policy.refusal(ipaddress.ip_address(address)) is not None) is refused


def test_backoff_doubles_with_jitter_up_to_its_cap() -> None:
    """Attempt n waits between half and all of base * 2**(n-1), never past the cap."""
    policy, rng = RetryPolicy(base=1.0, cap=60.0), random.Random(1)
    for n in range(1, 12):
        full = min(60.0, 2.0 ** (n - 1))
        delays = [policy.delay(n, rng) for _ in range(50)]
        assert all(full / 2 <= d <= full for d in delays)
        assert len(set(delays)) > 1


def delivery(stream: str, seq: int) -> Delivery:
    return Delivery(subscription_id="s", seq=seq, delivery_id=str(seq), position=seq,
                    event_id=str(seq), stream=stream, type="t", body=b"{}", occurred_at=0.0)


async def test_a_lane_sends_one_head_per_stream_in_order_and_wakes_when_a_slot_frees(
) -> None:
    """Only a chain's head is ready; the next one is ready after the head settles; a
    settle that empties a chain still wakes the lane (a slot is free: regression of a
    lane that stalled once its in-flight chains all ended)."""
    lane = Lane("s")
    for seq, stream in enumerate(["a", "a", "b"], start=1):
        lane.add(delivery(stream, seq))
    first, second = lane.next_ready(1.0), lane.next_ready(1.0)
    assert (first and first.seq, second and second.seq) == (1, 3)
    assert lane.next_ready(1.0) is None  # a's second waits for a's first
    lane.wake.clear()
    assert second is not None and first is not None
    lane.settle(second, done=True)
    assert lane.wake.is_set() and "b" not in lane.chains
    lane.settle(first, done=True)
    follow = lane.next_ready(1.0)
    assert follow is not None and follow.seq == 2
    follow.next_at = 5.0
    lane.settle(follow, done=False)  # retried later: not ready before its time
    assert lane.next_ready(4.0) is None and lane.next_ready(5.0) is follow
    await asyncio.sleep(0)


def target(**kw: object) -> Target:
    values: dict[str, object] = dict(id="s", project_id="p1", all_projects=False,
                                     url="http://x/", patterns=("instance.*",),
                                     secret=new_secret())
    values.update(kw)
    return Target(**values)  # type: ignore[arg-type]


def test_a_target_wants_what_its_project_may_see_and_matches() -> None:
    """Its project's matching events; not another project's, nor host events, nor
    events without a project, unless all_projects; never timer bookkeeping; never
    while disabled."""
    mine = target()
    assert mine.wants(envelope())
    assert not mine.wants(envelope(project="p2"))
    assert not mine.wants(envelope(type_="instance.timer.set"))
    assert not mine.wants(envelope(stream="instance:i1", type_="timer.set"))
    every = target(all_projects=True, patterns=("#",))
    assert every.wants(envelope(stream="host:h1", type_="host.heartbeat", project=None))
    assert not target(patterns=("#",)).wants(envelope(stream="host:h1", type_="host.x"))
    assert not target(enabled=False).wants(envelope())


def test_secrets_are_redacted_at_any_depth_and_other_data_kept_byte_for_byte() -> None:
    raw = b'{"secret":"whsec_x","nested":[{"password_hash":"h","keep":1}],"name":"n"}'
    shown = json.loads(redact(raw))
    assert shown == {"secret": "[redacted]", "name": "n",
                     "nested": [{"password_hash": "[redacted]", "keep": 1}]}
    plain = b'{"name": "no secrets here"}'
    assert redact(plain) is plain
    doc = document(envelope(data=raw))
    assert b"whsec_x" not in bytes(doc.data)


def test_patterns_are_checked_and_narrow_the_kinds_read() -> None:
    assert check_patterns(["instance.*", "#.deleted", "port.created"]) is None
    for bad in ([], ["a..b"], ["in stance.*"], ["x"] * 21):
        assert check_patterns(bad) is not None
    assert pattern_kinds(("instance.*", "port.#")) == ("instance", "port")
    assert pattern_kinds(("instance.*", "*.deleted")) == ()
    assert visibility("p1", is_admin=True).project_id is None
    assert visibility("p1", is_admin=False).project_id == "p1"
