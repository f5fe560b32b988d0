"""The causation tree of one request: every event it caused, across actors and hosts.

An actor records the events of one message in one append, each event carrying the
message's id as its causation id. A *step* is that: one actor (stream) handling one
message (cause). The tree links each step to the step that sent its message, found from
the message id alone, as the runtime makes them (actors/cell.py, actors/runtime.py,
bus/replies.py):

* an event id: a reaction to that event;
* ``timer:<id>``: a durable timer, set by the step that recorded ``timer.set``;
* ``reply:<request>[:<progress>]``: the answer to ``<request>``, sent by whoever handled
  it; a request that no actor recorded anything for was answered from outside the log
  (a host daemon), and shows as a *request* node of its own;
* ``<request>@<host>``, ``<message>/<…>``: ids an actor builds from a request id or from
  the id of the message it handles;
* a uuid that ``Context.derive_id(n)`` makes from the id of a message a step handled.

What cannot be placed (the API's command, which only the gateway knows) hangs from the
root. Durable timers fire with their own correlation id (``timer:<id>``), so ``collect``
follows the timers the request's events set as well.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import msgspec

from schemas import EventEnvelope, TimerSet
from store.protocol import EventStore

#: derive_id(n) values searched for a message (the kinds use small n, and 99)
DERIVED_RANGE = 100
REPLY = "reply:"
TIMER = "timer:"
_TIMER_SET = msgspec.json.Decoder(TimerSet)


@dataclass(eq=False)
class Step:
    """The events one actor (``stream``) recorded handling message ``cause``."""

    cause: str
    stream: str
    events: list[EventEnvelope]
    children: list[Node] = field(default_factory=list)
    #: how the parent was found: reaction, timer, reply, request, derived, root
    via: str = "root"

    @property
    def started(self) -> dt.datetime:
        return self.events[0].occurred_at

    @property
    def ended(self) -> dt.datetime:
        return self.events[-1].occurred_at


@dataclass(eq=False)
class Request:
    """A request no actor recorded anything for: answered from outside the log."""

    request_id: str
    started: dt.datetime
    children: list[Node] = field(default_factory=list)
    via: str = "root"
    #: the event of the sender that names the request (e.g. which host it went to)
    named_in: EventEnvelope | None = None

    @property
    def ended(self) -> dt.datetime:
        return max((c.ended for c in self.children), default=self.started)


Node = Step | Request


@dataclass
class Trace:
    """The tree of ``request_id``: its roots (in time order) and every step."""

    request_id: str
    roots: list[Node]
    steps: list[Step]

    @property
    def events(self) -> list[EventEnvelope]:
        return sorted((e for s in self.steps for e in s.events), key=lambda e: e.position)

    @property
    def started(self) -> dt.datetime | None:
        return min((s.started for s in self.steps), default=None)


async def collect(store: EventStore, request_id: str) -> list[EventEnvelope]:
    """Every event with the request's correlation id, and those of the timers they set
    (and so on), in position order."""
    wanted, seen = {request_id}, set[str]()
    found: dict[int, EventEnvelope] = {}
    while wanted - seen:
        batch = sorted(wanted - seen)
        seen |= wanted
        for e in await store.read_correlated(batch):
            found[e.position] = e
            if e.type == "timer.set":
                wanted.add(TIMER + _TIMER_SET.decode(e.data).timer_id)
    return [found[p] for p in sorted(found)]


def build(request_id: str, events: Sequence[EventEnvelope]) -> Trace:
    """The causation tree of ``events`` (all of one request, see ``collect``)."""
    return _Builder(events).build(request_id)


class _Builder:
    def __init__(self, events: Sequence[EventEnvelope]) -> None:
        self.steps: dict[tuple[str, str], Step] = {}
        for e in sorted(events, key=lambda e: e.position):
            key = (e.causation_id or f"event:{e.event_id}", e.stream)
            self.steps.setdefault(key, Step(cause=key[0], stream=e.stream, events=[]))
            self.steps[key].events.append(e)
        self.by_cause: dict[str, list[Step]] = {}
        self.by_event: dict[str, Step] = {}
        self.by_timer: dict[str, Step] = {}
        for step in self.steps.values():
            self.by_cause.setdefault(step.cause, []).append(step)
            for e in step.events:
                self.by_event[str(e.event_id)] = step
                if e.type == "timer.set":
                    self.by_timer[_TIMER_SET.decode(e.data).timer_id] = step
        self.derived = _derived(self.by_cause)
        self.requests: dict[str, Request] = {}

    def build(self, request_id: str) -> Trace:
        roots: list[Node] = []
        for step in self.steps.values():
            parent, step.via = self.sender(step.cause)
            (parent.children if parent is not None else roots).append(step)
        roots += [r for r in self.requests.values() if r.via == "root"]
        nodes: list[Node] = [*self.steps.values(), *self.requests.values()]
        for node in nodes:
            node.children.sort(key=lambda n: n.started)
        roots.sort(key=lambda n: n.started)
        return Trace(request_id=request_id, roots=roots, steps=list(self.steps.values()))

    def sender(self, message: str) -> tuple[Node | None, str]:
        """The node that sent ``message``, and how that was found."""
        if message in self.by_event:
            return self.by_event[message], "reaction"
        if message.startswith(TIMER) and message[len(TIMER):] in self.by_timer:
            return self.by_timer[message[len(TIMER):]], "timer"
        head = message.partition("/")[0]
        if head != message and head in self.by_cause:  # built from the id a step handled
            return self.by_cause[head][0], "request"
        if message.startswith(REPLY):
            return self._answerer(message[len(REPLY):])
        return self._origin(message)

    def _answerer(self, answered: str) -> tuple[Node | None, str]:
        """Who sent the reply to ``answered`` (which may end in ``:<progress>``)."""
        for request in (answered, answered.rpartition(":")[0]):
            if request in self.by_cause:
                return self.by_cause[request][0], "reply"
        for request in (answered, answered.rpartition(":")[0]):
            node = self._request(request)
            if node is not None:
                return node, "reply"
        return None, "root"

    def _request(self, request_id: str) -> Request | None:
        """The node of a request answered from outside the log (None: sender unknown)."""
        if request_id in self.requests:
            return self.requests[request_id]
        sender, via = self._origin(request_id)
        if sender is None:
            return None
        node = Request(request_id=request_id, started=sender.ended, via=via,
                       named_in=_naming(sender, request_id))
        self.requests[request_id] = node
        sender.children.append(node)
        return node

    def _origin(self, message: str) -> tuple[Node | None, str]:
        """The step that built id ``message`` from the message it was handling."""
        if "/" in message:
            head = message.partition("/")[0]
            if head in self.by_cause:
                return self.by_cause[head][0], "request"
            return self.sender(head)
        if "@" in message:
            return self._origin(message.rpartition("@")[0])
        if message in self.derived:
            return self.by_cause[self.derived[message]][0], "derived"
        return None, "root"


def _derived(causes: Iterable[str]) -> dict[str, str]:
    """``Context.derive_id(n)`` of every message a step handled -> that message."""
    out: dict[str, str] = {}
    for cause in causes:
        for n in range(DERIVED_RANGE):
            out.setdefault(str(uuid.uuid5(uuid.NAMESPACE_URL, f"{cause}/{n}")), cause)
    return out


def _naming(sender: Node, request_id: str) -> EventEnvelope | None:
    """The sender's event whose data names ``request_id`` (e.g. ``instance.scheduled``)."""
    if not isinstance(sender, Step):
        return None
    needle = request_id.encode()
    return next((e for e in sender.events if needle in bytes(e.data)), None)
