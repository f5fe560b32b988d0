"""Errors of the event log.

StoreError
├── ConcurrencyError   stale expected version (carries the stream's current version)
├── InvalidEvent       an event whose type is unknown or whose data does not decode
└── StoreUnavailable   the database cannot be reached (retryable)
"""

from __future__ import annotations


class StoreError(Exception):
    """Base of every event-log error."""

    retryable = False


class ConcurrencyError(StoreError):
    """The stream moved on since the writer read it; reload and decide again."""

    retryable = True

    def __init__(self, stream: str, expected: int, current: int) -> None:
        super().__init__(f"stream {stream}: expected version {expected}, current {current}")
        self.stream = stream
        self.expected = expected
        self.current = current


class InvalidEvent(StoreError):
    """The store refuses an event that does not decode against its declared type."""

    def __init__(self, event_type: str, reason: str) -> None:
        super().__init__(f"invalid event {event_type!r}: {reason}")
        self.event_type = event_type
        self.reason = reason


class StoreUnavailable(StoreError):
    """The backing database is down or unreachable."""

    retryable = True
