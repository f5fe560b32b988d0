"""A stream whose state grows with every event is snapshotted less often as it grows, so
its snapshots cost about the same per event however big the state is; and the state
loaded from the latest snapshot plus the tail is the state the actor had."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import msgspec

from actors.cell import SNAPSHOT_BYTES_PER_EVENT, ActorCell
from actors.codec import KindCodec
from actors.kind import ActorKind, Context
from bus.envelopes import command_envelope
from schemas import SYSTEM_EVENTS
from store.registry import EventTypes
from store.sqlite import SqliteEventStore


class Note(msgspec.Struct, frozen=True, kw_only=True, tag="notes.note"):
    text: str


class Noted(msgspec.Struct, frozen=True, kw_only=True, tag="notes.noted"):
    text: str


class Notes(msgspec.Struct, kw_only=True):
    texts: list[str] = []


def _evolve(state: Notes, event: msgspec.Struct) -> Notes:
    if isinstance(event, Noted):
        state.texts = [*state.texts, event.text]
    return state


def _decide(state: Notes, command: Note, ctx: Context) -> list[msgspec.Struct]:
    return [Noted(text=command.text)]


NOTES = ActorKind(name="notes", state_type=Notes, initial=lambda _id: Notes(),
                  decide=_decide, evolve=_evolve, commands=[Note], events=[Noted],
                  snapshot_every=10)


async def test_a_growing_state_is_snapshotted_less_often(tmp_path: Path) -> None:
    """2 KB a note, a snapshot at least every 10 notes: the fixed interval would have
    snapshotted at note 300; the growing gap took the last one much earlier."""
    store = await SqliteEventStore.open(tmp_path / "log.sqlite",
                                        EventTypes([Noted, *SYSTEM_EVENTS]))
    try:
        cell = ActorCell(KindCodec(NOTES), "n1", store)
        now = dt.datetime.now(dt.UTC)
        for i in range(300):
            reply = await cell.handle(command_envelope("notes", "n1", Note(text=f"{i:04}" * 512)),
                                      now)
            assert reply.ok
        snap = await store.load_snapshot("notes:n1")
        assert snap is not None and snap.version < 300
        size = len(snap.data)
        assert size > 10 * SNAPSHOT_BYTES_PER_EVENT * 10  # big enough to have stretched it
        again = ActorCell(KindCodec(NOTES), "n1", store)
        await again.load()
        assert again.version == 300 and again.state.texts == cell.state.texts
    finally:
        await store.close()
