"""``orrery replay …``: the subcommands, their options, and what each prints.

The composition root (orrery/cli.py) adds the ``replay`` parser with ``add_arguments``
and calls ``run`` with the actor kinds and projections of the cloud. Output is for people
by default and JSON with ``--json``; the exit status is 0, 1 when ``verify`` finds a
breach, and 2 when the tool cannot do what it was asked (the reason on stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec

from actors.kind import ActorKind
from replay import history as hist, render
from replay.catalog import Catalog
from replay.errors import BadArgument, ReplayError
from replay.export import Selection, export, exported, tail
from replay.rebuild import choose, rebuild
from replay.source import database_url, open_log
from replay.timeline import html_page
from replay.trace import build, collect
from replay.trace_json import trace_builtins
from replay.verify import verify
from store.projections import Projection

_JSON = msgspec.json.Encoder()
Command = Callable[["Tool", Any], Awaitable[int]]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``replay`` subcommands on ``parser``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--database-url", metavar="URL",
                        help="the log: sqlite:///PATH or postgresql://… (else"
                             " ORRERY_DATABASE_URL)")
    common.add_argument("--data-dir", metavar="DIR",
                        help="the data directory of `orrery up` (its DIR/orrery.sqlite)")
    common.add_argument("--json", action="store_true", help="JSON for machines")
    common.add_argument("--reveal-secrets", action="store_true",
                        help="show secrets (webhook signing secrets, password hashes) as"
                             " recorded instead of redacted")
    sub = parser.add_subparsers(dest="replay_command", required=True, metavar="COMMAND")

    def add(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, description=text, parents=[common])

    p = add("history", "a resource's events: version, time, type, request id, causation")
    _resource(p)
    p = add("state", "a resource's state, folded as its actor folds it")
    _resource(p)
    when = p.add_mutually_exclusive_group()
    when.add_argument("--version", type=int, help="after this version (default: the last)")
    when.add_argument("--at", metavar="TIME", help="as it was at this ISO 8601 time")
    p = add("diff", "what changed between two versions of a resource, field by field")
    _resource(p)
    p.add_argument("v1", type=int)
    p.add_argument("v2", type=int)
    p = add("trace", "the causation tree of one API request, across actors and hosts")
    p.add_argument("request_id", help="the request id (X-OpenStack-Request-Id)")
    p.add_argument("--html", metavar="FILE", help="also write a timeline page to FILE")
    p = add("tail", "the last events of the log, and (--follow) the live log")
    p.add_argument("--follow", "-f", action="store_true")
    p.add_argument("--type", metavar="PATTERN", help="AMQP-style: instance.*, #.failed")
    p.add_argument("-n", type=int, default=20, help="how many past events (default 20)")
    p = add("verify", "check the log's invariants; exit 1 naming every breach")
    p.add_argument("--grace", type=float, default=300.0, metavar="SECONDS",
                   help="how late a deadline may be before it is a breach (default 300)")
    p.add_argument("--now", action="store_true",
                   help="judge deadlines by the clock, not by the log's last event")
    p.add_argument("--fold", action="store_true",
                   help="also fold every stream: evolve must not raise, no state past its"
                        " deadline")
    p.add_argument("--batch", type=int, default=5000, help=argparse.SUPPRESS)
    p = add("rebuild", "rebuild projections from position 0, while the system runs")
    p.add_argument("projection", nargs="?", help="one projection (default: all)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="processes folding side by side on PostgreSQL (default: one per"
                        " core)")
    p = add("export", "the log, or a part of it, as JSON")
    p.add_argument("--jsonl", action="store_true", help="one event a line")
    p.add_argument("--stream", metavar="KIND:ID")
    p.add_argument("--request", metavar="REQUEST_ID", help="one request's events")
    p.add_argument("--type", metavar="PATTERN", help="AMQP-style type pattern")
    p.add_argument("--after", type=int, default=0, metavar="POSITION")
    p.add_argument("--until", type=int, metavar="POSITION")
    p.add_argument("--output", "-o", metavar="FILE", help="write here (default stdout)")


def _resource(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", help="resource kind: instance, port, host, …")
    p.add_argument("id", help="resource id")


class Tool:
    """What every subcommand has: the kinds' codecs, the projections, the opened log."""

    def __init__(self, catalog: Catalog, projections: Sequence[Projection], store: Any,
                 as_json: bool, reveal: bool = False) -> None:
        self.catalog = catalog
        self.projections = projections
        self.store = store
        self.json = as_json
        self.reveal = reveal

    def print(self, text: str, data: object) -> None:
        """``text`` for people, or ``data`` as JSON with --json."""
        if self.json:
            sys.stdout.write(_JSON.encode(data).decode() + "\n")
        else:
            sys.stdout.write(text + "\n")
        sys.stdout.flush()


def run(args: argparse.Namespace, kinds: Sequence[ActorKind[Any]],
        projections: Sequence[Projection], configured_url: str) -> int:
    """Run the chosen subcommand; its exit status."""
    try:
        return asyncio.run(_main(args, Catalog(kinds), projections, configured_url))
    except ReplayError as exc:
        print(f"orrery replay: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0


async def _main(args: argparse.Namespace, catalog: Catalog,
                projections: Sequence[Projection], configured_url: str) -> int:
    url = database_url(args.database_url, args.data_dir, configured_url)
    store = await open_log(url, catalog.event_types())
    try:
        return await COMMANDS[args.replay_command](
            Tool(catalog, projections, store, args.json, args.reveal_secrets), args)
    finally:
        await store.close()


async def _history(tool: Tool, args: Any) -> int:
    events = await hist.read_history(tool.store, tool.catalog, args.kind, args.id)
    rows = hist.history_rows(events, reveal=tool.reveal)
    tool.print(render.history_text(events[0].stream, rows), rows)
    return 0


async def _state(tool: Tool, args: Any) -> int:
    events = await hist.read_history(tool.store, tool.catalog, args.kind, args.id)
    version = args.version
    if args.at is not None:
        version = hist.version_at(events, hist.parse_time(args.at))
    state = hist.state_at(tool.catalog, args.kind, args.id, events, version,
                          reveal=tool.reveal)
    tool.print(render.state_text(state), state)
    return 0


async def _diff(tool: Tool, args: Any) -> int:
    events = await hist.read_history(tool.store, tool.catalog, args.kind, args.id)
    d = hist.diff(tool.catalog, args.kind, args.id, events, args.v1, args.v2,
                  reveal=tool.reveal)
    tool.print(render.diff_text(d), d)
    return 0


async def _trace(tool: Tool, args: Any) -> int:
    trace = build(args.request_id, await collect(tool.store, args.request_id))
    if args.html:
        page = html_page(trace)
        await asyncio.to_thread(Path(args.html).write_text, page, encoding="utf-8")
    tool.print(render.trace_text(trace), trace_builtins(trace, reveal=tool.reveal))
    return 0 if trace.steps else 2


async def _tail(tool: Tool, args: Any) -> int:
    def show(e: Any) -> None:
        line = _JSON.encode(exported(e, reveal=tool.reveal)).decode() if tool.json \
            else render.event_line(e)
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    with contextlib.suppress(asyncio.CancelledError):
        await tail(tool.store, Selection(pattern=args.type), show, last=args.n,
                   follow=args.follow)
    return 0


async def _verify(tool: Tool, args: Any) -> int:
    report = await verify(tool.store, tool.catalog, batch=args.batch,
                          grace=dt.timedelta(seconds=args.grace), fold=args.fold,
                          now=dt.datetime.now(dt.UTC) if args.now else None)
    tool.print(render.verify_text(report), {**msgspec.to_builtins(report), "ok": report.ok})
    return 0 if report.ok else 1


async def _rebuild(tool: Tool, args: Any) -> int:
    if args.workers is not None and args.workers < 1:
        raise BadArgument(f"--workers {args.workers}: at least one worker folds")
    results = await rebuild(tool.store, choose(tool.projections, args.projection),
                            show=not tool.json, workers=args.workers)
    tool.print(f"rebuilt {len(results)} projection(s)", results)
    return 0


async def _export(tool: Tool, args: Any) -> int:
    sel = Selection(stream=args.stream, correlation_id=args.request, pattern=args.type,
                    after=args.after, until=args.until)
    if args.output:
        with open(args.output, "wb") as out:  # noqa: ASYNC230 - a local file, written as read
            await export(tool.store, sel, out, lines=args.jsonl, reveal=tool.reveal)
    else:
        await export(tool.store, sel, sys.stdout.buffer, lines=args.jsonl,
                     reveal=tool.reveal)
        sys.stdout.flush()
    return 0


COMMANDS: dict[str, Command] = {
    "history": _history, "state": _state, "diff": _diff, "trace": _trace, "tail": _tail,
    "verify": _verify, "rebuild": _rebuild, "export": _export,
}
