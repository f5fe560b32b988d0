"""Replay is a test: every recorded history under tests/histories folds cleanly through
today's decoders and the fold the runtime uses (actors/fold.py), to the state recorded
with it; and every kind the cloud runs has such a history (tests/histories/record.py
records them from a real run)."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from pathlib import Path
from typing import Any

import msgspec
import pytest

from actors.codec import KindCodec
from actors.fold import Folded
from actors.kind import ActorKind
from orrery.services import cloud_kinds
from orrery.wiring import event_types
from schemas import EventEnvelope
from tests.support.counter import COUNTER

HISTORIES = sorted((Path(__file__).parents[1] / "histories").glob("*.json"))
KINDS: dict[str, ActorKind[Any]] = {k.name: k for k in [COUNTER, *cloud_kinds()]}


def envelopes(history: dict[str, Any]) -> list[EventEnvelope]:
    """The recorded events as the log would hand them to an actor."""
    stream = f"{history['kind']}:{history.get('actor_id', 'replayed')}"
    return [EventEnvelope(event_id=uuid.uuid4(), stream=stream, version=i + 1, position=i + 1,
                          type=event["type"], data=msgspec.Raw(json.dumps(event["data"]).encode()),
                          occurred_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
            for i, event in enumerate(history["events"])]


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
def test_recorded_history_folds_to_its_recorded_state(path: Path) -> None:
    """Old events still decode (the store would accept them) and fold to the same state."""
    history = json.loads(path.read_text())
    kind = KINDS[history["kind"]]
    types = event_types([kind])
    events = envelopes(history)
    for e in events:
        types.validate(e.type, bytes(e.data))
    fold = Folded(KindCodec(kind), history.get("actor_id", "replayed")).apply_all(events)
    state = json.loads(msgspec.json.encode(fold.state))  # as recorded: tuples are lists
    assert contains(state, history["expect"]), (state, history["expect"])


def contains(state: Any, expect: Any) -> bool:
    """Whether ``state`` has everything ``expect`` has: dicts key by key and lists item
    by item, so a field added since with its default (msgspec's schema evolution, e.g.
    a DHCP spec's ``port_id`` inside a server's NICs) does not break an old history;
    everything else compared whole."""
    if isinstance(expect, dict) and isinstance(state, dict):
        return all(k in state and contains(state[k], v) for k, v in expect.items())
    if isinstance(expect, list) and isinstance(state, list):
        return len(state) == len(expect) and all(map(contains, state, expect))
    return bool(state == expect)


def test_there_is_at_least_one_history() -> None:
    """The replay test cannot pass vacuously."""
    assert HISTORIES


def test_every_kind_the_cloud_runs_has_a_recorded_history() -> None:
    """A new kind comes with a history recorded from a real run."""
    recorded = {json.loads(p.read_text())["kind"] for p in HISTORIES}
    assert {k.name for k in cloud_kinds()} <= recorded
