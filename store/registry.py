"""The event types the log accepts: tag -> Struct, used to refuse undecodable events."""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from store.errors import InvalidEvent


class EventTypes:
    """Registry of event Structs by tag; the store validates every append against it."""

    def __init__(self, types: Iterable[type[msgspec.Struct]] = ()) -> None:
        self._decoders: dict[str, msgspec.json.Decoder[msgspec.Struct]] = {}
        self._types: dict[str, type[msgspec.Struct]] = {}
        for t in types:
            self.register(t)

    def register(self, *types: type[msgspec.Struct]) -> None:
        for t in types:
            tag = t.__struct_config__.tag
            if not isinstance(tag, str):
                raise TypeError(f"{t.__name__} needs an explicit string tag")
            known = self._types.get(tag)
            if known is not None and known is not t:
                raise TypeError(f"tag {tag!r} already names {known.__name__}")
            self._types[tag] = t
            self._decoders[tag] = msgspec.json.Decoder(t)

    def __contains__(self, tag: object) -> bool:
        return tag in self._types

    def tags(self) -> list[str]:
        return sorted(self._types)

    def decode(self, tag: str, data: bytes) -> msgspec.Struct:
        """Decode ``data`` as the Struct registered for ``tag`` or raise InvalidEvent."""
        decoder = self._decoders.get(tag)
        if decoder is None:
            raise InvalidEvent(tag, "unknown event type")
        try:
            return decoder.decode(data)
        except msgspec.DecodeError as exc:
            raise InvalidEvent(tag, str(exc)) from exc

    def validate(self, tag: str, data: bytes) -> None:
        self.decode(tag, data)
