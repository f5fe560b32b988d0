"""The replay tool's errors: what went wrong, as data the command line can print."""

from __future__ import annotations


class ReplayError(Exception):
    """Anything the tool cannot do; the message is for the person at the terminal."""


class UnknownKind(ReplayError):
    """A resource kind (or a stream's kind) that no code of this build knows."""

    def __init__(self, kind: str, known: list[str]) -> None:
        super().__init__(f"unknown resource kind {kind!r} (known: {', '.join(known)})")
        self.kind = kind


class NotFound(ReplayError):
    """No such stream, version or request in the log."""


class BadArgument(ReplayError):
    """An option value the tool cannot use (a version out of range, a bad time)."""
