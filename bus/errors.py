"""Errors of the message bus.

BusError
├── CallTimeout        no reply before the call's deadline (retryable)
├── Undeliverable      no queue would take the message (unroutable) or the broker nacked it
├── BadMessage         a delivery that does not decode: dead-lettered at once, never retried
└── BusUnavailable     the broker cannot be reached (retryable)
"""

from __future__ import annotations


class BusError(Exception):
    """Base of every bus error."""

    retryable = False


class CallTimeout(BusError):
    retryable = True


class Undeliverable(BusError):
    pass


class BadMessage(BusError):
    """Raise from a handler to dead-letter a message immediately with this reason."""


class BusUnavailable(BusError):
    retryable = True
