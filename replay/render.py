"""Human-readable output: tables, trees and indented states for the terminal."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Sequence
from typing import Any

from replay.changes import ABSENT
from replay.history import Diff, HistoryRow, StateAt
from replay.trace import REPLY, TIMER, Node, Request, Step, Trace
from replay.verify import Report
from schemas import EventEnvelope

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns padded to their widest cell; ``-`` for None."""
    cells = [[str(h) for h in headers], *[["-" if c is None else str(c) for c in r]
                                          for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in cells]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def when(t: dt.datetime | None) -> str:
    return "-" if t is None else t.astimezone(dt.UTC).isoformat(timespec="milliseconds")


def history_text(stream: str, rows: Sequence[HistoryRow]) -> str:
    body = table(["version", "time", "type", "request id", "causation"],
                 [(r.version, when(r.occurred_at), r.type, r.correlation_id, r.causation_id)
                  for r in rows])
    return f"{stream}: {len(rows)} events\n{body}"


def value(v: Any) -> str:
    return v if v == ABSENT else json.dumps(v, default=str)


def state_text(s: StateAt) -> str:
    head = (f"{s.stream} at version {s.version} of {s.latest}"
            f" (recorded {when(s.occurred_at)})")
    lines = [head, *_indented(s.state, 1)]
    if s.timers:
        lines.append("open timers:")
        lines += [f"  {tid}  {name}" for tid, name in sorted(s.timers.items())]
    return "\n".join(lines)


def _indented(data: Any, depth: int) -> list[str]:
    pad = "  " * depth
    if isinstance(data, dict) and data:
        out = []
        for k, v in data.items():
            if isinstance(v, dict | list) and v:
                out += [f"{pad}{k}:", *_indented(v, depth + 1)]
            else:
                out.append(f"{pad}{k}: {value(v)}")
        return out
    if isinstance(data, list) and data:
        out = []
        for v in data:
            if isinstance(v, dict | list) and v:
                inner = _indented(v, depth + 1)
                out.append(f"{pad}- {inner[0].strip()}")
                out += inner[1:]
            else:
                out.append(f"{pad}- {value(v)}")
        return out
    return [f"{pad}{value(data)}"]


def diff_text(d: Diff) -> str:
    lines = [f"{d.stream}: version {d.from_version} -> {d.to_version},"
             f" {len(d.changes)} field(s) changed by {len(d.events)} event(s)"]
    lines += [f"  v{r.version} {r.type}" for r in d.events]
    if d.changes:
        lines.append("")
    for c in d.changes:
        lines.append(f"  {c.verb:8s} {c.path}: {value(c.before)} -> {value(c.after)}")
    return "\n".join(lines)


def event_line(e: EventEnvelope) -> str:
    """One event on one line (tail)."""
    return (f"{e.position:>12}  {when(e.occurred_at)}  {e.stream} v{e.version}  {e.type}"
            f"  req={e.correlation_id or '-'}")


# -- trace ---------------------------------------------------------------------------------


def trace_text(trace: Trace) -> str:
    start = trace.started
    if start is None:
        return f"trace {trace.request_id}: no events"
    events = trace.events
    streams = {e.stream for e in events}
    outside = _count_requests(trace.roots)
    span = (max(e.occurred_at for e in events) - start).total_seconds() * 1000
    lines = [f"trace {trace.request_id}: {len(events)} events on {len(streams)} streams,"
             f" {outside} request(s) answered outside the log, {span:.1f} ms", trace.request_id]
    rows: list[tuple[str, str]] = []
    for i, node in enumerate(trace.roots):
        _node_rows(node, "", i == len(trace.roots) - 1, start, rows)
    width = max(len(r[0]) for r in rows)
    lines += [f"{text.ljust(width)}  {offset}" for text, offset in rows]
    return "\n".join(lines)


def _count_requests(nodes: Sequence[Node]) -> int:
    return sum((isinstance(n, Request)) + _count_requests(n.children) for n in nodes)


def _ms(t: dt.datetime, start: dt.datetime) -> str:
    return f"+{(t - start).total_seconds() * 1000:.1f} ms"


def _node_rows(node: Node, prefix: str, last: bool, start: dt.datetime,
               rows: list[tuple[str, str]]) -> None:
    branch, more = ("└─ ", "   ") if last else ("├─ ", "│  ")
    rows.append((prefix + branch + _label(node), _ms(node.started, start)))
    inner = prefix + more
    if isinstance(node, Step):
        bar = "│  " if node.children else "   "
        for e in node.events:
            rows.append((f"{inner}{bar}v{e.version} {e.type}", _ms(e.occurred_at, start)))
    for i, child in enumerate(node.children):
        _node_rows(child, inner, i == len(node.children) - 1, start, rows)


_VIA = {"reaction": "reacting to event", "timer": "timer", "reply": "reply to",
        "request": "request", "derived": "request", "root": "command"}


def short(message_id: str) -> str:
    """A message id with each uuid in it cut to its first 8 digits."""
    return _UUID.sub(lambda m: m.group(0)[:8], message_id)


def step_cause(node: Step) -> str:
    """How a step's message reads: ``reply to 49a6c7d7@host-1``, ``timer 1f0c2a9e``."""
    cause = node.cause
    for prefix in (REPLY, TIMER):
        if node.via in ("reply", "timer") and cause.startswith(prefix):
            cause = cause[len(prefix):]
    return f"{_VIA[node.via]} {short(cause)}"


def _label(node: Node) -> str:
    if isinstance(node, Step):
        return f"{node.stream}  <- {step_cause(node)}"
    named = f" (named in {node.named_in.type} v{node.named_in.version})" \
        if node.named_in else ""
    return f"request {short(node.request_id)}: answered outside the log{named}"


# -- verify --------------------------------------------------------------------------------


def verify_text(report: Report) -> str:
    rate = report.events / report.seconds if report.seconds > 0 else 0.0
    lines = [f"verify: {report.events} events on {report.streams} streams up to position"
             f" {report.head} in {report.seconds:.2f} s ({rate:.0f} events/s)"]
    for check, count in report.counts.items():
        lines.append(f"  {check:16s} {'ok' if count == 0 else f'{count} breach(es)'}")
    for b in report.breaches:
        where = b.stream + (f" v{b.version}" if b.version is not None else "") + \
            (f" (position {b.position})" if b.position is not None else "")
        lines.append(f"BREACH {b.check} {where}: {b.detail}")
    lines.append("log ok" if report.ok else "log BROKEN")
    return "\n".join(lines)
