"""The causation tree, as pure functions of envelopes: each way the runtime names a message
(an event id, a timer, a reply, an id built from a request or derived from a message) puts
a step below the step that sent it; a request no actor recorded becomes a node of its own;
the timeline page is one well-formed, self-contained document."""

from __future__ import annotations

import datetime as dt
import uuid
import xml.etree.ElementTree as ET

import msgspec

from actors.kind import Context
from replay.render import trace_text
from replay.timeline import html_page
from replay.trace import Request, Step, build
from schemas import EventEnvelope, TimerSet

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


class Log:
    """Envelopes as a log would hold them, in position order, a millisecond apart."""

    def __init__(self) -> None:
        self.events: list[EventEnvelope] = []
        self.versions: dict[str, int] = {}

    def add(self, stream: str, type_: str, cause: str | None,
            data: object | None = None) -> EventEnvelope:
        version = self.versions[stream] = self.versions.get(stream, 0) + 1
        raw = msgspec.json.encode(data if data is not None else {"type": type_})
        env = EventEnvelope(event_id=uuid.uuid4(), stream=stream, version=version,
                            position=len(self.events) + 1, type=type_, data=msgspec.Raw(raw),
                            occurred_at=T0 + dt.timedelta(milliseconds=len(self.events)),
                            correlation_id="req-1", causation_id=cause)
        self.events.append(env)
        return env


def derive(message_id: str, n: int = 0) -> str:
    return Context(actor_id="x", message_id=message_id, correlation_id="req-1",
                   now=T0).derive_id(n)


def boot() -> Log:
    """A boot as the runtime records it (see actors/instance.py and scheduler.py)."""
    log = Log()
    place = derive("cmd-1")
    log.add("instance:i", "instance.created", "cmd-1", {"request": place})
    log.add("instance:i", "timer.set", "cmd-1",
            TimerSet(timer_id="t1", name="deadline", fire_at=T0))
    log.add("host:h1", "host.claimed", f"{place}@h1")
    spawn = derive(f"reply:{place}@h1")
    log.add("instance:i", "instance.scheduled", f"reply:{place}@h1",
            {"host": "h1", "request": spawn})
    log.add("port:p", "port.bound", f"reply:{place}@h1/bind/p")
    log.add("instance:i", "instance.image_ready", f"reply:{spawn}:image_ready")
    spawned = log.add("instance:i", "instance.spawned", f"reply:{spawn}")
    log.add("host:h1", "host.noted", str(spawned.event_id))
    log.add("instance:i", "instance.retried", "timer:t1")
    return log


def test_each_step_hangs_below_the_step_that_sent_its_message() -> None:
    """command -> claim (request@host) -> reply -> hostd request -> its replies; the port
    below the step whose id its request was built from; a reaction below its event's step;
    a timer's step below the one that set it."""
    trace = build("req-1", boot().events)
    [root] = trace.roots
    assert isinstance(root, Step) and root.cause == "cmd-1" and root.via == "root"
    steps = {(s.stream, s.events[0].type): s for s in trace.steps}
    claim = steps[("host:h1", "host.claimed")]
    scheduled = steps[("instance:i", "instance.scheduled")]
    retried = steps[("instance:i", "instance.retried")]
    assert claim in root.children and claim.via == "derived"
    assert retried in root.children and retried.via == "timer"
    assert scheduled in claim.children and scheduled.via == "reply"
    port = steps[("port:p", "port.bound")]
    assert port in scheduled.children and port.via == "request"
    [hostd] = [c for c in scheduled.children if isinstance(c, Request)]
    assert hostd.named_in is not None and hostd.named_in.type == "instance.scheduled"
    assert [s.events[0].type for s in hostd.children if isinstance(s, Step)] == [
        "instance.image_ready", "instance.spawned"]
    noted = steps[("host:h1", "host.noted")]
    assert noted in steps[("instance:i", "instance.spawned")].children
    assert noted.via == "reaction"


def test_a_message_nobody_can_place_hangs_from_the_root() -> None:
    """Two commands of one request (the gateway's) are two roots, in time order."""
    log = Log()
    log.add("port:p", "port.created", "cmd-a")
    log.add("instance:i", "instance.created", "cmd-b")
    trace = build("req-1", log.events)
    assert [n.cause for n in trace.roots if isinstance(n, Step)] == ["cmd-a", "cmd-b"]


def test_trace_text_lists_steps_depth_first_with_offsets() -> None:
    text = trace_text(build("req-1", boot().events))
    lines = text.splitlines()
    assert lines[0].startswith("trace req-1: 9 events on 3 streams, 1 request(s)")
    types = ["instance.created", "host.claimed", "instance.scheduled", "instance.image_ready",
             "instance.spawned", "host.noted"]
    where = [next(i for i, line in enumerate(lines) if t in line) for t in types]
    assert where == sorted(where)
    assert lines[-1].endswith("ms")


def test_timeline_page_is_self_contained_and_well_formed() -> None:
    page = html_page(build("req-1", boot().events))
    svg = page[page.index("<svg"):page.index("</svg>") + 6]
    root = ET.fromstring(svg)
    assert root.tag.endswith("svg")
    assert "<script" not in page and "src=" not in page and "href=" not in page
    assert page.count("<circle") == 9  # one tick per event
    assert "outside the log" in page


def test_an_empty_trace_says_so() -> None:
    assert "no events" in trace_text(build("req-x", []))
    assert "No events" in html_page(build("req-x", []))
