"""Logging set-up: structlog events (console or JSON lines) with stdlib logging routed through it.

Call `configure_logging` once at process start (calling it again replaces the previous
set-up). Every line carries an ISO-8601 UTC timestamp, the level, the logger name and
whatever is bound with ``structlog.contextvars.bind_contextvars`` (the correlation id,
the actor, ...). Loggers are not cached on first use, so ``structlog.testing.capture_logs``
works in tests and a later `configure_logging` reaches module-level loggers too.
"""

from __future__ import annotations

import logging
import sys
from typing import IO, Any

import msgspec
import structlog
from structlog.types import Processor

__all__ = ["LEVELS", "configure_logging"]

LEVELS: dict[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
FORMATS = ("console", "json")
# Structured tracebacks without frame locals: locals bloat lines and can leak secrets.
_NO_LOCALS = structlog.tracebacks.ExceptionDictTransformer(show_locals=False)


class _OrreryHandler(logging.StreamHandler[IO[str]]):
    """The one root handler we install; marked by its class so a reconfigure can replace it."""


def configure_logging(level: str, fmt: str, *, stream: IO[str] | None = None) -> None:
    """Route structlog and stdlib logging at `level` to `stream` (stderr) as `fmt` lines.

    `fmt` is ``"console"`` (human, coloured on a terminal) or ``"json"`` (one object per line).
    Idempotent: a second call replaces the first one's handler and settings.
    """
    numeric = _level(level)
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {FORMATS}, got {fmt!r}")
    out = sys.stderr if stream is None else stream
    shared = _shared_processors()
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        context_class=dict,
        cache_logger_on_first_use=False,
    )
    handler = _OrreryHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *_renderers(fmt, out),
            ],
        )
    )
    _install(handler, numeric)


def _level(level: str) -> int:
    try:
        return LEVELS[level.lower()]
    except KeyError:
        raise ValueError(f"log level must be one of {list(LEVELS)}, got {level!r}") from None


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]


def _renderers(fmt: str, out: IO[str]) -> list[Processor]:
    if fmt == "json":
        return [
            structlog.processors.ExceptionRenderer(_NO_LOCALS),
            structlog.processors.JSONRenderer(serializer=_json_dumps),
        ]
    colors = bool(getattr(out, "isatty", lambda: False)())
    # plain tracebacks: rich's, with every frame's locals, took about a second each and
    # held the event loop while they rendered
    return [structlog.dev.ConsoleRenderer(colors=colors,
                                          exception_formatter=structlog.dev.plain_traceback)]


def _install(handler: logging.Handler, numeric: int) -> None:
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _OrreryHandler)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(numeric)
    logging.captureWarnings(True)


def _json_fallback(obj: Any) -> Any:
    return str(obj)


_ENCODER = msgspec.json.Encoder(enc_hook=_json_fallback)


def _json_dumps(obj: Any, **_: Any) -> str:
    return _ENCODER.encode(obj).decode()
