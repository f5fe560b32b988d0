"""A trace as one self-contained HTML page: a timeline a person can read (inline SVG and
CSS, no scripts, no external assets).

One row per step (an actor handling one message) in causal order, indented by depth; a
bar from its first to its last event with a tick per event (hover for the event), an
elbow from the step that caused it, and grey dashed bars for requests answered outside
the log (a host's work, from the request to its last answer). Below: every event.
"""

from __future__ import annotations

import datetime as dt
import html
import zlib
from collections.abc import Iterator

from replay.render import short, step_cause, when
from replay.trace import Node, Request, Step, Trace

ROW, LABEL, PLOT, PAD = 26, 430, 760, 12
PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1",
           "#9c755f", "#ff9da7", "#bab0ac")
CSS = """
body { font: 13px/1.4 system-ui, sans-serif; margin: 24px; color: #222; }
h1 { font-size: 18px; margin: 0 0 4px; } p.sum { color: #555; margin: 0 0 16px; }
svg text { font: 12px system-ui, sans-serif; } svg .axis { fill: #777; font-size: 11px; }
svg .grid { stroke: #eee; } svg .link { stroke: #999; fill: none; }
svg .outside { fill: #ddd; stroke: #999; stroke-dasharray: 4 3; }
svg .tick { stroke: #fff; stroke-width: 1.5; }
table { border-collapse: collapse; margin-top: 20px; }
td, th { padding: 2px 10px; text-align: left; border-bottom: 1px solid #eee; }
th { background: #f6f6f6; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
"""


def _rows(nodes: list[Node], depth: int = 0) -> Iterator[tuple[Node, int]]:
    for node in nodes:
        yield node, depth
        yield from _rows(node.children, depth + 1)


def _color(stream: str) -> str:
    return PALETTE[zlib.crc32(stream.split(":", 1)[0].encode()) % len(PALETTE)]


class _Scale:
    def __init__(self, start: dt.datetime, end: dt.datetime) -> None:
        self.start = start
        self.span = max((end - start).total_seconds() * 1000, 1.0)

    def ms(self, t: dt.datetime) -> float:
        return (t - self.start).total_seconds() * 1000

    def x(self, t: dt.datetime) -> float:
        return LABEL + PAD + self.ms(t) / self.span * PLOT


def html_page(trace: Trace) -> str:
    """The page for ``trace`` (a short page saying so when it has no events)."""
    title = f"trace {html.escape(trace.request_id)}"
    start = trace.started
    if start is None:
        return _page(title, "<p>No events carry this request id.</p>")
    rows = list(_rows(trace.roots))
    end = max(n.ended for n, _ in rows)
    scale = _Scale(start, end)
    events = trace.events
    summary = (f"{len(events)} events, {len(trace.steps)} steps on"
               f" {len({e.stream for e in events})} streams, {scale.ms(end):.1f} ms,"
               f" from {when(start)}")
    body = (f"<p class='sum'>{html.escape(summary)}</p>{_svg(rows, scale)}"
            f"{_table(trace, scale)}")
    return _page(title, body)


def _page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>{title}</title><style>{CSS}</style></head>"
            f"<body><h1>{title}</h1>{body}</body></html>\n")


def _svg(rows: list[tuple[Node, int]], scale: _Scale) -> str:
    height = (len(rows) + 2) * ROW
    width = LABEL + PLOT + 2 * PAD
    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}'"
             f" role='img'>", *_axis(scale, height)]
    index = {id(node): i for i, (node, _) in enumerate(rows)}
    for i, (node, depth) in enumerate(rows):
        y = (i + 1) * ROW
        parts.append(f"<text x='{8 + depth * 14}' y='{y + 16}'>"
                     f"{html.escape(_label(node))}</text>")
        parts += _bar(node, y, scale)
        for child in node.children:
            cy = (index[id(child)] + 1) * ROW + ROW / 2
            cx = scale.x(child.started)
            parts.append(f"<path class='link' d='M{cx:.1f},{y + ROW / 2 + 7:.1f} V{cy:.1f}'/>")
    parts.append("</svg>")
    return "".join(parts)


def _axis(scale: _Scale, height: int) -> list[str]:
    step = _nice(scale.span / 8)
    out, t = [], 0.0
    while t <= scale.span + 1e-9:
        x = LABEL + PAD + t / scale.span * PLOT
        out.append(f"<line class='grid' x1='{x:.1f}' y1='{ROW - 6}' x2='{x:.1f}'"
                   f" y2='{height - ROW}'/><text class='axis' x='{x:.1f}' y='{ROW - 10}'"
                   f" text-anchor='middle'>{t:g} ms</text>")
        t += step
    return out


def _nice(raw: float) -> float:
    """A round axis step (1, 2 or 5 times a power of ten) near ``raw``."""
    power = 10.0 ** int(f"{raw:e}".split("e")[1])
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


def _bar(node: Node, y: int, scale: _Scale) -> list[str]:
    x0, x1 = scale.x(node.started), scale.x(node.ended)
    w = max(x1 - x0, 4.0)
    if isinstance(node, Request):
        tip = f"request {node.request_id}: {scale.ms(node.ended) - scale.ms(node.started):.1f}" \
              " ms outside the log"
        return [f"<rect class='outside' x='{x0:.1f}' y='{y + 6}' width='{w:.1f}' height='14'>"
                f"<title>{html.escape(tip)}</title></rect>"]
    color = _color(node.stream)
    out = [f"<rect x='{x0:.1f}' y='{y + 6}' width='{w:.1f}' height='14' rx='3'"
           f" fill='{color}'><title>{html.escape(node.stream)}</title></rect>"]
    for e in node.events:
        ex = scale.x(e.occurred_at)
        tip = f"v{e.version} {e.type} +{scale.ms(e.occurred_at):.1f} ms (position {e.position})"
        out.append(f"<circle class='tick' cx='{ex:.1f}' cy='{y + 13}' r='4' fill='{color}'>"
                   f"<title>{html.escape(tip)}</title></circle>")
    return out


def _label(node: Node) -> str:
    if isinstance(node, Step):
        kinds = ", ".join(dict.fromkeys(e.type for e in node.events))
        return f"{node.stream.split(':', 1)[0]} {short(node.stream.partition(':')[2])}:" \
               f" {kinds} ({step_cause(node)})"
    return f"request {short(node.request_id)}: outside the log"


def _table(trace: Trace, scale: _Scale) -> str:
    head = ("<tr><th>+ms</th><th>position</th><th>stream</th><th>v</th><th>type</th>"
            "<th>causation</th></tr>")
    cells = [f"<tr><td class='num'>{scale.ms(e.occurred_at):.1f}</td>"
             f"<td class='num'>{e.position}</td><td>{html.escape(e.stream)}</td>"
             f"<td class='num'>{e.version}</td><td>{html.escape(e.type)}</td>"
             f"<td>{html.escape(e.causation_id or '-')}</td></tr>" for e in trace.events]
    return f"<table>{head}{''.join(cells)}</table>"
