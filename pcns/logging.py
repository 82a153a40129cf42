"""structlog set-up: JSON lines when not on a TTY, stable event names, no locals in tracebacks."""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import orjson
import structlog
from structlog.tracebacks import ExceptionDictTransformer


def _dumps(obj: Any, **_: Any) -> str:
    return orjson.dumps(obj, default=repr).decode()


def configure_logging(*, level: str = "info", stream: TextIO | None = None) -> None:
    """Route structlog (and stdlib logging) to ``stream``; JSON unless it is a terminal."""
    out = stream or sys.stderr
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any
    if out.isatty():
        renderer = structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback)
    else:
        shared.append(
            structlog.processors.ExceptionRenderer(
                # Locals would carry passwords and keys: never render them.
                ExceptionDictTransformer(show_locals=False, use_rich=False)
            )
        )
        renderer = structlog.processors.JSONRenderer(serializer=_dumps)
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    # Libraries that log through the standard library (aiohttp, asyncpg) go to the same stream
    # as plain lines without their arguments' repr of request bodies. ``force`` lets a command
    # move them (``pcns hook samba`` holds every line back until its answer line is out).
    logging.basicConfig(
        stream=out,
        level=logging.WARNING,
        format="%(levelname)s %(name)s %(message)s",
        force=True,
    )
