"""The actor kinds the tool knows, with the decoders the runtime uses for each."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from actors.codec import KindCodec
from actors.fold import Folded
from actors.kind import ActorKind, tag_of
from replay.errors import UnknownKind
from schemas import SYSTEM_EVENTS, EventEnvelope, stream_kind, stream_name
from store.registry import EventTypes


class Catalog:
    """Kind name -> KindCodec, for every kind the composition root hands the tool."""

    def __init__(self, kinds: Iterable[ActorKind[Any]]) -> None:
        self.codecs = {k.name: KindCodec(k) for k in kinds}
        #: per kind, the Struct each tag must decode to (what "decodes" means in verify)
        self.tags = {name: {tag_of(t): t for t in codec.event_types()}
                     for name, codec in self.codecs.items()}

    @property
    def names(self) -> list[str]:
        return sorted(self.codecs)

    def codec(self, kind: str) -> KindCodec:
        """The codec of ``kind``; UnknownKind if this build has no such kind."""
        codec = self.codecs.get(kind)
        if codec is None:
            raise UnknownKind(kind, self.names)
        return codec

    def event_types(self) -> EventTypes:
        """The registry a store is opened with: every kind's events and the system's."""
        types = EventTypes(SYSTEM_EVENTS)
        for codec in self.codecs.values():
            types.register(*codec.event_types())
        return types

    def decode(self, env: EventEnvelope) -> msgspec.Struct:
        """``env``'s data decoded with its kind's union decoder (as an actor loads it)."""
        event: msgspec.Struct = self.codec(stream_kind(env.stream)).events.decode(env.data)
        return event

    def folded(self, kind: str, actor_id: str) -> Folded:
        """An empty fold of ``kind:actor_id``, ready to apply its events."""
        return Folded(self.codec(kind), actor_id)


def split_stream(stream: str) -> tuple[str, str]:
    """``(kind, actor_id)`` of a stream name."""
    kind, _, actor_id = stream.partition(":")
    return kind, actor_id


__all__ = ["Catalog", "split_stream", "stream_name"]
