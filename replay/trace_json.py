"""A trace as plain data for ``--json``: the tree, each node with its events and timings."""

from __future__ import annotations

import datetime as dt
from typing import Any

from replay.history import row
from replay.trace import Node, Step, Trace


def trace_builtins(trace: Trace, *, reveal: bool = False) -> dict[str, Any]:
    """``{"request_id", "started", "roots": [node…]}``; a node is a ``step`` (stream,
    cause, via, events) or a ``request`` answered outside the log; ``offset_ms`` is from
    the trace's first event. Secrets in event data are redacted unless ``reveal``."""
    start = trace.started
    return {"request_id": trace.request_id, "started": start,
            "events": len(trace.events),
            "roots": [_node(n, start, reveal) for n in trace.roots] if start else []}


def _ms(t: dt.datetime, start: dt.datetime) -> float:
    return round((t - start).total_seconds() * 1000, 3)


def _node(node: Node, start: dt.datetime, reveal: bool) -> dict[str, Any]:
    children = [_node(c, start, reveal) for c in node.children]
    if isinstance(node, Step):
        return {"node": "step", "stream": node.stream, "cause": node.cause, "via": node.via,
                "offset_ms": _ms(node.started, start),
                "events": [{**_row(e, reveal), "offset_ms": _ms(e.occurred_at, start)}
                           for e in node.events],
                "children": children}
    return {"node": "request", "request_id": node.request_id, "via": node.via,
            "offset_ms": _ms(node.started, start),
            "named_in": None if node.named_in is None else
            {"stream": node.named_in.stream, "version": node.named_in.version},
            "children": children}


def _row(e: Any, reveal: bool) -> dict[str, Any]:
    r = row(e, reveal=reveal)
    return {"stream": e.stream, "version": r.version, "position": r.position,
            "type": r.type, "occurred_at": r.occurred_at, "event_id": r.event_id,
            "causation_id": r.causation_id, "data": r.data}
