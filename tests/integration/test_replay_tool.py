"""``orrery replay`` history, state, diff, export and tail on a small log, SQLite and
PostgreSQL: what each prints for people and for machines, the filters, and tail following
a log another process appends to."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from actors.event_feed import REDACTED
from actors.identity import USER, UserCreated, UserUpdated
from orrery.cli import main
from schemas import NewEvent, TimerSet
from store.protocol import NO_STREAM
from tests.integration.test_replay_verify import COUNTER_KIND, _open, log_url  # noqa: F401
from tests.support.events import Incremented, new_event
from tests.support.procs import ROOT
from tests.support.replay_tool import restore_logging, tool_env

#: the tool runs in this process here, and configures its logging
pytestmark = pytest.mark.usefixtures(restore_logging.__name__)

T0 = dt.datetime(2026, 5, 1, 12, 0, tzinfo=dt.UTC)


def at(seconds: int, payload: object, request: str = "req-1") -> NewEvent:
    return new_event(payload, occurred_at=T0 + dt.timedelta(seconds=seconds),  # type: ignore[arg-type]
                     correlation_id=request, causation_id=f"cmd-{seconds}")


async def _write(url: str) -> None:
    store: Any = await _open(url)
    try:
        await store.append("counter:a", [at(0, Incremented(amount=5, command_id="c1"))],
                           NO_STREAM, cause="cmd-0")
        await store.append("counter:a", [at(10, TimerSet(timer_id="t1", name="ring",
                                                          fire_at=T0))], 1, cause="cmd-10")
        await store.append("counter:b", [at(15, Incremented(amount=1), "req-2")], NO_STREAM,
                           cause="cmd-15")
        await store.append("counter:a", [at(20, Incremented(amount=7, command_id="c2"))], 2,
                           cause="cmd-20")
    finally:
        await store.close()


def tool(capsys: pytest.CaptureFixture[str], url: str, *args: str) -> tuple[int, str]:
    code = main(["replay", "--kind", COUNTER_KIND, *args, "--database-url", url])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.fixture
def url(log_url: str) -> str:  # noqa: F811
    asyncio.run(_write(log_url))
    return log_url


def test_history_is_a_table_of_the_streams_events(
    url: str, capsys: pytest.CaptureFixture[str],
) -> None:
    code, out = tool(capsys, url, "history", "counter", "a")
    lines = out.splitlines()
    assert code == 0 and lines[0] == "counter:a: 3 events"
    assert lines[1].split() == ["version", "time", "type", "request", "id", "causation"]
    assert lines[3].split()[:5] == ["1", "2026-05-01T12:00:00.000+00:00",
                                    "counter.incremented", "req-1", "cmd-0"]
    code, out = tool(capsys, url, "history", "counter", "a", "--json")
    rows = json.loads(out)
    assert [(r["version"], r["type"]) for r in rows] == [
        (1, "counter.incremented"), (2, "timer.set"), (3, "counter.incremented")]
    assert rows[2]["data"]["amount"] == 7


def test_state_at_a_version_or_a_time(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The fold of the stream up to the version, or to the last event at or before the
    time; open timers shown with it."""
    code, out = tool(capsys, url, "state", "counter", "a", "--json")
    now = json.loads(out)
    assert code == 0 and now["version"] == 3 and now["state"]["total"] == 12
    assert now["timers"] == {"t1": "ring"}
    code, out = tool(capsys, url, "state", "counter", "a", "--at", "2026-05-01T12:00:12Z",
                     "--json")
    then = json.loads(out)
    assert (then["version"], then["state"]["total"]) == (2, 5)
    code, out = tool(capsys, url, "state", "counter", "a", "--version", "1")
    assert code == 0 and "counter:a at version 1 of 3" in out and "total: 5" in out


def test_bad_requests_exit_2_with_the_reason(
    url: str, capsys: pytest.CaptureFixture[str],
) -> None:
    for args, reason in ((["state", "counter", "a", "--version", "9"], "not between 0 and 3"),
                         (["history", "counter", "zz"], "no events for counter:zz"),
                         (["history", "planet", "a"], "unknown resource kind 'planet'"),
                         (["state", "counter", "a", "--at", "noon"], "not an ISO 8601"),
                         (["rebuild", "nope"], "no projection 'nope'"),
                         (["rebuild", "--workers", "0"], "at least one worker")):
        code, out = tool(capsys, url, *args)
        assert code == 2 and reason in out, (args, out)


def test_diff_names_each_changed_field_and_the_events_between(
    url: str, capsys: pytest.CaptureFixture[str],
) -> None:
    code, out = tool(capsys, url, "diff", "counter", "a", "1", "3", "--json")
    d = json.loads(out)
    assert code == 0
    assert [e["version"] for e in d["events"]] == [2, 3]
    assert {c["path"]: (c["before"], c["after"]) for c in d["changes"]} == {
        "total": (5, 12), "applied": (["c1"], ["c1", "c2"]),
        "timers.t1": ("<absent>", "ring")}
    _, out = tool(capsys, url, "diff", "counter", "a", "1", "3")
    assert "changed  total: 5 -> 12" in out and "added    timers.t1" in out


def test_export_as_json_or_lines_with_filters(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """Every event with its envelope and data as recorded; a stream, a request or a type
    pattern narrows it; --output writes a file."""
    code, out = tool(capsys, url, "export")
    everything = json.loads(out)
    assert code == 0 and [e["stream"] for e in everything] == [
        "counter:a", "counter:a", "counter:b", "counter:a"]
    assert everything[0]["data"] == {"type": "counter.incremented", "amount": 5,
                                     "command_id": "c1", "forward_to": None}
    assert everything[2]["correlation_id"] == "req-2"
    _, out = tool(capsys, url, "export", "--jsonl", "--type", "counter.timer.*")
    assert [json.loads(line)["type"] for line in out.splitlines()] == ["timer.set"]
    _, out = tool(capsys, url, "export", "--request", "req-2")
    assert [e["stream"] for e in json.loads(out)] == ["counter:b"]
    target = tmp_path / "a.json"
    tool(capsys, url, "export", "--stream", "counter:a", "--output", str(target))
    assert [e["version"] for e in json.loads(target.read_text())] == [1, 2, 3]


def test_tail_shows_the_last_events_of_the_log(
    url: str, capsys: pytest.CaptureFixture[str],
) -> None:
    _, out = tool(capsys, url, "tail", "-n", "2")
    assert [line.split()[2:4] for line in out.splitlines()] == [
        ["counter:b", "v1"], ["counter:a", "v3"]]
    _, out = tool(capsys, url, "tail", "--type", "counter.*", "--json")
    assert [json.loads(line)["version"] for line in out.splitlines()] == [1, 1, 3]


async def test_tail_follow_prints_what_another_process_appends(url: str) -> None:
    """tail -f in its own process shows the past, then each new event as it commits."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "orrery.cli", "replay", "--kind", COUNTER_KIND, "tail", "-f",
        "-n", "1", "--database-url", url, cwd=ROOT, env=tool_env(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(30):
            first = (await proc.stdout.readline()).decode()
            assert "counter:a v3" in first
            store: Any = await _open(url)
            try:
                await store.append("counter:b", [at(30, Incremented(amount=2))], 1,
                                   cause="cmd-30")
            finally:
                await store.close()
            second = (await proc.stdout.readline()).decode()
        assert "counter:b v2" in second
    finally:
        proc.terminate()
        await proc.wait()


def test_secrets_are_redacted_unless_the_operator_asks_for_them(
    log_url: str, capsys: pytest.CaptureFixture[str],  # noqa: F811
) -> None:
    """A password hash (and a webhook's signing secret, named alike) shows as the feed
    shows it in history, state, diff, export, tail and trace; a change of it still shows
    as a change; --reveal-secrets shows it as recorded."""

    async def write() -> None:
        store: Any = await _open(log_url, [USER])
        try:
            await store.append("user:u1", [at(0, UserCreated(
                user_id="u1", name="ann", domain_id="default", password_hash="hash-one",
                default_project_id=None, enabled=True, email=None, description=""))],
                NO_STREAM, cause="cmd-0")
            await store.append("user:u1", [at(5, UserUpdated(
                user_id="u1", name="ann", default_project_id=None, enabled=True,
                email=None, description="", password_hash="hash-two"))], 1, cause="cmd-5")
        finally:
            await store.close()

    asyncio.run(write())
    shown = {
        "history": ["history", "user", "u1", "--json"],
        "state": ["state", "user", "u1", "--json"],
        "diff": ["diff", "user", "u1", "1", "2", "--json"],
        "export": ["export", "--stream", "user:u1"],
        "tail": ["tail", "--json"],
        "trace": ["trace", "req-1", "--json"],
        "state text": ["state", "user", "u1"],
    }
    for name, args in shown.items():
        code, out = tool(capsys, log_url, *args)
        assert code == 0, (name, out)
        assert "hash-" not in out and REDACTED in out, (name, out)
        code, out = tool(capsys, log_url, *args, "--reveal-secrets")
        assert code == 0 and "hash-two" in out, (name, out)
    _, out = tool(capsys, log_url, "diff", "user", "u1", "1", "2", "--json")
    assert {c["path"]: (c["before"], c["after"]) for c in json.loads(out)["changes"]} == {
        "password_hash": (REDACTED, REDACTED)}
