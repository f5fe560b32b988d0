"""configure_logging: JSON or console lines, bound context on every line, stdlib routed through."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from orrery.logging import configure_logging

log = structlog.get_logger(__name__)


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Put structlog, the root logger and bound context back as they were."""
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.contextvars.clear_contextvars()
    structlog.configure(**saved)
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(False)


def json_lines(buf: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buf.getvalue().splitlines()]


def test_json_lines_carry_event_level_logger_and_iso_timestamp() -> None:
    """Each structlog call is one JSON object with event, level, logger and a UTC ISO time."""
    buf = io.StringIO()
    configure_logging("info", "json", stream=buf)
    log.info("relay_published", count=3)
    [line] = json_lines(buf)
    assert line["event"] == "relay_published" and line["count"] == 3
    assert line["level"] == "info" and line["logger"] == __name__
    stamp = dt.datetime.fromisoformat(line["timestamp"])
    assert stamp.utcoffset() == dt.timedelta(0)


def test_bound_correlation_id_appears_on_structlog_and_stdlib_lines() -> None:
    """A correlation id bound through contextvars is on every line, whoever logs it."""
    buf = io.StringIO()
    configure_logging("info", "json", stream=buf)
    structlog.contextvars.bind_contextvars(correlation_id="req-42")
    log.info("command_received")
    logging.getLogger("aio_pika").warning("channel %s closed", 7)
    lines = json_lines(buf)
    assert [line["correlation_id"] for line in lines] == ["req-42", "req-42"]
    assert lines[1]["event"] == "channel 7 closed" and lines[1]["logger"] == "aio_pika"


def test_level_filters_structlog_and_stdlib_alike() -> None:
    """Below the configured level nothing is written, from either API."""
    buf = io.StringIO()
    configure_logging("warning", "json", stream=buf)
    log.info("hidden")
    logging.getLogger("asyncpg").info("hidden too")
    log.warning("shown")
    logging.getLogger("asyncpg").error("shown too")
    assert [line["event"] for line in json_lines(buf)] == ["shown", "shown too"]


def test_json_renders_values_it_cannot_encode_as_strings() -> None:
    """Odd values (sets of ids, exceptions, custom objects) never break a JSON line."""
    buf = io.StringIO()
    configure_logging("debug", "json", stream=buf)

    class Host:
        def __str__(self) -> str:
            return "host-1"

    log.debug("placed", host=Host(), when=dt.datetime(2024, 1, 2, tzinfo=dt.UTC))
    [line] = json_lines(buf)
    assert line["host"] == "host-1" and line["when"].startswith("2024-01-02T00:00:00")


def test_exceptions_are_structured_in_json() -> None:
    """log.exception puts the exception type and message in the JSON line, without locals."""
    buf = io.StringIO()
    configure_logging("info", "json", stream=buf)
    try:
        raise RuntimeError("disk full")
    except RuntimeError:
        log.exception("append_failed")
    [line] = json_lines(buf)
    [error] = line["exception"]
    assert (error["exc_type"], error["exc_value"]) == ("RuntimeError", "disk full")
    assert all("locals" not in frame for frame in error["frames"])


def test_console_format_shows_event_and_key_values() -> None:
    """The console renderer writes the event name and key=value pairs, without colour codes."""
    buf = io.StringIO()
    configure_logging("info", "console", stream=buf)
    structlog.contextvars.bind_contextvars(correlation_id="c-9")
    log.info("actor_activated", stream="counter:1")
    out = buf.getvalue()
    assert "actor_activated" in out and "stream=counter:1" in out and "correlation_id=c-9" in out
    assert "\x1b[" not in out


def test_configure_twice_replaces_rather_than_duplicates() -> None:
    """Calling configure_logging again switches format and never doubles lines."""
    first, second = io.StringIO(), io.StringIO()
    configure_logging("info", "console", stream=first)
    configure_logging("info", "json", stream=second)
    log.info("once")
    logging.getLogger("x").info("once too")
    assert first.getvalue() == ""
    assert [line["event"] for line in json_lines(second)] == ["once", "once too"]


def test_capture_logs_sees_events_after_configuration() -> None:
    """Loggers are not cached, so structlog.testing.capture_logs works in tests."""
    configure_logging("info", "json", stream=io.StringIO())
    log.info("before_capture")
    with structlog.testing.capture_logs() as captured:
        log.info("snapshot_written", version=100)
    assert captured == [{"event": "snapshot_written", "version": 100, "log_level": "info"}]


@pytest.mark.parametrize(("level", "fmt"), [("loud", "json"), ("info", "xml")])
def test_bad_level_or_format_is_refused(level: str, fmt: str) -> None:
    """An unknown level or format is a ValueError, not a silent default."""
    with pytest.raises(ValueError, match=r"log (level|format)"):
        configure_logging(level, fmt, stream=io.StringIO())
