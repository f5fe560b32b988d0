"""Filtered reads of the log: an EventQuery as SQL conditions for each backend."""

from __future__ import annotations

from typing import Literal

from store.protocol import EventQuery

Dialect = Literal["postgres", "sqlite"]

#: the actor kind of a row's stream (the part before the first ':')
_KIND = {
    "postgres": "split_part(stream, ':', 1)",
    "sqlite": "substr(stream, 1, instr(stream, ':') - 1)",
}


def conditions(query: EventQuery, dialect: Dialect, first: int) -> tuple[str, list[object]]:
    """``AND``-joined conditions (empty: ``true``) with ``$first …`` placeholders, and
    their arguments; SQLite gets one placeholder per kind, PostgreSQL an array."""
    parts: list[str] = []
    args: list[object] = []

    def arg(value: object) -> str:
        args.append(value)
        return f"${first + len(args) - 1}"

    if query.stream is not None:
        parts.append(f"stream = {arg(query.stream)}")
    for names, op in ((query.kinds, "IN"), (query.exclude_kinds, "NOT IN")):
        if not names:
            continue
        if dialect == "postgres":
            quantifier = "= ANY" if op == "IN" else "<> ALL"
            parts.append(f"{_KIND[dialect]} {quantifier}({arg(list(names))}::text[])")
        else:
            listed = ", ".join(arg(n) for n in names)
            parts.append(f"{_KIND[dialect]} {op} ({listed})")
    if query.types:
        if dialect == "postgres":
            parts.append(f"type = ANY({arg(list(query.types))}::text[])")
        else:
            parts.append(f"type IN ({', '.join(arg(t) for t in query.types)})")
    if query.correlation_id is not None:
        parts.append(f"correlation_id = {arg(query.correlation_id)}")
    if query.project_id is not None:
        parts.append(f"project_id = {arg(query.project_id)}")
    return (" AND ".join(parts) or "true"), args
