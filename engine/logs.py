"""structlog set-up for the command line.

The library only *uses* structlog (`structlog.get_logger("hookloop")`); it never configures
it, so a program that imports hookloop keeps its own logging set-up. The CLI calls
`configure_logging()` once, choosing human key=value lines or JSON lines.

The default level is info for the library as for the CLI: structlog left unconfigured
prints every level, so the library's debug lines go through `debug()`, which says nothing
until someone configures structlog (`hookloop --log-level debug`, or the program itself).
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

__all__ = ["configure_logging", "debug"]

_configured = False


def configure_logging(
    fmt: str = "console", *, level: str = "info", stream: TextIO | None = None
) -> None:
    """Configure structlog for the `hookloop` command. Calling it again reconfigures.

    Args:
        fmt: `console` for aligned key=value lines, `json` for one JSON object per line.
        level: The lowest level printed (`debug`, `info`, `warning`, `error`).
        stream: Where log lines go; by default whatever `sys.stderr` is at each line, so
            standard output stays free for results such as sampled text.
    """
    global _configured
    if fmt not in ("console", "json"):
        raise ValueError(f"log format must be 'console' or 'json', got {fmt!r}")
    renderer = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False, pad_event_to=20, sort_keys=False)
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="%H:%M:%S" if fmt == "console" else "iso"),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(stream or _CurrentStderr()),
        cache_logger_on_first_use=False,
    )
    _configured = True


def debug(logger: Any, event: str, /, **fields: Any) -> None:
    """`logger.debug(event, **fields)` once structlog is configured; nothing before that
    (unconfigured structlog would print it, against the default level, info)."""
    if structlog.is_configured():
        logger.debug(event, **fields)


class _CurrentStderr:
    """Whatever `sys.stderr` is at the time of each write (it may be replaced after logging
    is configured: by a test capturing output, or by a program calling `hookloop.cli.main`
    in-process), so a log line never goes to a stream that was closed meanwhile."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()
