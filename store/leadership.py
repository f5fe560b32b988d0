"""Leadership: at most one process at a time runs a singleton role (relay, timers)."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager, nullcontext

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
