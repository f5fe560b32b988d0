"""Replay is a test: every recorded history under tests/histories folds cleanly through
today's decoders and evolve, to the state recorded with it."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from actors.codec import KindCodec
from actors.volume import VOLUME
from orrery.wiring import event_types
from tests.support.counter import COUNTER

HISTORIES = sorted((Path(__file__).parents[1] / "histories").glob("*.json"))
KINDS = {COUNTER.name: COUNTER, VOLUME.name: VOLUME}


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
def test_recorded_history_folds_to_its_recorded_state(path: Path) -> None:
    """Old events still decode (the store would accept them) and fold to the same state."""
    history = json.loads(path.read_text())
    kind = KINDS[history["kind"]]
    codec = KindCodec(kind)
    types = event_types([kind])
    state = kind.initial("replayed")
    for event in history["events"]:
        data = json.dumps(event["data"]).encode()
        types.validate(event["type"], data)
        state = kind.evolve(state, codec.events.decode(data))
    assert msgspec.to_builtins(state) | history["expect"] == msgspec.to_builtins(state)


def test_there_is_at_least_one_history() -> None:
    """The replay test cannot pass vacuously."""
    assert HISTORIES
