"""Leadership: at most one process at a time runs a singleton role (relay, timers, the
folding of a projection)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from typing import Protocol

#: how long a process that is not the leader waits before asking again
STANDBY_SECONDS = 1.0


def leadership(store: object, name: str) -> AbstractAsyncContextManager[bool]:
    """Enter to learn whether this process leads ``name``; leadership lasts until exit.

    PostgreSQL offers it as a session advisory lock (``try_leadership``), released when
    the process dies. A store without it serves one process (SQLite), which always leads.
    """
    lead = getattr(store, "try_leadership", None)
    if lead is None:
        return nullcontext(True)
    cm: AbstractAsyncContextManager[bool] = lead(name)
    return cm


class LeaderSet(Protocol):
    """The leaderships one session holds out of those it asked for."""

    @property
    def held(self) -> frozenset[str]:
        ...

    async def take_more(self) -> bool:
        """Ask again for those held elsewhere; True when one more is now held. Raises
        StoreError when the session that holds them is gone (they are lost with it)."""
        ...


class _AllHeld:
    """A store that serves one process: it leads everything."""

    def __init__(self, names: Iterable[str]) -> None:
        self.held = frozenset(names)

    async def take_more(self) -> bool:
        return False


def leaderships(store: object, names: Iterable[str]) -> AbstractAsyncContextManager[LeaderSet]:
    """Enter to hold as many of the leaderships ``names`` as are free, on one session
    (PostgreSQL's ``try_leaderships``); they last until exit. Without it, all are held."""
    lead = getattr(store, "try_leaderships", None)
    if lead is None:
        return _all_held(names)
    cm: AbstractAsyncContextManager[LeaderSet] = lead(names)
    return cm


@asynccontextmanager
async def _all_held(names: Iterable[str]) -> AsyncIterator[LeaderSet]:
    yield _AllHeld(names)
